"""Unknown sends on the Campaigns view: the overview's marker, the campaign page's count and sample with the plain
at-least-once warning before the button, and the audited release_unknown POST (CSRF, Origin, a Viewer refused)."""

from __future__ import annotations

import lxml.html
import pytest

from campaigns import states
from campaigns.lifecycle import stats
from tests.campaigns.lifecycle.test_control import actions, campaign, counts
from tests.campaigns.lifecycle.test_reconcile import sent_campaign_with_unknown
from tests.plugins.test_campaign_actions import act, buttons

RELEASE = "/{id}/actions/release_unknown"


@pytest.fixture
def sent_with_unknown(db, settings):
    return sent_campaign_with_unknown(db, settings)


def page(client, campaign_id):
    return lxml.html.fromstring(client.get(f"/{campaign_id}").text)


def test_the_overview_marks_a_campaign_with_unknown_recipients(analyst, db, sent_with_unknown):
    campaign_id, _ = sent_with_unknown
    stats.refresh(db)  # the list reads the rollups, as refresh_campaign_stats leaves them

    doc = lxml.html.fromstring(analyst.get("/").text)

    [marker] = doc.xpath(f"//tr[@data-campaign-id='{campaign_id}']//*[@data-field='unknown']")
    assert (marker.get("data-value"), marker.text_content().strip()) == ("4", "4 unknown")


def test_the_page_shows_the_unsettled_count_a_sample_and_says_what_releasing_means(analyst, db, sent_with_unknown):
    campaign_id, ids = sent_with_unknown

    doc = page(analyst, campaign_id)

    [count] = doc.xpath("//*[@data-field='unsettled']")
    assert count.get("data-value") == "2"  # the young row and the one SES reported on are not offered
    assert [int(r.get("data-unknown-row")) for r in doc.xpath("//tr[@data-unknown-row]")] == ids[:2]
    [warning] = doc.xpath("//*[@data-at-least-once]")
    said = " ".join(warning.text_content().split())
    assert "Some of these people may already have the email" in said
    assert 'your choice of "at least once" over "at most once" for these 2 recipient(s)' in said
    assert buttons(analyst, campaign_id)["release_unknown"] is False  # a Viewer sees it greyed out


def test_a_campaign_without_old_unknown_rows_shows_no_release(admin, db, sent_with_unknown):
    campaign_id, _ = sent_with_unknown
    db.execute("UPDATE campaign_recipients SET claimed_at = now() WHERE campaign_id = %s", [campaign_id])

    assert not page(admin, campaign_id).xpath("//*[@data-section='unknown']")
    assert "release_unknown" not in buttons(admin, campaign_id)


def test_release_queues_the_send_run_and_records_the_user_and_the_count(admin, db, airflow_dags, dag_run,
                                                                       sent_with_unknown):
    campaign_id, _ = sent_with_unknown

    response = act(admin, campaign_id, RELEASE)

    assert response.status_code == 303
    assert response.headers["location"] == f"/{campaign_id}?done=reopened"
    [row] = actions(db, campaign_id)
    assert (row["action"], row["actor"], row["old_status"], row["new_status"]) == (
        "release_unknown", "ana", "sent", "running")
    assert row["detail"]["released"] == 2
    run_id = row["detail"]["trigger_run_id"]
    assert dag_run(run_id) == ("send_campaign", {"campaign_id": campaign_id}, "ana")
    assert (campaign(db, campaign_id)["status"], campaign(db, campaign_id)["run_id"]) == (states.RUNNING, run_id)
    assert counts(db, campaign_id) == {"pending": 2, "unknown": 2, "sent": 2}
    flash = lxml.html.fromstring(admin.get(response.headers["location"]).text).xpath("//*[@data-flash]")[0]
    assert "Unknown recipients released" in flash.text_content()


def test_a_second_release_is_refused_with_409(admin, db, airflow_dags, sent_with_unknown):
    campaign_id, _ = sent_with_unknown
    token = lxml.html.fromstring(admin.get(f"/{campaign_id}").text).xpath("//input[@name='csrf_token']/@value")[0]
    first = admin.post(RELEASE.format(id=campaign_id), data={"csrf_token": token}, follow_redirects=False)

    again = admin.post(RELEASE.format(id=campaign_id), data={"csrf_token": token}, follow_redirects=False)

    assert first.status_code == 303
    assert again.status_code == 409
    assert "it is running" in lxml.html.fromstring(again.text).xpath("//*[@data-refusal]")[0].text_content()
    assert counts(db, campaign_id) == {"pending": 2, "unknown": 2, "sent": 2}
    assert len(actions(db, campaign_id)) == 1


@pytest.mark.parametrize("client", ["analyst", "admin_without_token", "admin_from_elsewhere"])
def test_a_refused_release_changes_nothing(request, db, sent_with_unknown, client):
    campaign_id, _ = sent_with_unknown
    if client == "analyst":
        response = request.getfixturevalue("analyst").post(RELEASE.format(id=campaign_id), data={"csrf_token": "x"})
    elif client == "admin_without_token":
        response = request.getfixturevalue("admin").post(RELEASE.format(id=campaign_id), data={})
    else:
        admin = request.getfixturevalue("admin")
        token = page(admin, campaign_id).xpath("//input[@name='csrf_token']/@value")[0]
        response = admin.post(RELEASE.format(id=campaign_id), data={"csrf_token": token},
                              headers={"Origin": "https://localhost:8443"})

    assert response.status_code == 403
    assert campaign(db, campaign_id)["status"] == states.SENT
    assert counts(db, campaign_id) == {"unknown": 4, "sent": 2}
    assert actions(db, campaign_id) == []
