"""The package's layers (docs/architecture.md): no module imports from a layer above its own, and
no import cycles. Every import counts, also inside functions and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import autotimm_stream

PACKAGE = Path(autotimm_stream.__file__).parent
# Layer of each part of the package, lowest first. A module may import from its own layer and below.
LAYERS: dict[str, int] = {
    # 0: foundations
    "errors": 0,
    "tasks": 0,
    "frame": 0,
    "stats": 0,
    "lifecycle": 0,
    "fileio": 0,
    "priority": 0,
    "synthetic": 0,
    "net": 0,
    # 1: settings and messages
    "config": 1,
    "messages": 1,
    "ringbuffer": 1,
    # 2: wire and batching
    "protocol": 2,
    "batching": 2,
    # 3: parts
    "sources": 3,
    "runtime": 3,
    "client": 3,
    # 4: parts built on parts
    "postprocess": 4,
    "export": 4,
    "sinks": 4,
    # 5-8: the worker, the pipeline, the application, the command line
    "worker": 5,
    "pipeline": 6,
    "app": 7,
    "cli": 8,
    "__main__": 8,
}
OUTSIDE = {"testing"}  # dev tools shared by tests and benchmarks: they import no engine module


def modules() -> dict[str, Path]:
    """Dotted names (without the package prefix) of every module, packages as their ``__init__``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (relative and absolute), resolved to the deepest known module."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    base = here if is_package else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = [*up, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "autotimm_stream":
                prefix = node.module.split(".")[1:]
            else:
                continue
            targets = [".".join([*prefix, alias.name]) for alias in node.names] + [".".join(prefix)]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("autotimm_stream.")]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items() if name}


def layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[0] for m in graph()} - set(LAYERS) - OUTSIDE)
    assert not missing, f"add {missing} to LAYERS here and to docs/architecture.md"


def test_no_module_imports_from_a_layer_above_it():
    climbing = []
    for module, deps in graph().items():
        top = module.split(".")[0]
        if top in OUTSIDE:
            climbing += [f"{module} -> {d}" for d in deps]  # dev tools stand apart from the engine
            continue
        for dep in deps:
            if layer(dep) is not None and layer(dep) > layer(module):  # type: ignore[operator]
                climbing.append(f"{module} (layer {layer(module)}) -> {dep} (layer {layer(dep)})")
    assert not climbing, "\n".join(climbing)


def test_there_are_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if dep.startswith(f"{node}.") or node.startswith(f"{dep}."):
                continue  # a package and its own modules (its __init__ re-exports them)
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", ["client", "cli", "protocol"])
def test_light_entry_points_do_not_import_torch(module):
    """``autotimm-stream listen`` and the client start without torch (a subscriber needs none)."""
    import subprocess
    import sys

    code = f"import sys, autotimm_stream.{module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
