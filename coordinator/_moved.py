"""Old import paths (before the package was grouped by domain) that keep working.

``coordinator.profiles`` is now ``coordinator.pools.manager``, and so on. Each old name is an
alias of its new module in ``sys.modules``, so ``import coordinator.profiles`` and
``from coordinator.model_types import ModelProfile`` give the very same objects as the new
paths. Type checkers see only the new paths: use those in new code.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["MOVED", "install"]

#: Old module name -> the module it became.
MOVED = {
    "coordinator.profiles": "coordinator.pools.manager",
    "coordinator.profile_types": "coordinator.pools.types",
    "coordinator.config": "coordinator.pools.config",
    "coordinator.model_types": "coordinator.models.types",
    "coordinator.breaker_config": "coordinator.models.config",
    "coordinator.model_defaults": "coordinator.models.defaults",
    "coordinator.classify": "coordinator.models.classify",
    "coordinator.keys": "coordinator.store.keys",
    "coordinator.secrets": "coordinator.store.secrets",
    "coordinator.scripts": "coordinator.store.functions",
}


def install() -> None:
    """Register every old name as an alias of its new module (imports them all)."""
    package = sys.modules[__package__ or "coordinator"]
    for old, new in MOVED.items():
        module = sys.modules.setdefault(old, importlib.import_module(new))
        leaf = old.rpartition(".")[2]
        if not hasattr(package, leaf):  # (``coordinator.classify`` stays the function)
            setattr(package, leaf, module)
