"""reconcile_unknown and the release it leads to, with dag.test(): a send task crash leaves rows `unknown`, the
hourly report finds them once the window has passed, and the run that release_unknown names sends exactly them to
moto's SES, ending `sent` with none unknown."""

from __future__ import annotations

from datetime import timedelta

import pytest

from campaigns import states
from campaigns.audience.filters import Audience
from campaigns.lifecycle import control, definitions
from campaigns.sending import ledger
from campaigns.sending.ledger import Attempt
from tests.campaigns.lifecycle.test_control import campaign, counts, run_send_dag
from tests.helpers import add_contacts, inline_campaign, parse_dag, sent_messages


def report_of(dag_run) -> list[dict] | None:
    """The report_unknown task's XCom of the run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, key="return_value", dag_ids=dag_run.dag_id,
                                                 task_ids="report_unknown")).first()
        return XComModel.deserialize_value(row) if row is not None else None


@pytest.fixture
def crashed_while_sending(db):
    """A snapshotted campaign of 5 whose first 2 rows an earlier send attempt claimed and never settled."""
    add_contacts(db, [f"u{i}@example.org" for i in range(5)])
    campaign_id = definitions.upsert_campaign(db, definitions.CampaignDefinition.parse(inline_campaign()))["id"]
    ledger.snapshot(db, campaign_id, Audience.parse({"lists": ["newsletter"]}), page_size=500)
    rows = db.execute("SELECT id, email FROM campaign_recipients WHERE campaign_id = %s ORDER BY id",
                      [campaign_id]).fetchall()
    crashed = Attempt(run_id="manual__crashed", map_index=0, try_number=1)
    for row in rows[:2]:
        assert ledger.claim(db, row["id"], row["email"], crashed) == "sending"
    return campaign_id, rows


def test_unknown_rows_are_reported_after_the_window_and_released_rows_are_sent_once(db, ses, fast_rate,
                                                                                     crashed_while_sending):
    campaign_id, rows = crashed_while_sending
    first = run_send_dag(parse_dag("send_campaign"), {"campaign_id": campaign_id})

    assert first.state == "success"
    assert counts(db, campaign_id) == {"sent": 3, "unknown": 2}  # the crashed claims are never resent by themselves
    done = campaign(db, campaign_id)
    assert done["status"] == states.SENT
    assert done["status_reason"].startswith("2 recipient(s) unknown: SES's answer was lost")
    assert (done["summary"]["unknown"], done["summary"]["status_reason"]) == (2, done["status_reason"])
    assert len(sent_messages()) == 3

    reconcile_dag = parse_dag("reconcile_unknown")
    young = reconcile_dag.test()
    assert (young.state, report_of(young)) == ("success", [])  # within the window SES may still report them
    db.execute("UPDATE campaign_recipients SET claimed_at = claimed_at - interval '25 hours' "
               "WHERE campaign_id = %s AND status = 'unknown'", [campaign_id])
    old = reconcile_dag.test()
    [reported] = report_of(old)
    assert (reported["campaign_id"], reported["unknown"], reported["sample_ids"]) == (
        campaign_id, 2, [rows[0]["id"], rows[1]["id"]])

    result = control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana",
                                  unknown_window=timedelta(hours=24))
    second = run_send_dag(parse_dag("send_campaign"), result.as_xcom()["send_conf"], result.trigger_run_id)

    assert second.state == "success"
    assert counts(db, campaign_id) == {"sent": 5}
    assert len(sent_messages()) == 5  # exactly the two released rows went out again, nobody else
    final = campaign(db, campaign_id)
    assert (final["status"], final["status_reason"], final["run_id"]) == (states.SENT, None, result.trigger_run_id)
    assert (final["summary"]["unknown"], final["summary"]["sent"], final["summary"]["recipients"]) == (0, 5, 5)
    assert final["finished_at"] > result.requested_at
    resent = db.execute("SELECT id FROM campaign_recipients WHERE campaign_id = %s AND sent_at > %s ORDER BY id",
                        [campaign_id, result.requested_at]).fetchall()
    assert [row["id"] for row in resent] == [rows[0]["id"], rows[1]["id"]]
    assert report_of(reconcile_dag.test()) == []
