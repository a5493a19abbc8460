"""The house rules that keep cprec readable: small functions and classes."""

from __future__ import annotations

import ast
from pathlib import Path

LIMIT = 120
PACKAGE = Path(__file__).resolve().parent.parent / "cprec"


def test_no_function_or_class_is_longer_than_the_limit() -> None:
    """Every def and class in cprec/ spans at most 120 lines (docstrings included)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                span = node.end_lineno - node.lineno + 1
                if span > LIMIT:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({span})")
    assert long == []
