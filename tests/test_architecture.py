"""The package imports only downward: every import inside dpseg (module level or inside a function) goes from a
layer to the same or a lower layer, and module-level imports form no loop. A new upward import or loop fails here
with the offending edge named. ``python tests/test_architecture.py`` prints the graph's numbers.

Layers, bottom up (docs/architecture.md): errors/atomic/progress -> config -> weights / image I/O / vocabulary /
visualize -> model -> prompts -> build / convert -> data -> evaluation -> engine -> segmenter -> labelling ->
quickstart -> commands.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dpseg"

LAYERS: list[tuple[str, ...]] = [
    (
        "dpseg.errors",
        "dpseg.atomic",
        "dpseg.safe_load",
        "dpseg.http_guard",
        "dpseg.progress",
        "dpseg.distributed",
        "dpseg.fingerprint",
    ),
    ("dpseg.config_schema", "dpseg.config"),
    ("dpseg.weights", "dpseg.init_patch", "dpseg.hub", "dpseg.image_io", "dpseg.vocab", "dpseg.visualize"),
    ("dpseg.model",),
    ("dpseg.prompts",),
    ("dpseg.clip_loading", "dpseg.build", "dpseg.checkpoint", "dpseg.init_from", "dpseg.convert"),
    ("dpseg.data",),
    ("dpseg.evaluation",),
    ("dpseg.engine",),
    ("dpseg.segmenter",),
    ("dpseg.labelling",),
    ("dpseg.quickstart",),
    ("dpseg.demo_app",),
    ("dpseg.commands", "dpseg.__main__"),
]
EXEMPT = {"dpseg"}  # the package root only re-exports names lazily (by string), it imports nothing


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS in {Path(__file__).name}")


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool, int]]:
    """(imported dpseg module, at module level?, line) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules or base != "dpseg" else f"dpseg:{a.name}"
                for a in node.names
            ]
        for name in names:
            if name == "dpseg:__version__":
                continue  # the version string of the package root: imports nothing
            if name.startswith("dpseg:"):
                out.append(("dpseg", id(node) in top, node.lineno))
            elif name == "dpseg" or name.startswith("dpseg."):
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                if name != me:
                    out.append((name, id(node) in top, node.lineno))
    return out


def graph():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    edges = {module_name(f): imports(f, modules) for f in files}
    return files, modules, edges


def upward_edges(edges) -> list[str]:
    bad = []
    for src, targets in edges.items():
        if src in EXEMPT:
            continue
        for dst, _, line in targets:
            if dst in EXEMPT:
                bad.append(f"{src}:{line} imports a lazy name of the package root 'dpseg'; import the defining module")
            elif layer_of(dst) > layer_of(src):
                bad.append(f"{src}:{line} -> {dst} (layer {layer_of(src)} imports layer {layer_of(dst)})")
    return bad


def loops(edges) -> list[list[str]]:
    """Strongly connected components (size > 1) of the module-level import graph (Tarjan)."""
    graph_ = {m: sorted({d for d, top, _ in ts if top}) for m, ts in edges.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph_.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph_:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    _, modules, _ = graph()
    for m in modules - EXEMPT:
        layer_of(m)


def test_imports_only_go_downward():
    _, _, edges = graph()
    bad = upward_edges(edges)
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def test_no_import_loops():
    _, _, edges = graph()
    found = loops(edges)
    assert not found, "import loops: " + "; ".join(" <-> ".join(c) for c in found)


def test_library_never_imports_a_command():
    _, _, edges = graph()
    bad = [
        f"{s}:{line} -> {d}"
        for s, ts in edges.items()
        if not s.startswith("dpseg.commands") and s != "dpseg.__main__"
        for d, _, line in ts
        if d.startswith("dpseg.commands")
    ]
    assert not bad, "library modules importing the command layer:\n  " + "\n  ".join(bad)


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The checker itself: a model module importing the engine is reported with its edge."""
    edges = {"dpseg.model.decoder": [("dpseg.engine.train", False, 12)], "dpseg.engine.train": []}
    assert upward_edges(edges) == ["dpseg.model.decoder:12 -> dpseg.engine.train (layer 3 imports layer 8)"]
    assert loops({"a": [("b", True, 1)], "b": [("a", True, 1)]}) == [["a", "b"]]
    assert loops({"a": [("b", False, 1)], "b": [("a", True, 1)]}) == []  # a function-level import is not a loop


if __name__ == "__main__":
    files, modules, edges = graph()
    n_edges = sum(len({d for d, _, _ in ts}) for ts in edges.values())
    inner = sum(1 for ts in edges.values() for _, top, _ in ts if not top)
    biggest = max(files, key=lambda f: len(f.read_text().splitlines()))
    print(
        f"modules {len(modules)}, layers {len(LAYERS)}, internal imports {n_edges} ({inner} inside functions), "
        f"upward {len(upward_edges(edges))}, loops {len(loops(edges))}, largest file "
        f"{biggest.relative_to(ROOT)} ({len(biggest.read_text().splitlines())} lines)"
    )
