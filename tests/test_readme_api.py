"""Every ``spisonet`` name the README's and docs' Python examples use still resolves."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            out.append((page.name, block))
    return out


def _names(code: str) -> list[tuple[str, str]]:
    """(module, attribute) pairs: ``from m import a`` and ``spisonet.a`` uses."""
    tree = ast.parse(code)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spisonet"):
            found += [(node.module, a.name) for a in node.names]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "spisonet":
                found.append(("spisonet", node.attr))
    return found


BLOCKS = _python_blocks()


def test_there_are_examples():
    assert any(page == "README.md" for page, _ in BLOCKS)


@pytest.mark.parametrize(
    ("page", "code"), BLOCKS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BLOCKS)]
)
def test_example_names_resolve(page, code):
    for module, name in _names(code):
        assert hasattr(importlib.import_module(module), name), f"{page}: {module}.{name}"
