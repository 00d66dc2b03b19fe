"""The store: the connection to Redis (or the embedded backend) that every manager shares.

The lowest layer: connecting to each backend (:mod:`.connection`), building and loading the
Lua operations as Redis functions (:mod:`.functions`), the key shapes (:mod:`.keys`), secrets
at rest (:mod:`.secrets`) and the embedded backend's snapshot file (:mod:`.snapshot`). Nothing
here imports a manager.
"""

from __future__ import annotations

from .connection import Backend, Store, connect

__all__ = ["Backend", "Store", "connect"]
