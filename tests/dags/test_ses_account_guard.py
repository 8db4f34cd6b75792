"""The ses_account_guard DAG with dag.test(): GetAccount answered by botocore's Stubber (moto does not implement it)."""

from __future__ import annotations

from datetime import timedelta

import boto3
import pytest
from botocore.stub import Stubber

from campaigns.sending import resources as runtime
from tests.helpers import insert_campaign, parse_dag


@pytest.fixture
def dag():
    return parse_dag("ses_account_guard")


@pytest.fixture
def ses_account(monkeypatch):
    """The task's SES client, answering GetAccount from what the test queues on the stubber."""
    client = boto3.client("sesv2", region_name="us-east-1")
    with Stubber(client) as stubber:
        monkeypatch.setattr(runtime, "account_ses_client", lambda: client)
        yield stubber
        stubber.assert_no_pending_responses()


def account(*, enabled: bool, status: str) -> dict:
    return {"SendingEnabled": enabled, "EnforcementStatus": status, "ProductionAccessEnabled": True,
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 0.0}}


@pytest.fixture
def running(db):
    campaign_id = insert_campaign(db, "spring")
    db.execute("UPDATE campaigns SET status = 'running' WHERE id = %s", [campaign_id])
    return campaign_id


def test_runs_every_five_minutes_one_run_at_a_time(dag):
    assert dag.schedule == timedelta(minutes=5)
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def test_an_account_on_probation_pauses_running_campaigns_and_fails_the_run(dag, db, ses_account, running):
    ses_account.add_response("get_account", account(enabled=True, status="PROBATION"), {})

    dag_run = dag.test()

    assert dag_run.state == "failed"  # red in the grid while the account is unhealthy
    row = db.execute("SELECT status, status_reason FROM campaigns WHERE id = %s", [running]).fetchone()
    assert row["status"] == "paused"
    assert row["status_reason"] == ("SES account guard: the account's enforcement status is PROBATION, "
                                    "not HEALTHY")
    [action] = db.execute("SELECT actor, run_id FROM campaign_actions WHERE campaign_id = %s", [running]).fetchall()
    assert action == {"actor": "ses_account_guard", "run_id": dag_run.run_id}


def test_a_healthy_account_leaves_running_campaigns_alone(dag, db, ses_account, running):
    ses_account.add_response("get_account", account(enabled=True, status="HEALTHY"), {})

    dag_run = dag.test()

    assert dag_run.state == "success"
    assert db.execute("SELECT status FROM campaigns WHERE id = %s", [running]).fetchone()["status"] == "running"
    assert db.execute("SELECT count(*) AS n FROM campaign_actions").fetchone()["n"] == 0
