"""The package's shape: files over 300 lines and functions over 80 lines.

python benchmarks/code_shape.py [REPO_ROOT]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] if len(sys.argv) < 2 else Path(sys.argv[1])
FILE_LINES, FUNC_LINES = 300, 80


def main() -> None:
    files, funcs = [], []
    for path in sorted((ROOT / "dpseg").rglob("*.py")):
        text = path.read_text()
        n = len(text.splitlines())
        rel = path.relative_to(ROOT)
        if n > FILE_LINES:
            files.append((n, str(rel)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > FUNC_LINES:
                    funcs.append((length, f"{rel}:{node.name}"))
    print(f"files over {FILE_LINES} lines: {len(files)}")
    for n, name in sorted(files, reverse=True):
        print(f"  {n:5d}  {name}")
    print(f"functions over {FUNC_LINES} lines: {len(funcs)}")
    for n, name in sorted(funcs, reverse=True):
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
