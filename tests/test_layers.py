"""The layout shows the architecture: folders form layers, imports only go down, no module
imports itself round a loop, entry points are thin and never import each other, no file is
long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lmvision"
ENTRY_POINTS = ("train", "evaluate", "explain", "compare", "prefetch")
# bottom first: a module may import from its own layer and the layers below it, never above
LAYERS = (
    ("errors", "checks", "compat", "files", "ranks"),  # plain helpers, no torch
    ("text",),         # tokenizers, class descriptions, the text side of a run
    ("nn",),           # plain torch modules
    ("data",),         # datasets, the datamodule, samplers, collate
    ("config",),       # composing, resolvers, validation, building
    ("run",),          # the run session, record, checkpoints, loggers, how a run ends
    ("evaluation",),   # metrics, figures and the evaluation callbacks
    ("strategies",),   # one LightningModule per strategy
    ENTRY_POINTS,
)
MAX_LINES = 300


def modules() -> dict[str, Path]:
    """Dotted name (``run.session``) of every module under src/lmvision."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """The lmvision modules that ``path`` imports (``lmvision.x.y`` -> ``x.y``), at any depth
    of the file (imports inside functions count: they run too)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = package[:len(package) - node.level + 1]
                module = ".".join(["lmvision", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    known = modules()
    return {m[len("lmvision."):] for m in found
            if m.startswith("lmvision.") and m[len("lmvision."):] in known} - {name}


def layer_of(name: str) -> int:
    top = name.split(".")[0]
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"lmvision.{name} is in no layer of tests/test_layers.py: place it")


def graph() -> dict[str, set[str]]:
    return {name: imports(path, name) for name, path in modules().items() if name}


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


def test_imports_only_go_down_the_layers():
    upward = [f"lmvision.{a} imports lmvision.{b}" for a, targets in graph().items()
              for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    edges = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:  # a package's __init__ named through its module
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_entry_points_do_not_import_each_other():
    edges = graph()
    crossing = [f"{a} imports {b}" for a in ENTRY_POINTS for b in edges.get(a, ())
                if b.split(".")[0] in ENTRY_POINTS]
    assert not crossing, crossing


@pytest.mark.parametrize("name", sorted(modules()), ids=lambda n: n or "lmvision")
def test_no_file_is_long(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{modules()[name]} has {lines} lines (at most {MAX_LINES})"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The layer check itself can fail: a text module importing from run/ is reported."""
    fake = tmp_path / "lmvision"
    (fake / "text").mkdir(parents=True)
    (fake / "run").mkdir()
    (fake / "text" / "bad.py").write_text("from lmvision.run.record import RunRecord\n")
    (fake / "run" / "record.py").write_text("x = 1\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    upward = [(a, b) for a, targets in graph().items() for b in targets
              if layer_of(b) > layer_of(a)]
    assert upward == [("text.bad", "run.record")]
