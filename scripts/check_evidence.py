"""Check that every test the compliance evidence map (docs/compliance.md) names exists.

    .venv/bin/python scripts/check_evidence.py [docs/compliance.md]

A test is named as `tests/<file>.py::<name>`; it exists when that file defines a function (a test
or a fixture) of that name. Exit 1 listing the missing ones, or when the map names no test at all.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def missing(document: Path) -> tuple[int, list[str]]:
    """(how many tests the document names, the ones that do not exist)."""
    named = REFERENCE.findall(document.read_text(encoding="utf-8"))
    gone = []
    defined: dict[str, set[str]] = {}
    for file, name in named:
        if file not in defined:
            path = ROOT / file
            tree = ast.parse(path.read_text(encoding="utf-8")) if path.is_file() else ast.Module([], [])
            defined[file] = {
                n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
        if name not in defined[file]:
            gone.append(f"{file}::{name}")
    return len(named), gone


def main() -> int:
    document = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "compliance.md"
    count, gone = missing(document)
    for ref in gone:
        print(f"missing: {ref}")
    if count == 0:
        print(f"{document} names no test")
        return 1
    print(f"{count} tests named, {len(gone)} missing")
    return 1 if gone else 0


if __name__ == "__main__":
    sys.exit(main())
