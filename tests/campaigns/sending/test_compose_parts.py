"""The message path's parts (addresses, templates, tracked_links, mime) are put together by compose.py only."""

from __future__ import annotations

import ast
from pathlib import Path

import campaigns.sending

PARTS = ("addresses", "templates", "tracked_links", "mime")
SENDING = Path(campaigns.sending.__file__).parent


def imported_modules(module: str) -> set[str]:
    tree = ast.parse((SENDING / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_no_part_imports_the_composer():
    for part in PARTS:
        assert "campaigns.sending.compose" not in imported_modules(part), part


def test_the_parts_import_only_the_parts_listed_before_them():
    for index, part in enumerate(PARTS):
        later = {f"campaigns.sending.{name}" for name in PARTS[index + 1:]}
        assert not imported_modules(part) & later, part
