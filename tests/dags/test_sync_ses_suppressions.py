"""The sync_ses_suppressions DAG with dag.test() against the local SES (served in-process, `aws_default` pointing
at it): the import, the push only when SES_SUPPRESSION_PUSH allows it, and a second run reading only new entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# the local SES served in-process, `aws_default` pointing at it (autouse there, so here too); yields its list
from tests.dags.test_manage_suppressions import account_list  # noqa: F401
from tests.helpers import parse_dag

NOW = datetime.now(UTC).replace(microsecond=0)


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def result_of(dag_run, task_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id,
                                                 key="return_value")).first()
        return XComModel.deserialize_value(row)


def test_imports_the_account_list_and_leaves_the_push_off_by_default(db, settings, account_list):  # noqa: F811
    account_list.seed("bounced@example.com", "BOUNCE", NOW - timedelta(days=2))
    account_list.seed("complained@example.com", "COMPLAINT", NOW - timedelta(days=1))
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('ours@example.com', 'hard_bounce', 'ses')")

    dag_run = parse_dag("sync_ses_suppressions").test()

    assert dag_run.state == "success"
    assert task_states(dag_run) == {"import_account_list": "success", "push_product_suppressions": "skipped"}
    rows = {r["email"]: (r["reason"], r["source"]) for r in db.execute("SELECT * FROM suppressions")}
    assert rows == {"bounced@example.com": ("hard_bounce", "ses-account"),
                    "complained@example.com": ("complaint", "ses-account"), "ours@example.com": ("hard_bounce", "ses")}
    assert result_of(dag_run, "import_account_list")["added"] == 2
    assert {e.email for e in account_list.entries()} == {"bounced@example.com", "complained@example.com"}
    actors = {r["actor"] for r in db.execute("SELECT actor, run_id FROM suppression_changes")}
    assert actors == {"sync_ses_suppressions"}


def test_with_the_push_allowed_the_product_suppressions_go_to_ses_and_a_second_run_reads_only_new_entries(
        db, settings_env, account_list):  # noqa: F811
    settings_env(SES_SUPPRESSION_PUSH=1)
    account_list.seed("old@example.com", "BOUNCE", NOW - timedelta(days=3))
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('ours@example.com', 'complaint', 'ses')")

    first = parse_dag("sync_ses_suppressions").test()

    assert first.state == "success"
    assert result_of(first, "push_product_suppressions") == {"pushed": 1, "problems": []}
    assert {e.email: e.reason for e in account_list.entries()} == {"old@example.com": "BOUNCE",
                                                                   "ours@example.com": "COMPLAINT"}
    account_list.seed("new@example.com", "COMPLAINT", NOW + timedelta(minutes=1))

    second = parse_dag("sync_ses_suppressions").test()

    imported = result_of(second, "import_account_list")
    assert imported["since"] == (NOW - timedelta(days=3, hours=1)).isoformat()  # the first run's mark, less 1 h
    # old@ (in the overlap) and the pushed ours@ come back from SES: kept as they are; new@ is added
    assert (imported["read"], imported["added"], imported["kept"]) == (3, 1, 2)
    assert result_of(second, "push_product_suppressions") == {"pushed": 0, "problems": []}
    assert db.execute("SELECT reason FROM suppressions WHERE email = 'new@example.com'").fetchone() == {
        "reason": "complaint"}
