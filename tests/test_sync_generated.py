"""coordinator/sync/_generated.py is what scripts/gen_sync.py writes from the async managers.

A public method added to an async manager without regenerating fails here (and so in
``make test`` and CI); the twins keep the async methods' parameters and docstrings.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import (
    AuthProfileManager,
    ModelProfileManager,
    OAuthManager,
    SyncAuthProfileManager,
    SyncModelProfileManager,
    SyncOAuthManager,
)
from coordinator.sync import SyncManager
from scripts import gen_sync

ROOT = Path(__file__).resolve().parents[1]
TWINS = [
    (AuthProfileManager, SyncAuthProfileManager),
    (ModelProfileManager, SyncModelProfileManager),
    (OAuthManager, SyncOAuthManager),
]


def test_the_generated_file_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_sync.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_check_fails_on_a_stale_file_and_writing_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "_generated.py"
    stale.write_text(gen_sync.TARGET.read_text().replace("    def acquire(", "    def gone("))
    monkeypatch.setattr(gen_sync, "TARGET", stale)
    assert gen_sync.main(["--check"]) == 1
    assert "out of date: run python scripts/gen_sync.py" in capsys.readouterr().err
    assert gen_sync.main([]) == 0
    assert gen_sync.main(["--check"]) == 0
    assert stale.read_text() == (ROOT / "coordinator/sync/_generated.py").read_text()


@pytest.mark.parametrize(("async_class", "sync_class"), TWINS)
def test_every_public_method_has_a_twin_with_its_parameters_and_docstring(
    async_class: type, sync_class: type
) -> None:
    own = set(vars(SyncManager))
    for name, member in vars(async_class).items():
        if name.startswith("_") or name in own:
            continue
        twin = getattr(sync_class, name)
        assert inspect.getdoc(twin) is not None and inspect.getdoc(member) is not None
        assert inspect.getdoc(twin).startswith(inspect.getdoc(member)), name  # type: ignore[union-attr]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        expected = list(inspect.signature(member).parameters.values())
        found = list(inspect.signature(twin).parameters.values())
        assert [(p.name, p.kind, p.default) for p in found] == [
            (p.name, p.kind, p.default) for p in expected
        ], name
    init = inspect.signature(sync_class.__init__).parameters  # type: ignore[misc]
    assert list(init) == list(inspect.signature(async_class.__init__).parameters)  # type: ignore[misc]


def _method(source: str) -> ast.AsyncFunctionDef | ast.FunctionDef:
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
    return node


def test_a_callback_becomes_a_plain_function_run_in_the_calling_thread() -> None:
    node = _method(
        "async def each(self, fn: Callable[[str], Awaitable[int] | int], *,"
        " done: Callable[[], Awaitable[None] | None] | None = None) -> list[int]:\n"
        "    '''Doc.'''\n"
    )
    text = gen_sync.method("X", "coordinator.models.manager", node, gen_sync.Imports())
    assert "fn: Callable[[str], int]" in text
    assert "done: Callable[[], None] | None=None" in text  # (before ruff format)
    assert "bridge.callback(fn, 'fn')" in text
    assert "done=bridge.optional_callback(done, 'done')" in text
    assert "Here ``fn`` and ``done`` are plain functions, run in the calling thread." in text


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("async def events(self) -> AsyncIterator[int]:\n    yield 1\n", "an async generator"),
        ("@staticmethod\ndef helper(x: int) -> int:\n    return x\n", "no rule for the decorators"),
    ],
)
def test_what_the_generator_has_no_rule_for_stops_it(source: str, message: str) -> None:
    with pytest.raises(gen_sync.GenerationError, match=message):
        gen_sync.method("X", "coordinator.models.manager", _method(source), gen_sync.Imports())
