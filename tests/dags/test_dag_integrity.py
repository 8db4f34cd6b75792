"""Every DAG imports cleanly, has tags and retries, and does no I/O at import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_there_are_dag_files():
    assert DAG_FILES, "no DAG files found"


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"send_campaign", "import_contacts"} <= set(dagbag.dag_ids)


def test_every_dag_has_tags_docs_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert dag.default_args.get("retries", 0) >= 1, f"{dag_id} has no default retries"


def import_without_io(dag_file: Path) -> subprocess.CompletedProcess:
    """Import a DAG file in a fresh interpreter where opening a socket or a database connection exits loudly."""
    probe = f"""
import socket
def refuse(*args, **kwargs):
    raise SystemExit("I/O at import time: " + repr(args)[:200])
socket.socket.connect = refuse
socket.create_connection = refuse
import psycopg, redis
psycopg.connect = refuse
redis.Redis.execute_command = refuse
import importlib.util
spec = importlib.util.spec_from_file_location("dag_under_test", {str(dag_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("imported")
"""
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_do_no_io_at_import_time(dag_file):
    result = import_without_io(dag_file)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    assert "imported" in result.stdout


def test_the_io_probe_catches_a_dag_that_connects_at_import_time(tmp_path):
    bad = tmp_path / "bad_dag.py"
    bad.write_text("import psycopg\npsycopg.connect('postgresql://127.0.0.1:1/x')\n")
    result = import_without_io(bad)
    assert result.returncode != 0
    assert "I/O at import time" in result.stderr
