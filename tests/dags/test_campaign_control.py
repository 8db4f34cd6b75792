"""campaign_control through dag.test(): real PostgreSQL and Redis, moto for SES, and Airflow's own
TriggerDagRunOperator queueing the send_campaign run of a resume (dag.test() then runs that queued run under its
id, as the scheduler would)."""

from __future__ import annotations

import email
import email.policy
from collections import Counter

import pytest

from campaigns import states
from tests.campaigns.lifecycle.test_control import actions, campaign, counts, parse_dag, prepared_campaign, run_send_dag
from tests.campaigns.lifecycle.test_control import send_while as really_send_and
from tests.helpers import sent_messages


@pytest.fixture
def control_dag():
    return parse_dag("campaign_control")


@pytest.fixture(autouse=True)
def slow_rate(settings_env, redis_client):
    settings_env(SES_SENDING_RATE=5, SES_SEND_THREADS=2)


def send_runs():
    """send_campaign runs in Airflow's metadata database: {run_id: (state, conf)}."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return {run.run_id: (run.state, run.conf)
                for run in session.query(DagRun).filter(DagRun.dag_id == "send_campaign")}


def task_states(dag_run):
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def recipients_of(messages):
    return Counter(email.message_from_string(m.raw_data, policy=email.policy.default)["To"].addresses[0].addr_spec
                   for m in messages)


def test_resume_after_a_real_pause_starts_one_send_run_that_sends_only_the_pending(control_dag, dsn, db, ses):
    _, paused, campaign_id = really_send_and(dsn, db, "pause")
    sent_before = counts(db, campaign_id)["sent"]
    assert 0 < sent_before < 40

    control_run = control_dag.test(run_conf={"campaign_id": campaign_id, "action": "resume"})

    assert control_run.state == "success"
    assert task_states(control_run)["start_send_run"] == "success"
    resume = actions(db, campaign_id)[-1]
    assert (resume["action"], resume["actor"], resume["run_id"]) == ("resume", "campaign_control",
                                                                     control_run.run_id)
    assert (resume["old_status"], resume["new_status"]) == ("paused", "running")
    send_run_id = resume["detail"]["trigger_run_id"]
    assert send_run_id.startswith(f"campaign_control__resume__campaign_{campaign_id}__action_{resume['id']}__")
    assert send_runs()[send_run_id] == ("queued", {"campaign_id": campaign_id})
    assert campaign(db, campaign_id)["run_id"] == send_run_id

    send_run = run_send_dag(parse_dag("send_campaign"), {"campaign_id": campaign_id}, send_run_id)

    assert send_run.state == "success"
    assert campaign(db, campaign_id)["status"] == states.SENT
    assert counts(db, campaign_id) == {"sent": 40}
    assert set(recipients_of(sent_messages()).values()) == {1}  # nobody got it twice
    assert len(sent_messages()) == 40
    assert paused.requested_at < resume["requested_at"]


def test_pause_of_a_running_campaign_starts_no_send_run(control_dag, db):
    campaign_id = prepared_campaign(db, states.RUNNING)
    runs_before = send_runs()

    control_run = control_dag.test(run_conf={"campaign_id": campaign_id, "action": "pause"})

    assert control_run.state == "success"
    assert task_states(control_run)["start_send_run"] == "skipped"
    assert send_runs() == runs_before
    assert campaign(db, campaign_id)["status"] == states.PAUSED
    assert campaign(db, campaign_id)["status_reason"] == f"paused by campaign_control (run {control_run.run_id})"
    [action] = actions(db, campaign_id)
    assert (action["action"], action["run_id"]) == ("pause", control_run.run_id)


def test_an_illegal_move_fails_the_run_with_the_reason_and_changes_nothing(control_dag, db):
    campaign_id = prepared_campaign(db, states.CANCELLED)
    before, runs_before = campaign(db, campaign_id), send_runs()

    control_run = control_dag.test(run_conf={"campaign_id": campaign_id, "action": "resume"})

    assert control_run.state == "failed"
    assert task_states(control_run)["apply_action"] == "failed"
    assert task_states(control_run)["start_send_run"] != "success"
    assert campaign(db, campaign_id) == before
    assert actions(db, campaign_id) == []
    assert send_runs() == runs_before


@pytest.mark.parametrize(("name", "value"), [
    ("action", "stop"),
    ("action", None),
    ("campaign_id", "42"),
    ("campaign_id", 0),
    ("campaign_id", None),
])
def test_param_schema_rejects_bad_requests_at_trigger_time(control_dag, name, value):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(control_dag.params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params[name] = value


def test_param_schema_accepts_the_documented_conf(control_dag):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(control_dag.params)
    for action in ("cancel", "pause", "resume", "release"):
        params["campaign_id"] = 42
        params["action"] = action
        assert params.validate() == {"campaign_id": 42, "action": action}
