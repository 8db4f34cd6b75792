"""The import_contacts DAG end to end with dag.test(): a local file, an s3:// object on a moto server, a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "import_contacts.py"

CSV = (
    "Email,First Name,Last Name,Plan\n"
    "ann@example.com,Ann,Lee,gold\n"
    "not-an-address,Bob,,\n"
    "ANN@example.com,Annie,,\n"
    "cy@example.com,Cy,,silver\n"
)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("import_contacts")


def run(dag, conf: dict) -> tuple[str, dict | None]:
    """dag.test() one run; returns its state and the import task's return value (None when it failed)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dr = dag.test(run_conf=conf)
    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dr.run_id, key="return_value", dag_ids=dag.dag_id, task_ids="import_csv")
        ).first()
        value = XComModel.deserialize_value(row) if row is not None else None
    return dr.state, value


def contacts(db) -> list[dict]:
    return db.execute(
        "SELECT c.email, c.first_name, c.attributes, l.name AS list, m.status FROM contacts c"
        " JOIN list_members m ON m.contact_id = c.id JOIN lists l ON l.id = m.list_id ORDER BY c.email"
    ).fetchall()


def test_dag_is_triggered_only_and_requires_path_and_list(dag):
    from airflow.sdk.exceptions import ParamValidationError

    assert dag.schedule is None
    assert dag.default_args["retries"] >= 1
    assert dag.doc_md
    assert set(dag.params.keys()) == {"path", "list"}
    with pytest.raises(ParamValidationError, match="path"):
        dag.params.validate()  # no defaults: the trigger form and the REST API must supply both
    with pytest.raises(ParamValidationError, match="non-empty"):
        dag.params.get_param("list").resolve("")  # minLength 1
    assert dag.params.get_param("path").resolve("s3://imports/contacts.csv") == "s3://imports/contacts.csv"


def test_local_csv_is_imported_and_problems_are_in_the_result(dag, db, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(CSV, encoding="utf-8")

    state, result = run(dag, {"path": str(path), "list": "newsletter"})

    assert state == "success"
    assert result["rows"] == 4
    assert result["inserted"] == 2
    assert result["added_to_list"] == 2
    assert result["invalid_rows"][0]["line"] == 3
    assert result["duplicate_rows"] == [
        {"line": 4, "email": "ANN@example.com", "reason": "duplicate of line 2"}
    ]
    assert contacts(db) == [
        {"email": "ann@example.com", "first_name": "Ann", "attributes": {"plan": "gold"},
         "list": "newsletter", "status": "subscribed"},
        {"email": "cy@example.com", "first_name": "Cy", "attributes": {"plan": "silver"},
         "list": "newsletter", "status": "subscribed"},
    ]


@pytest.fixture
def s3_server(monkeypatch):
    """A moto server (s3fs speaks aiobotocore, which in-process mock_aws does not reliably intercept)."""
    from airflow.sdk.io import store
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                    "extra": {"region_name": "us-east-1", "endpoint_url": endpoint}}),
    )
    # Airflow caches one attached filesystem per (scheme, connection) for the whole process: a cached store from
    # another test would still point at its old endpoint.
    monkeypatch.setattr(store, "_STORE_CACHE", {})
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    yield client
    server.stop()


def test_s3_uri_is_read_through_the_aws_default_connection(dag, db, s3_server):
    s3_server.create_bucket(Bucket="imports")
    # Excel's "CSV UTF-8" starts with a BOM; the header must still be recognised.
    s3_server.put_object(Bucket="imports", Key="2026/contacts.csv", Body=("\ufeff" + CSV).encode("utf-8"))

    state, result = run(dag, {"path": "s3://imports/2026/contacts.csv", "list": "from-s3"})

    assert state == "success"
    assert (result["inserted"], result["invalid"], result["duplicates"]) == (2, 1, 1)
    assert [(r["email"], r["list"]) for r in contacts(db)] == [
        ("ann@example.com", "from-s3"), ("cy@example.com", "from-s3"),
    ]


def test_file_without_email_column_fails_the_run_without_retrying(dag, db, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("name,phone\nAnn,123\n", encoding="utf-8")

    state, result = run(dag, {"path": str(path), "list": "newsletter"})

    # AirflowFailException skips the retries (dag.test would otherwise wait out retry_delay for real).
    assert state == "failed"
    assert result is None
    assert db.execute("SELECT count(*) AS n FROM contacts").fetchone()["n"] == 0
