"""Named SQL: every statement lives in a queries/*.sql file, and every file is loaded by campaigns.queries.load."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from campaigns import queries

ROOT = Path(__file__).resolve().parents[2]
# Where product code lives; migrations write DDL inline on purpose (a migration is frozen text).
SOURCES = [ROOT / "include" / "campaigns", ROOT / "tracking_service", ROOT / "plugins", ROOT / "dags"]
NOT_CHECKED = [
    ROOT / "include" / "campaigns" / "migrations",
]
STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|SET|CREATE|ALTER|DROP|TRUNCATE|COPY|LISTEN|NOTIFY)\s")
DIRECT_USE = re.compile(r"""queries\.load\("(?P<area>[a-z0-9_]+)"\)\["(?P<name>[^"]+)"\]""")


def _python_files() -> list[Path]:
    files = [path for source in SOURCES for path in sorted(source.rglob("*.py"))]
    return [path for path in files if not any(path.is_relative_to(skipped) for skipped in NOT_CHECKED)]


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    return {id(node.body[0].value) for node in nodes
            if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def test_no_sql_statement_is_written_inline_in_python():
    inline = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and STATEMENT.match(node.value):
                inline.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip().splitlines()[0]}")
    assert inline == [], "SQL belongs in a queries/<area>.sql file:\n" + "\n".join(inline)


def test_every_query_named_in_the_code_exists_in_its_file():
    missing = []
    for path in _python_files():
        for match in DIRECT_USE.finditer(path.read_text(encoding="utf-8")):
            if match["name"] not in queries.load(match["area"]):
                missing.append(f"{path.relative_to(ROOT)}: {match['area']}/{match['name']}")
    assert missing == []


def test_every_query_file_parses_with_a_sql_body_under_each_name():
    for path in sorted(queries.QUERIES_DIR.glob("*.sql")):
        named = queries.load(path.stem)
        assert named, f"{path.name} has no named query"
        assert all(sql.strip() and not sql.lstrip().startswith("--") for sql in named.values())


def test_test_sends_read_and_write_through_their_own_query_file():
    test_send_queries = {"campaign-by-key", "suppressed-addresses", "contacts-by-address", "insert-test-send"}
    assert test_send_queries <= set(queries.load("testsend"))
    assert not test_send_queries & set(queries.load("control"))
