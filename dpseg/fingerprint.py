"""What code made a cached artefact: a fingerprint of the dpseg source a computation runs, and of the libraries
whose numerics it depends on.

A cache keyed only by settings is reused after a code change that alters its content, silently (the quickstart's
run cache once served models trained before a fix). :func:`code_fingerprint` names the code instead: the
``dpseg`` modules that the entry modules import, directly or inside a function, transitively, each parsed with its
docstrings dropped (comments, docstrings and formatting change no result, so editing them invalidates nothing),
together with the versions of torch, timm, open_clip and numpy. It is static: a module imported by a string name
(``importlib.import_module``) is not followed; the closures of the entries dpseg uses hold no such import.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "timm", "open_clip_torch", "numpy")


def _path(module: str, package: Path) -> Path | None:
    """The source file of a dpseg module (``dpseg.a.b``) in the package folder, or None when there is none."""
    if "." not in module:
        return None  # the package root: it re-exports lazily, by string, and makes nothing
    rel = Path(*module.split(".")[1:])
    for path in (package / rel.with_suffix(".py"), package / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(module: str, path: Path, tree: ast.Module, root: Path) -> set[str]:
    """The dpseg modules a parsed file imports (at module level or inside functions), and their packages."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != "dpseg":
            continue
        # importing dpseg.a.b runs dpseg/a/__init__.py; the package root only re-exports lazily
        out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if _path(".".join(parts[:i]), root))
    return out


def _stripped(tree: ast.Module) -> str:
    """The parsed source without docstrings (a string expression first in a module, class or function body)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def source_closure(*entries: str, package: Path = PACKAGE) -> dict[str, str]:
    """{module: SHA-256 of its docstring-free syntax tree} for ``entries`` and every dpseg module they import
    (``package``: the folder of the ``dpseg`` package whose sources are read)."""
    todo, out = list(entries), {}
    while todo:
        module = todo.pop()
        if module in out:
            continue
        path = _path(module, package) if module.split(".")[0] == "dpseg" else None
        if path is None:
            raise ValueError(f"{module} is not a dpseg module (no source file for it in {package})")
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        todo.extend(_imported(module, path, tree, package))
        out[module] = hashlib.sha256(_stripped(tree).encode()).hexdigest()
    return dict(sorted(out.items()))


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@functools.cache
def code_fingerprint(*entries: str) -> str:
    """16 hex digits naming the source closure of ``entries`` (module names such as ``dpseg.engine.train``) and
    the library versions (module doc). Equal fingerprints: the same code and libraries made the artefact."""
    blob = repr((source_closure(*entries), library_versions()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
