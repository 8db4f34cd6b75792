"""The architecture as a test: the import rule at the top of docs/architecture.md holds for every module.

The rule is read from the document itself (its "Which part may import which" table), so the picture a newcomer reads
and the one this test enforces are the same. Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "campaigns"
DOC = ROOT / "docs" / "architecture.md"
GROUND = "ground"


@dataclass(frozen=True)
class Import:
    """One import of a `campaigns` module (`module`) or of a name from it (`name`), at `where` (file:line)."""

    module: str
    name: str | None
    where: str


def documented_parts(doc: Path = DOC) -> dict[str, int]:
    """The parts, bottom first, from the table under '## Which part may import which': part -> layer number."""
    text = doc.read_text(encoding="utf-8")
    section = text.split("## Which part may import which", 1)[1].split("\n## ", 1)[0]
    parts = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert parts, f"no part table under 'Which part may import which' in {doc}"
    return {part: layer for layer, part in enumerate(parts)}


def part_of(module: str) -> str:
    """`campaigns.sending.ledger` -> `sending`; top-level modules (`campaigns.db`, migrations) are the ground."""
    names = module.split(".")
    if len(names) >= 2 and (PACKAGE / names[1] / "__init__.py").is_file() and names[1] != "migrations":
        return names[1]
    return GROUND


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    names = list(relative.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def campaign_imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import of the campaigns package in one file, top-level or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [Import(alias.name, None, where) for alias in node.names
                      if alias.name == "campaigns" or alias.name.startswith("campaigns.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and (node.module == "campaigns" or node.module.startswith("campaigns.")):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                # `from campaigns.sending import ledger` imports a module; `from campaigns.db import connect` a name
                if _is_module(submodule):
                    found.append(Import(submodule, None, where))
                else:
                    found.append(Import(node.module, alias.name, where))
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def upward_imports(package: Path = PACKAGE, parts: dict[str, int] | None = None) -> list[str]:
    """Imports from a part to a part above it (or to a part the document does not name)."""
    parts = documented_parts() if parts is None else parts
    problems = []
    for path in sorted(package.rglob("*.py")):
        importer = part_of(module_name(path, package))
        for found in campaign_imports(path, package.parent):
            imported = part_of(found.module)
            if importer not in parts or imported not in parts:
                problems.append(f"{found.where}: part {importer if importer not in parts else imported!r} is not in "
                                f"the table of {DOC.name}")
            elif parts[imported] > parts[importer]:
                problems.append(f"{found.where}: {importer} imports {found.module} ({imported} is above {importer})")
    return problems


def private_imports(folders: tuple[str, ...] = ("tracking_service", "plugins")) -> list[str]:
    """Names with a leading underscore that the tracking service or the plugin takes from campaigns."""
    problems = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for found in campaign_imports(path):
                names = [*found.module.split("."), *([found.name] if found.name else [])]
                if any(name.startswith("_") for name in names):
                    problems.append(f"{found.where}: imports a private name: {'.'.join(names)}")
    return problems


def test_no_part_imports_a_part_above_it():
    assert upward_imports() == []


def test_every_part_of_the_package_is_in_the_documented_table():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "migrations"}
    assert set(documented_parts()) == {GROUND, *folders}


def test_tracking_service_and_plugin_use_only_public_names_of_campaigns():
    assert private_imports() == []


@pytest.mark.parametrize(("importer", "statement"), [
    ("states.py", "from campaigns.lifecycle import control\n"),
    ("audience/filters.py", "def later():\n    from campaigns.sending.ledger import snapshot\n"),
    ("sending/ledger.py", "import campaigns.doctor.checks\n"),
])
def test_the_rule_check_fails_on_an_upward_import(tmp_path, importer, statement):
    """The checker itself: a copy of the package with one lower module importing a higher one is refused."""
    import shutil

    copy = tmp_path / "campaigns"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / importer
    target.write_text(target.read_text(encoding="utf-8") + "\n" + statement, encoding="utf-8")
    added = set(upward_imports(copy)) - set(upward_imports(PACKAGE))
    assert len(added) == 1, added
    assert added.pop().startswith(f"campaigns/{importer}:")
