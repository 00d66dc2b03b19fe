"""Write coordinator/sync/_generated.py: the synchronous managers, generated from the async ones.

Usage: ``python scripts/gen_sync.py`` writes the file; ``python scripts/gen_sync.py --check``
exits 1 when the file differs from what it would write (an async method without its sync
twin, a changed signature or docstring), 0 when it is up to date. ``make lint`` and
tests/test_sync_generated.py run the check, so CI catches a stale file.

The script reads the async managers' source with ``ast`` and imports nothing of the package,
so it runs even when the generated file no longer imports. For every public method of
``AuthProfileManager``, ``ModelProfileManager`` and ``OAuthManager`` it writes a method of the
same name, signature and docstring on ``SyncAuthProfileManager``, ... that:

* for an ``async def``, runs its coroutine on the SyncStore's loop and returns its result;
* for a parameter spelt ``Callable[[...], Awaitable[X]]`` (``execute``'s ``call``,
  ``login``'s ``on_url``), takes a plain function returning ``X`` instead, run in the
  caller's thread (``coordinator.sync._store.Bridge``);
* for a plain method or a property, delegates to the async manager.

The constructors take the async constructors' arguments, with a ``SyncStore`` for the store
and the sync twin for another manager (for a ``TokenSource``, the ``SyncOAuthManager`` too).
Names the base class defines (``coordinator/sync/_base.py``: ``on``, ``subscribe``,
``close``...) are not generated. Anything else (an async generator, a decorator or base class
it does not know, a quoted annotation) stops the script with an error naming it: give it a
rule here or a hand-written sync form in ``_base.py``.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import difflib
import functools
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "coordinator" / "sync" / "_generated.py"
BASE = ROOT / "coordinator" / "sync" / "_base.py"
PACKAGE = "coordinator"
# The async managers, in the order their sync twins are written.
MANAGERS = (
    ("coordinator.pools.manager", "AuthProfileManager"),
    ("coordinator.models.manager", "ModelProfileManager"),
    ("coordinator.oauth.manager", "OAuthManager"),
)
SYNC = {name: f"Sync{name}" for _module, name in MANAGERS}
# A constructor parameter of this type also takes the sync manager named.
ALSO_ACCEPTS = {"TokenSource": "SyncOAuthManager"}
# Bases whose public methods the sync base class gives its own form (events).
HANDLED_BASES = {"EventSource"}
# Names the generated file defines or imports itself.
OWN_NAMES = {"SyncStore", "SyncManager", "async_of", *SYNC.values()}
BRIDGE = "bridge"  # the name of the Bridge in the generated lambdas

Function = ast.FunctionDef | ast.AsyncFunctionDef


class GenerationError(Exception):
    """The async managers have something this script has no rule for."""


# -- reading the source ---------------------------------------------------------------------


def module_path(module: str) -> Path:
    """The file of a module of this repository."""
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@functools.cache
def parse(module: str) -> ast.Module:
    """The syntax tree of a module of this repository."""
    path = module_path(module)
    return ast.parse(path.read_text(), str(path))


def _absolute(module: str, target: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    package = module.split(".")
    if module_path(module).name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join([*package, target] if target else package)


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The module's statements, those under ``if TYPE_CHECKING:`` included."""
    out: list[ast.stmt] = []
    for node in body:
        out.extend(_top_level(node.body) if isinstance(node, ast.If) else [node])
    return out


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def origin(module: str, name: str) -> tuple[str, str | None]:
    """Where ``name``, as seen in ``module``, is defined: (module, name), or (module, None)
    when it is a module itself. Imports inside the package are followed to their source."""
    for node in _top_level(parse(module).body):
        if _defines(node, name):
            return module, name
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    return (alias.name if alias.asname else name), None
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) != name:
                    continue
                source = _absolute(module, node.module, node.level)
                if source.split(".")[0] != PACKAGE:
                    return source, alias.name
                if module_path(f"{source}.{alias.name}").exists():
                    return f"{source}.{alias.name}", None
                return origin(source, alias.name)
    raise GenerationError(f"{module}: cannot tell where {name!r} comes from")


# -- names and imports ----------------------------------------------------------------------


@dataclass
class Imports:
    """The names the generated file imports: local name -> (module, name or None)."""

    names: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def local(self, module: str, name: str) -> str:
        """The local name for ``name`` as ``module`` sees it (aliased when two differ)."""
        source = origin(module, name)
        local = name if source[1] is not None else source[0].split(".")[0]
        if source[1] is None and source[0] != local:
            raise GenerationError(f"{module}: module {source[0]} imported under another name")
        candidate = local
        while candidate in self.names and self.names[candidate] != source:
            candidate = f"{local}_{source[0].rsplit('.', 2)[-2]}"
            if candidate in self.names and self.names[candidate] != source:
                raise GenerationError(f"two different {name!r} in the annotations")
        if candidate in OWN_NAMES:
            raise GenerationError(f"{module}: {name!r} clashes with a name of the sync package")
        self.names[candidate] = source
        return candidate

    def lines(self) -> list[str]:
        """The import statements (ruff sorts them)."""
        out = []
        for local, (module, name) in sorted(self.names.items()):
            if name is None:
                out.append(f"import {module}")
                continue
            relative = module
            if module.split(".")[0] == PACKAGE:
                relative = ".." + module.removeprefix(PACKAGE).lstrip(".")
            alias = f" as {local}" if local != name else ""
            out.append(f"from {relative} import {name}{alias}")
        return out


class Rename(ast.NodeTransformer):
    """Rewrites the names of an annotation (or a default value) to the generated file's."""

    def __init__(self, imports: Imports, module: str, *, annotation: bool = True) -> None:
        self.imports = imports
        self.module = module
        self.annotation = annotation

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id in OWN_NAMES or hasattr(builtins, node.id):
            return node
        return ast.copy_location(ast.Name(self.imports.local(self.module, node.id)), node)

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if self.annotation and isinstance(node.value, str):
            raise GenerationError(f"{self.module}: a quoted annotation ({node.value!r})")
        return node


def rename_arguments(args: ast.arguments, imports: Imports, module: str) -> None:
    """Rewrite the names of the annotations and default values of ``args`` in place."""
    annotations = Rename(imports, module)
    values = Rename(imports, module, annotation=False)
    for arg in [*_parameters(args), args.vararg, args.kwarg]:
        if arg is not None and arg.annotation is not None:
            arg.annotation = annotations.visit(arg.annotation)
    args.defaults = [values.visit(d) for d in args.defaults]
    args.kw_defaults = [None if d is None else values.visit(d) for d in args.kw_defaults]


# -- the rules ------------------------------------------------------------------------------


def _union(members: list[ast.expr]) -> ast.expr:
    unique = list({ast.unparse(m): m for m in members}.values())
    result = unique[0]
    for member in unique[1:]:
        result = ast.BinOp(result, ast.BitOr(), member)
    return result


def _members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*_members(node.left), *_members(node.right)]
    return [node]


def _is(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == name


def _plain_result(result: ast.expr) -> ast.expr | None:
    """``X`` for a callback's result ``Awaitable[X] | ...``; ``None`` when it awaits nothing."""
    results = _members(result)
    if not any(_is(r, "Awaitable") for r in results):
        return None
    return _union([r.slice if isinstance(r, ast.Subscript) and _is(r, "Awaitable") else r
                   for r in results])  # fmt: skip


def sync_callback(annotation: ast.expr) -> tuple[ast.expr, bool] | None:
    """For ``Callable[[...], Awaitable[X] | ...]`` (or with ``| None``): the annotation of
    the plain function the sync method takes (``Callable[[...], X]``) and whether ``None``
    is allowed. ``None`` when the parameter is no such callback."""
    members = _members(annotation)
    found = False
    out: list[ast.expr] = []
    for member in members:
        slice_ = member.slice if isinstance(member, ast.Subscript) else None
        if _is(member, "Callable") and isinstance(slice_, ast.Tuple) and len(slice_.elts) == 2:
            params, result = slice_.elts
            plain = _plain_result(result)
            if plain is not None:
                found = True
                member = ast.Subscript(ast.Name("Callable"), ast.Tuple([params, plain]))
        out.append(member)
    if not found:
        return None
    optional = any(isinstance(m, ast.Constant) and m.value is None for m in members)
    return _union(out), optional


def _check_supported(cls: str, node: Function) -> str:
    """The method's kind: ``async``, ``def`` or ``property``; an error for anything else."""
    decorators = [ast.unparse(d) for d in node.decorator_list]
    where = f"{cls}.{node.name}"
    if decorators == ["property"] and isinstance(node, ast.FunctionDef):
        return "property"
    if decorators:
        raise GenerationError(f"{where}: no rule for the decorators {decorators}")
    if isinstance(node, ast.FunctionDef):
        return "def"
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    stack: list[ast.AST] = list(node.body)
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Yield | ast.YieldFrom):
            raise GenerationError(f"{where}: an async generator: write its sync form in _base.py")
        if not isinstance(item, nested):
            stack.extend(ast.iter_child_nodes(item))
    return "async"


def _docstring(node: Function | ast.ClassDef, indent: str, fallback: str, note: str = "") -> str:
    text = ast.get_docstring(node, clean=False) or fallback
    if note:
        text = f"{text.rstrip()}\n\n{indent}{note}\n{indent}"
    if '"""' in text:
        raise GenerationError(f"{node.name}: a docstring with triple quotes")
    prefix = "r" if "\\" in text else ""
    return f'{indent}{prefix}"""{text}"""'


def _parameters(args: ast.arguments) -> list[ast.arg]:
    return [*args.posonlyargs, *args.args, *args.kwonlyargs]


def _call_arguments(args: ast.arguments, wrap: dict[str, str]) -> str:
    """The arguments of the async call, each passed as the method received it."""
    keyword_only = {a.arg for a in args.kwonlyargs}
    out = []
    for arg in _parameters(args):
        value = wrap.get(arg.arg, arg.arg)
        out.append(f"{arg.arg}={value}" if arg.arg in keyword_only else value)
    if args.vararg is not None:
        out.insert(len(args.posonlyargs) + len(args.args), f"*{args.vararg.arg}")
    if args.kwarg is not None:
        out.append(f"**{args.kwarg.arg}")
    return ", ".join(out)


def method(cls: str, module: str, node: Function, imports: Imports) -> str:
    """The sync twin of one public method."""
    kind = _check_supported(cls, node)
    args = copy.deepcopy(node.args)
    if not args.args or args.args[0].arg != "self":
        raise GenerationError(f"{cls}.{node.name}: the first parameter is not self")
    args.args = args.args[1:]
    wrap: dict[str, str] = {}
    for arg in _parameters(args):
        if arg.arg in ("self", BRIDGE):
            raise GenerationError(f"{cls}.{node.name}: a parameter named {arg.arg!r}")
        callback = sync_callback(arg.annotation) if arg.annotation is not None else None
        if callback is not None and kind == "async":
            arg.annotation, optional = callback
            helper = "optional_callback" if optional else "callback"
            wrap[arg.arg] = f"{BRIDGE}.{helper}({arg.arg}, {arg.arg!r})"
    for extra in (args.vararg, args.kwarg):
        if extra is not None and extra.annotation is not None and sync_callback(extra.annotation):
            raise GenerationError(f"{cls}.{node.name}: a callback in *args or **kwargs")
    rename_arguments(args, imports, module)
    returns_text = ""
    if node.returns is not None:
        returns = Rename(imports, module).visit(copy.deepcopy(node.returns))
        returns_text = f" -> {ast.unparse(returns)}"
    is_none = isinstance(node.returns, ast.Constant) and node.returns.value is None
    target = f"self.manager.{node.name}"
    if kind == "property":
        body = f"return {target}"
    else:
        call = f"{target}({_call_arguments(args, wrap)})"
        if kind == "async":
            call = (
                f"self._sync_store.call(lambda {BRIDGE}: {call})"
                if wrap
                else f"self._sync_store.run({call})"
            )
        body = call if is_none else f"return {call}"
    names = " and ".join(f"``{name}``" for name in wrap)
    note = f"Here {names} {'is a plain function' if len(wrap) == 1 else 'are plain functions'}, "
    note += "run in the calling thread."
    doc = _docstring(node, " " * 8, f"See :meth:`{cls}.{node.name}`.", note if wrap else "")
    head = "    @property\n" if kind == "property" else ""
    signature = ", ".join(filter(None, ["self", ast.unparse(args)]))
    return f"{head}    def {node.name}({signature}){returns_text}:\n{doc}\n        {body}\n"


class _Swap(ast.NodeTransformer):
    """In a constructor's annotation: the async managers become their sync twins, and a
    ``TokenSource`` may also be the sync OAuth manager."""

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in SYNC:
            return ast.Name(SYNC[node.id])
        if node.id in ALSO_ACCEPTS:
            return ast.BinOp(node, ast.BitOr(), ast.Name(ALSO_ACCEPTS[node.id]))
        return node


def constructor(cls: str, module: str, node: Function, imports: Imports) -> str:
    """``__init__``: the async constructor's arguments, made on a SyncStore."""
    args = copy.deepcopy(node.args)
    params = _parameters(args)
    first = params[1] if len(params) > 1 else None
    if first is None or first.annotation is None or ast.unparse(first.annotation) != "Store":
        raise GenerationError(f"{cls}.__init__: the first argument is not store: Store")
    args.args = args.args[1:]
    first.annotation = ast.Name("SyncStore")
    convert: dict[str, str] = {first.arg: "async_store"}
    for arg in _parameters(args)[1:]:
        if arg.annotation is None:
            continue
        before = ast.unparse(arg.annotation)
        arg.annotation = _Swap().visit(arg.annotation)
        if ast.unparse(arg.annotation) != before:
            convert[arg.arg] = f"async_of({arg.arg}, {first.arg}, {arg.arg!r})"
    rename_arguments(args, imports, module)
    build = f"{imports.local(module, cls)}({_call_arguments(args, convert)})"
    doc = (
        f'        """Made on a ``SyncStore``, with the arguments of :class:`{cls}`\n'
        '        (another manager: its sync twin)."""'
    )
    return (
        f"    def __init__(self, {ast.unparse(args)}) -> None:\n{doc}\n"
        f"        super().__init__({first.arg}, lambda async_store: {build})\n"
    )


# -- the classes and the file ---------------------------------------------------------------


def _class(module: str, name: str) -> ast.ClassDef:
    for node in parse(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise GenerationError(f"{module}: no class {name}")


def base_names() -> set[str]:
    """The names SyncManager defines itself (not generated)."""
    for node in parse("coordinator.sync._base").body:
        if isinstance(node, ast.ClassDef) and node.name == "SyncManager":
            return {
                n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    raise GenerationError("coordinator/sync/_base.py: no class SyncManager")


def sync_class(module: str, name: str, imports: Imports, skip: set[str]) -> str:
    """The sync twin of one async manager."""
    node = _class(module, name)
    for base in node.bases:
        if ast.unparse(base) not in HANDLED_BASES:
            raise GenerationError(f"{name}: no rule for its base {ast.unparse(base)}")
    header = (
        f"Synchronous :class:`~coordinator.{name}`, generated by scripts/gen_sync.py.\n\n"
        "    Each method runs the async method of the same name on the store's loop and waits."
    )
    doc = ast.get_docstring(node, clean=False) or ""
    doc_text = f'    """{header}\n\n    {doc}"""' if doc else f'    """{header}\n    """'
    parts = [
        f"class {SYNC[name]}(SyncManager[{imports.local(module, name)}]):\n{doc_text}\n",
    ]
    for item in node.body:
        if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if item.name == "__init__":
            parts.append(constructor(name, module, item, imports))
        elif not item.name.startswith("_") and item.name not in skip:
            parts.append(method(name, module, item, imports))
    return "\n".join(parts)


HEADER = '''"""The synchronous managers: written by scripts/gen_sync.py from the async managers.

Do not edit: change the async manager (or the script) and run ``python scripts/gen_sync.py``.
"""

from __future__ import annotations

'''


def generate() -> str:
    """The generated module's text, before formatting."""
    imports = Imports()
    skip = base_names()
    classes = [sync_class(module, name, imports, skip) for module, name in MANAGERS]
    names = ", ".join(f'"{SYNC[name]}"' for _module, name in MANAGERS)
    lines = [
        *imports.lines(),
        "from ._base import SyncManager, async_of",
        "from ._store import SyncStore",
        "",
        f"__all__ = [{names}]",
        "",
    ]
    return HEADER + "\n".join(lines) + "\n\n" + "\n\n".join(classes)


def formatted(text: str) -> str:
    """``text`` as ``ruff check --fix`` (import order) and ``ruff format`` leave it."""
    name = "coordinator/sync/_generated.py"  # (ruff reads the project's settings for it)
    for command in (["check", "--fix", "--quiet", "--exit-zero"], ["format", "--quiet"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", name, "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if done.returncode != 0:
            raise GenerationError(f"ruff {command[0]} failed: {done.stderr.strip()}")
        text = done.stdout
    return text


def main(argv: list[str] | None = None) -> int:
    """Write the file, or with ``--check`` say whether it is up to date (exit 1 if not)."""
    cli = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    cli.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    opts = cli.parse_args(argv)
    try:
        text = formatted(generate())
    except GenerationError as exc:
        print(f"gen_sync: {exc}", file=sys.stderr)
        return 2
    current = TARGET.read_text() if TARGET.exists() else ""
    if opts.check:
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "current", "generated", lineterm="", n=1
        )
        print("\n".join(list(diff)[:60]), file=sys.stderr)
        print(f"{_shown(TARGET)} is out of date: run python scripts/gen_sync.py", file=sys.stderr)
        return 1
    if current != text:
        TARGET.write_text(text)
        print(f"wrote {_shown(TARGET)}")
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    raise SystemExit(main())
