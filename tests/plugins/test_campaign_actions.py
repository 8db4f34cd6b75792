"""Actions on the Campaigns view: who may act, the CSRF and Origin checks, what each action changes and records,
the DAG runs it queues in Airflow's metadata database, and the live progress a running campaign's page polls.

The forms' tokens are read from the page as a browser would submit them.
"""

from __future__ import annotations

import lxml.html
import pytest

from campaigns import states
from campaigns.lifecycle import control
from tests.campaigns.lifecycle.test_control import actions, campaign, prepared_campaign

POSTS = ["/{id}/actions/pause", "/{id}/actions/resume", "/{id}/actions/cancel", "/{id}/actions/release",
         "/{id}/actions/release_unknown",
         "/{id}/actions/start", "/{id}/test-send", "/{id}/duplicate"]


def token_on_page(client, campaign_id: int) -> str:
    doc = lxml.html.fromstring(client.get(f"/{campaign_id}").text)
    tokens = set(doc.xpath("//input[@name='csrf_token']/@value"))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def act(client, campaign_id: int, path: str, **form):
    token = token_on_page(client, campaign_id)
    return client.post(path.format(id=campaign_id), data={"csrf_token": token, **form}, follow_redirects=False)


def buttons(client, campaign_id: int) -> dict[str, bool]:
    """The action buttons on the page: {action: enabled}."""
    doc = lxml.html.fromstring(client.get(f"/{campaign_id}").text)
    return {b.get("data-action"): b.get("disabled") is None for b in doc.xpath("//button[@data-action]")}


# ---- who may act ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", POSTS)
def test_a_viewer_sees_the_view_but_every_action_is_refused_with_403(analyst, db, path):
    campaign_id = prepared_campaign(db, states.PAUSED)
    before = campaign(db, campaign_id)
    assert analyst.get(f"/{campaign_id}").status_code == 200

    response = analyst.post(path.format(id=campaign_id), data={"csrf_token": "x", "recipients": "me@example.com"})

    assert response.status_code == 403
    assert campaign(db, campaign_id) == before
    assert actions(db, campaign_id) == []


def test_a_viewer_gets_no_usable_buttons_and_no_token(analyst, db):
    campaign_id = prepared_campaign(db, states.PAUSED)
    shown = buttons(analyst, campaign_id)
    assert set(shown) == {"resume", "cancel", "duplicate", "test-send"}
    assert not any(shown.values())
    doc = lxml.html.fromstring(analyst.get(f"/{campaign_id}").text)
    assert set(doc.xpath("//input[@name='csrf_token']/@value")) == {""}
    assert doc.xpath("//*[@data-readonly]")


@pytest.mark.parametrize("path", POSTS)
def test_anonymous_posts_get_401(view, db, path):
    campaign_id = prepared_campaign(db, states.PAUSED)
    assert view.post(path.format(id=campaign_id), data={"csrf_token": "x"}).status_code == 401


@pytest.mark.parametrize("path", POSTS)
def test_a_post_without_the_users_csrf_token_gets_403(admin, db, token_for, path):
    campaign_id = prepared_campaign(db, states.PAUSED)
    from campaigns_view import guard

    for form in ({}, {"csrf_token": "0" * 64}, {"csrf_token": guard.csrf_token("somebody-else")}):
        response = admin.post(path.format(id=campaign_id), data={**form, "recipients": "me@example.com"})
        assert response.status_code == 403, form
        assert "CSRF token" in response.text
    assert campaign(db, campaign_id)["status"] == states.PAUSED
    assert actions(db, campaign_id) == []


@pytest.mark.parametrize("headers", [{"Origin": "https://localhost:8443"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"}])
def test_a_post_from_another_origin_gets_403_even_with_the_token(admin, db, headers):
    campaign_id = prepared_campaign(db, states.RUNNING)
    token = token_on_page(admin, campaign_id)

    response = admin.post(f"/{campaign_id}/actions/pause", data={"csrf_token": token}, headers=headers)

    assert response.status_code == 403
    assert campaign(db, campaign_id)["status"] == states.RUNNING
    assert actions(db, campaign_id) == []


def test_a_post_from_the_views_own_origin_is_accepted(admin, db):
    campaign_id = prepared_campaign(db, states.RUNNING)
    token = token_on_page(admin, campaign_id)
    response = admin.post(f"/{campaign_id}/actions/pause", data={"csrf_token": token},
                          headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
                          follow_redirects=False)
    assert response.status_code == 303


# ---- each action ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "action", "after"), [
    (states.RUNNING, "pause", states.PAUSED),
    (states.PAUSED, "cancel", states.CANCELLED),
])
def test_pause_and_cancel_move_the_campaign_and_record_the_user(admin, db, status, action, after):
    campaign_id = prepared_campaign(db, status)

    response = act(admin, campaign_id, f"/{{id}}/actions/{action}")

    assert response.status_code == 303
    done = control.ACTIONS[action].done
    assert response.headers["location"] == f"/{campaign_id}?done={done}"
    assert campaign(db, campaign_id)["status"] == after
    [row] = actions(db, campaign_id)
    assert (row["action"], row["actor"], row["old_status"], row["new_status"]) == (action, "ana", status, after)
    page = admin.get(response.headers["location"])
    assert f"Campaign {done}." in lxml.html.fromstring(page.text).xpath("//*[@data-flash]")[0].text_content()


@pytest.mark.parametrize(("status", "action"), [(states.PAUSED, "resume"), (states.HELD, "release"),
                                                (states.DRAFT, "start"), (states.SCHEDULED, "start")])
def test_resume_release_and_start_queue_the_send_run_that_apply_action_named(admin, db, airflow_dags, dag_run,
                                                                             status, action):
    campaign_id = prepared_campaign(db, status)

    response = act(admin, campaign_id, f"/{{id}}/actions/{action}")

    assert response.status_code == 303
    [row] = actions(db, campaign_id)
    assert (row["action"], row["actor"], row["old_status"]) == (action, "ana", status)
    run_id = row["detail"]["trigger_run_id"]
    assert campaign(db, campaign_id)["run_id"] == run_id
    assert dag_run(run_id) == ("send_campaign", {"campaign_id": campaign_id}, "ana")
    expected = states.RUNNING if action != "start" else status  # a start leaves the move to its send run
    assert campaign(db, campaign_id)["status"] == expected


def test_an_illegal_move_is_refused_with_409_and_the_reason(admin, db):
    campaign_id = prepared_campaign(db, states.SENT)

    response = act(admin, campaign_id, "/{id}/actions/cancel")

    assert response.status_code == 409
    reason = lxml.html.fromstring(response.text).xpath("//*[@data-refusal]")[0].text_content()
    assert reason == (f"cannot cancel campaign {campaign_id} ('nov-news'): it is sent; a sent, failed or cancelled "
                      "campaign is finished")
    assert actions(db, campaign_id) == []


def test_only_the_actions_the_state_allows_are_offered(admin, db):
    paused = prepared_campaign(db, states.PAUSED)
    assert buttons(admin, paused) == {"resume": True, "cancel": True, "duplicate": True, "test-send": True}
    db.execute("UPDATE campaigns SET status = 'sent' WHERE id = %s", [paused])
    assert buttons(admin, paused) == {"duplicate": True, "test-send": True}


def test_a_test_send_queues_send_test_email_with_its_documented_conf_and_records_it(admin, db, airflow_dags,
                                                                                    dag_run):
    campaign_id = prepared_campaign(db, states.DRAFT)

    response = act(admin, campaign_id, "/{id}/test-send", recipients="Me@Example.com\nqa@example.net, me@example.com",
                   sample_values="first_name: Ana\ncity: Graz")

    assert response.status_code == 303
    assert response.headers["location"] == f"/{campaign_id}?done=test_sent"
    [row] = actions(db, campaign_id)
    assert (row["action"], row["actor"]) == ("test_send", "ana")
    assert row["detail"]["recipients"] == ["Me@Example.com", "qa@example.net"]
    assert dag_run(row["detail"]["test_run_id"]) == ("send_test_email", {
        "campaign_id": campaign_id, "recipients": ["Me@Example.com", "qa@example.net"],
        "sample_values": {"first_name": "Ana", "city": "Graz"}}, "ana")
    assert campaign(db, campaign_id)["status"] == states.DRAFT


def test_test_send_results_are_listed_newest_first(admin, db):
    campaign_id = prepared_campaign(db, states.DRAFT)
    for email, status, at in (("old@example.com", "sent", "2026-01-01"), ("new@example.com", "failed", "2026-02-01")):
        db.execute("INSERT INTO test_sends (campaign_id, email, status, ses_message_id, error, sent_at) "
                   "VALUES (%s, %s, %s, %s, %s, %s)", [campaign_id, email, status,
                                                       "m-1" if status == "sent" else None,
                                                       "rejected" if status == "failed" else None, at])
    doc = lxml.html.fromstring(admin.get(f"/{campaign_id}").text)
    rows = [[td.text_content() for td in tr.xpath("./td")] for tr in doc.xpath("//tr[@data-test-send]")]
    assert [(r[1], r[2], r[3]) for r in rows] == [("new@example.com", "failed", "rejected"),
                                                  ("old@example.com", "sent", "m-1")]


@pytest.mark.parametrize(("recipients", "message"), [
    ("", "recipients must be a list of 1 to 20 email addresses"),
    ("\n".join(f"t{i}@example.com" for i in range(21)), "at most 20 test recipients per run, got 21"),
    ("not-an-address", "invalid test recipients"),
])
def test_a_bad_test_send_is_refused_naming_the_field_and_nothing_is_queued(admin, db, recipients, message):
    campaign_id = prepared_campaign(db, states.DRAFT)

    response = act(admin, campaign_id, "/{id}/test-send", recipients=recipients)

    assert response.status_code == 400
    assert message in response.text
    assert actions(db, campaign_id) == []


def test_duplicate_redirects_to_the_new_draft_with_the_next_copy_key(admin, db):
    campaign_id = prepared_campaign(db, states.SENT)

    first = act(admin, campaign_id, "/{id}/duplicate")
    second = act(admin, campaign_id, "/{id}/duplicate")

    keys = db.execute("SELECT id, key, status FROM campaigns WHERE id <> %s ORDER BY id", [campaign_id]).fetchall()
    assert [(k["key"], k["status"]) for k in keys] == [("nov-news-copy", "draft"), ("nov-news-copy-2", "draft")]
    assert first.headers["location"] == f"/{keys[0]['id']}?done=duplicated"
    assert second.headers["location"] == f"/{keys[1]['id']}?done=duplicated"
    assert [a["actor"] for a in actions(db, keys[0]["id"])] == ["ana"]
    assert len(actions(db, campaign_id)) == 2


# ---- progress ------------------------------------------------------------------------------------------------------

def test_progress_json_equals_the_database(analyst, db):
    campaign_id = prepared_campaign(db, states.RUNNING)
    db.execute("UPDATE campaign_recipients SET status = 'sent', ses_message_id = 'm-' || id "
               "WHERE campaign_id = %s AND id IN (SELECT id FROM campaign_recipients WHERE campaign_id = %s "
               "ORDER BY id LIMIT 2)", [campaign_id, campaign_id])

    progress = analyst.get(f"/{campaign_id}/progress.json")

    assert progress.status_code == 200
    assert progress.headers["cache-control"] == "no-store"
    body = progress.json()
    row = campaign(db, campaign_id)
    assert (body["status"], body["run_id"], body["status_reason"]) == (row["status"], row["run_id"],
                                                                       row["status_reason"])
    in_db = {r["status"]: r["n"] for r in db.execute(
        "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s GROUP BY status",
        [campaign_id])}
    assert {k: v for k, v in body["counts"].items() if k in states.Row.ALL and v} == in_db == {"sent": 2,
                                                                                                "pending": 4}
    assert body["counts"]["recipients"] == 6
    doc = lxml.html.fromstring(analyst.get(f"/{campaign_id}").text)
    live = {td.get("data-live"): int(td.text_content()) for td in doc.xpath("//*[@data-live]")}
    assert live == {k: v for k, v in body["counts"].items() if k != "skipped_by_reason"}


def test_progress_of_an_unknown_campaign_is_404(analyst, db):
    assert analyst.get("/999/progress.json").status_code == 404


def test_a_draft_says_how_to_send_it_for_real_and_a_sent_campaign_does_not(admin, db):
    campaign_id = prepared_campaign(db, states.DRAFT)

    hint = lxml.html.fromstring(admin.get(f"/{campaign_id}").text).xpath("//*[@data-next-step]")
    assert len(hint) == 1
    assert "Start" in hint[0].text_content()
    assert f"campaign id {campaign_id}" in hint[0].text_content()
    db.execute("UPDATE campaigns SET status = 'sent' WHERE id = %s", [campaign_id])
    assert lxml.html.fromstring(admin.get(f"/{campaign_id}").text).xpath("//*[@data-next-step]") == []
