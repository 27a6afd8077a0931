"""The package's shape: layers import only downward (no cycle, lazy imports included), imports at the top.

Read from the source (each module's ``ast``), so a cycle hidden inside a function is
found as surely as one at the top. A lazy import is allowed only where it keeps a heavy
library (torch, smp, timm, ONNX, matplotlib, rich...) off a path that must not pay for it
(``lunar --help``, torch-free ONNX prediction), and it says so in a comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lunar_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(node: ast.AST) -> list[str]:
    """Return the lunar_cli modules an import statement loads (``from lunar_cli.x import y`` may name module x.y)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("lunar_cli")]
    if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("lunar_cli"):
        return []
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Return module -> the lunar_cli modules it imports anywhere in its source (type-only imports left out)."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}  # fmt: skip
        graph[name] = {m for node in ast.walk(tree) if id(node) not in type_only for m in imported_modules(node)
                       if m in MODULES and m != name}  # fmt: skip
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40  # every module was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_lazy_import_says_why_it_is_lazy():
    unexplained = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "#" not in lines[node.lineno - 1]:
                    unexplained.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "imports inside functions without a comment saying why:\n" + "\n".join(unexplained)


def test_no_function_is_longer_than_80_lines():
    long = [f"{name}:{node.lineno} {node.name}() {node.end_lineno - node.lineno + 1} lines"
            for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]  # fmt: skip
    assert not long, "\n".join(long)


# Options of a command that are its inputs, not settings: everything else a command takes is a config key.
COMMAND_INPUTS = {"train": {"resume"}, "predict": {"output", "model"}, "export": {"output"}, "serve": {"model"}}


def test_every_option_of_every_command_is_a_config_key_or_a_declared_input():
    import inspect
    import typing

    import typer

    from lunar_cli.cli import COMMANDS, app
    from lunar_cli.config import flag_key

    unmapped = []
    for command in app.registered_commands:
        name = command.callback.__name__
        hints = typing.get_type_hints(command.callback, include_extras=True)
        for param in inspect.signature(command.callback).parameters:
            info = next((m for m in getattr(hints[param], "__metadata__", ()) if isinstance(m, typer.models.OptionInfo)), None)
            if info is None or param in ("config", "json_out") or param in COMMAND_INPUTS.get(name, ()):
                continue  # arguments (the photos, the run...), the config file itself, --json
            try:
                flag_key(name, param)
            except KeyError:
                unmapped.append(f"lunar {name} {param}")
    assert len(app.registered_commands) == len(COMMANDS) and not unmapped, unmapped
