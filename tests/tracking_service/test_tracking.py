"""The tracking endpoints against real PostgreSQL and a spool in a temporary folder: pixel, click, one-click
unsubscribe, drain."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from campaigns.config import ConfigError
from campaigns.feedback.links import register_links
from devstack.processes import poll
from tests.helpers import add_contacts
from tracking_service import create_app, tracking
from tracking_service.drainer import backlog, drain_once
from tracking_service.spool import Spool
from tracking_service.spool_format import encode_event, segments

LINKS = ["https://example.com/offer", "http://example.org/a?b=1&c=%20d"]
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def _campaign(conn, key: str, links: list[str], emails: list[str], *, sent_seconds_ago: float = 3600.0):
    """A campaign with links and one sent ledger row per address; returns (campaign_id, [recipient ids])."""
    campaign_id = conn.execute(
        """INSERT INTO campaigns (key, name, subject, from_email, html, audience, status)
           VALUES (%s, %s, 'Hi', 'news@example.com', '<p>x</p>', %s, 'running') RETURNING id""",
        [key, key, Jsonb({"lists": ["newsletter"]})]).fetchone()["id"]
    contact_ids = add_contacts(conn, emails)
    recipient_ids = []
    for contact_id, email in zip(contact_ids, emails, strict=True):
        recipient_ids.append(conn.execute(
            """INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, ses_message_id, sent_at)
               VALUES (%s, %s, %s, 'sent', %s, now() - make_interval(secs => %s)) RETURNING id""",
            [campaign_id, contact_id, email, f"ses-{key}-{email}", sent_seconds_ago]).fetchone()["id"])
    register_links(conn, campaign_id, links)
    return campaign_id, recipient_ids


@pytest.fixture
def campaign(db):
    return _campaign(db, "nov-news", LINKS, ["Ann@Example.com", "bob@example.com"])


def _events(conn, type_: str | None = None):
    if type_ is None:
        return conn.execute("SELECT * FROM email_events ORDER BY id").fetchall()
    return conn.execute("SELECT * FROM email_events WHERE type = %s ORDER BY id", [type_]).fetchall()


def _drain(spool_dir, db) -> int:
    return drain_once(spool_dir, db)


def _spooled(spool_dir) -> int:
    """Bytes in the spool's segments: 0 when a request buffered nothing."""
    return sum(path.stat().st_size for path in segments(spool_dir))


def _state(conn) -> tuple:
    """Everything an unsubscribe or a bad request could change."""
    return (
        conn.execute("SELECT count(*) AS n FROM email_events").fetchone()["n"],
        conn.execute("SELECT count(*) AS n FROM suppressions").fetchone()["n"],
        conn.execute("SELECT count(*) AS n FROM list_members WHERE status = 'unsubscribed'").fetchone()["n"],
    )


# ---- open pixel -----------------------------------------------------------------------------------------------

def _assert_pixel(response):
    assert response.status_code == 200
    assert response.mimetype == "image/gif"
    assert len(response.data) == 43
    assert response.data.startswith(b"GIF89a")
    assert "no-store" in response.headers["Cache-Control"]
    assert "no-cache" in response.headers["Cache-Control"]
    assert response.headers["Pragma"] == "no-cache"
    assert "Set-Cookie" not in response.headers


def test_pixel_records_open_for_valid_token(client, codec, campaign, db, spool_dir):
    campaign_id, (ann, _) = campaign
    response = client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif", headers={"User-Agent": HUMAN_UA},
                          environ_base={"REMOTE_ADDR": "203.0.113.9"})
    _assert_pixel(response)
    assert _drain(spool_dir, db) == 1
    [event] = _events(db)
    assert (event["type"], event["campaign_id"], event["recipient_id"]) == ("open", campaign_id, ann)
    assert event["email"] == "Ann@Example.com"
    assert str(event["ip"]) == "203.0.113.9"
    assert event["user_agent"] == HUMAN_UA
    assert event["is_machine"] is False
    assert event["occurred_at"] is not None


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # tampered signature
    lambda t: t[:-6],  # truncated
    lambda t: "x' OR '1'='1",  # SQL metacharacters
    lambda t: "1;DROP TABLE email_events--",
])
def test_pixel_returns_gif_but_records_nothing_for_bad_token(client, codec, campaign, db, spool_dir, mutate):
    campaign_id, (ann, _) = campaign
    before = _state(db)
    _assert_pixel(client.get(f"/o/{mutate(codec.open_token(campaign_id, ann))}.gif"))
    assert _spooled(spool_dir) == 0
    _drain(spool_dir, db)
    assert _state(db) == before


def test_pixel_rejects_click_token_of_same_ids(client, codec, campaign, db, spool_dir):
    campaign_id, (ann, _) = campaign
    _assert_pixel(client.get(f"/o/{codec.click_token(campaign_id, ann, 0)}.gif"))
    assert _spooled(spool_dir) == 0


@pytest.mark.parametrize(("ip", "ua", "reason"), [
    ("17.58.100.1", HUMAN_UA, "apple_proxy_ip"),
    ("198.51.100.7", "Mozilla/5.0", "apple_proxy_user_agent"),
])
def test_apple_privacy_proxy_open_is_flagged_machine_not_dropped(client, codec, campaign, db, spool_dir, ip, ua,
                                                                 reason):
    campaign_id, (ann, _) = campaign
    client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif", headers={"User-Agent": ua},
               environ_base={"REMOTE_ADDR": ip})
    _drain(spool_dir, db)
    [event] = _events(db)
    assert event["is_machine"] is True
    assert reason in event["payload"]["machine_reasons"]


# ---- click redirect -------------------------------------------------------------------------------------------

def test_click_redirects_to_exact_campaign_link_and_records_click_and_implied_open(client, codec, campaign, db,
                                                                                    spool_dir):
    campaign_id, (ann, _) = campaign
    response = client.get(f"/c/{codec.click_token(campaign_id, ann, 1)}", headers={"User-Agent": HUMAN_UA})
    assert response.status_code == 302
    assert response.headers["Location"] == LINKS[1]
    assert _drain(spool_dir, db) == 1
    [click] = _events(db, "click")
    assert (click["campaign_id"], click["recipient_id"], click["link_id"]) == (campaign_id, ann, 1)
    assert click["is_machine"] is False
    [opened] = _events(db, "open")
    assert opened["subtype"] == "implied_by_click"
    assert opened["recipient_id"] == ann


def test_click_after_recorded_open_adds_no_implied_open(client, codec, campaign, db, spool_dir):
    campaign_id, (ann, _) = campaign
    client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif", headers={"User-Agent": HUMAN_UA})
    client.get(f"/c/{codec.click_token(campaign_id, ann, 0)}", headers={"User-Agent": HUMAN_UA})
    client.get(f"/c/{codec.click_token(campaign_id, ann, 1)}", headers={"User-Agent": HUMAN_UA})
    _drain(spool_dir, db)
    assert [e["subtype"] for e in _events(db, "open")] == [None]
    assert len(_events(db, "click")) == 2


def test_second_click_adds_no_second_implied_open(client, codec, campaign, db, spool_dir):
    campaign_id, (ann, _) = campaign
    client.get(f"/c/{codec.click_token(campaign_id, ann, 0)}", headers={"User-Agent": HUMAN_UA})
    _drain(spool_dir, db)
    client.get(f"/c/{codec.click_token(campaign_id, ann, 1)}", headers={"User-Agent": HUMAN_UA})
    _drain(spool_dir, db)
    assert len(_events(db, "open")) == 1


@pytest.mark.parametrize(("method", "ua", "reason"), [
    ("HEAD", HUMAN_UA, "head_request"),
    ("GET", "Mozilla/5.0 (compatible; Barracuda Sentinel)", "scanner_user_agent"),
    ("GET", "python-requests/2.32", "scanner_user_agent"),
])
def test_scanner_clicks_are_flagged_machine(client, codec, campaign, db, spool_dir, method, ua, reason):
    campaign_id, (ann, _) = campaign
    response = client.open(f"/c/{codec.click_token(campaign_id, ann, 0)}", method=method, headers={"User-Agent": ua})
    assert response.status_code == 302
    assert response.headers["Location"] == LINKS[0]
    _drain(spool_dir, db)
    [click] = _events(db, "click")
    assert click["is_machine"] is True
    assert reason in click["payload"]["machine_reasons"]
    [implied] = _events(db, "open")
    assert implied["is_machine"] is True


def test_click_within_seconds_of_send_is_flagged_machine(client, codec, db, spool_dir):
    campaign_id, (fresh,) = _campaign(db, "fresh", LINKS, ["fresh@example.com"], sent_seconds_ago=2)
    client.get(f"/c/{codec.click_token(campaign_id, fresh, 0)}", headers={"User-Agent": HUMAN_UA})
    _drain(spool_dir, db)
    [click] = _events(db, "click")
    assert click["is_machine"] is True
    assert "within_seconds_of_send" in click["payload"]["machine_reasons"]


def test_click_token_for_link_of_another_campaign_is_404_without_redirect(client, codec, campaign, db,
                                                                          spool_dir):
    other_id, (carl,) = _campaign(db, "other", ["https://other.example.net/"], ["carl@example.com"])
    # link 1 exists only in the first campaign; the other campaign has link 0 only
    response = client.get(f"/c/{codec.click_token(other_id, carl, 1)}")
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert _spooled(spool_dir) == 0


def test_click_for_unknown_campaign_is_404(client, codec, db, spool_dir):
    response = client.get(f"/c/{codec.click_token(987654, 1, 0)}")
    assert response.status_code == 404
    assert "Location" not in response.headers


@pytest.mark.parametrize("bad", [
    "tampered", "truncated", "x' OR '1'='1", "%27%3B--", "1%20UNION%20SELECT%201", "open-token",
])
def test_bad_click_tokens_are_404_and_change_nothing(client, codec, campaign, db, spool_dir, bad):
    campaign_id, (ann, _) = campaign
    good = codec.click_token(campaign_id, ann, 0)
    token = {"tampered": good[:-1] + ("A" if good[-1] != "A" else "B"), "truncated": good[:-5],
             "open-token": codec.open_token(campaign_id, ann)}.get(bad, bad)
    before = _state(db)
    response = client.get(f"/c/{token}")
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert _spooled(spool_dir) == 0
    assert _state(db) == before


def test_register_links_is_idempotent_and_refuses_non_http(db):
    campaign_id, _ = _campaign(db, "links", LINKS, [])
    assert register_links(db, campaign_id, LINKS) == 0
    rows = db.execute("SELECT link_id, url FROM campaign_links WHERE campaign_id = %s ORDER BY link_id",
                      [campaign_id]).fetchall()
    assert [(r["link_id"], r["url"]) for r in rows] == list(enumerate(LINKS))
    for bad in ("javascript:alert(1)", "mailto:a@example.com", "//evil.example", "https://x.example/\r\nSet-Cookie:"):
        with pytest.raises(ValueError, match="http"):
            register_links(db, campaign_id, [*LINKS, bad])


# ---- unsubscribe ----------------------------------------------------------------------------------------------

def test_unsubscribe_get_shows_form_and_changes_nothing(client, codec, campaign, db):
    campaign_id, (ann, _) = campaign
    before = _state(db)
    response = client.get(f"/u/{codec.unsubscribe_token(campaign_id, ann)}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<form method="post"' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "A***@Example.com" in page
    assert "<button" in page
    assert "http://" not in page
    assert "https://" not in page
    assert _state(db) == before


def _assert_unsubscribed(db, campaign_id, recipient_id, email="ann@example.com"):
    [suppression] = db.execute("SELECT * FROM suppressions").fetchall()
    assert (suppression["email"], suppression["reason"], suppression["source"]) == (email, "unsubscribe",
                                                                                    "one_click")
    statuses = db.execute("""SELECT lm.status FROM list_members lm JOIN contacts c ON c.id = lm.contact_id
                              WHERE lower(c.email) = %s""", [email]).fetchall()
    assert statuses
    assert {s["status"] for s in statuses} == {"unsubscribed"}
    [event] = _events(db, "unsubscribe")
    assert (event["campaign_id"], event["recipient_id"]) == (campaign_id, recipient_id)
    other = db.execute("SELECT lm.status FROM list_members lm JOIN contacts c ON c.id = lm.contact_id "
                       "WHERE lower(c.email) <> %s", [email]).fetchall()
    assert {s["status"] for s in other} <= {"subscribed"}


@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_one_click_post_unsubscribes_with_200_no_redirect_no_cookie(client, codec, campaign, db, encoding):
    campaign_id, (ann, _) = campaign
    url = f"/u/{codec.unsubscribe_token(campaign_id, ann)}"
    if encoding == "form":
        response = client.post(url, data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
    else:
        response = client.post(url, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data")
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert "Set-Cookie" not in response.headers
    assert "unsubscribed" in response.get_data(as_text=True)
    _assert_unsubscribed(db, campaign_id, ann)


def test_confirmation_page_button_unsubscribes(client, codec, campaign, db):
    campaign_id, (ann, _) = campaign
    url = f"/u/{codec.unsubscribe_token(campaign_id, ann)}"
    response = client.post(url, data={"List-Unsubscribe": "One-Click", "source": "page"})
    assert response.status_code == 200
    _assert_unsubscribed(db, campaign_id, ann)
    assert _events(db, "unsubscribe")[0]["subtype"] == "confirm_page"


def test_one_click_post_twice_is_idempotent(client, codec, campaign, db):
    campaign_id, (ann, _) = campaign
    url = f"/u/{codec.unsubscribe_token(campaign_id, ann)}"
    for _ in range(2):
        response = client.post(url, data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    _assert_unsubscribed(db, campaign_id, ann)


def test_post_without_one_click_body_changes_nothing(client, codec, campaign, db):
    campaign_id, (ann, _) = campaign
    before = _state(db)
    response = client.post(f"/u/{codec.unsubscribe_token(campaign_id, ann)}", data={"foo": "bar"})
    assert response.status_code == 400
    assert _state(db) == before


@pytest.mark.parametrize("bad", ["tampered", "truncated", "x' OR '1'='1", "1;DELETE FROM suppressions", "other-kind",
                                 "unknown-recipient"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_unsubscribe_tokens_show_error_page_and_change_nothing(client, codec, campaign, db, bad, method):
    campaign_id, (ann, _) = campaign
    good = codec.unsubscribe_token(campaign_id, ann)
    token = {"tampered": good[:-1] + ("A" if good[-1] != "A" else "B"), "truncated": good[:-4],
             "other-kind": codec.open_token(campaign_id, ann),
             "unknown-recipient": codec.unsubscribe_token(campaign_id, 999_999)}.get(bad, bad)
    before = _state(db)
    response = client.open(f"/u/{token}", method=method, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "not valid" in response.get_data(as_text=True)
    assert "Location" not in response.headers
    assert _state(db) == before


# ---- drain: durability and idempotency (more in test_spool.py) ------------------------------------------------

def test_buffered_events_appear_in_postgres_after_drain_once(client, codec, campaign, db, spool_dir):
    campaign_id, recipients = campaign
    for recipient_id in recipients:
        for _ in range(3):
            client.get(f"/o/{codec.open_token(campaign_id, recipient_id)}.gif", headers={"User-Agent": HUMAN_UA})
    assert _events(db) == []
    assert drain_once(spool_dir, db, batch=4) == 4
    assert drain_once(spool_dir, db, batch=4) == 2
    assert drain_once(spool_dir, db, batch=4) == 0
    assert len(_events(db, "open")) == 6
    assert backlog(spool_dir, db) == 0


def test_opens_and_cached_clicks_are_taken_during_a_database_outage_and_stored_once_it_is_back(
        client, codec, campaign, db, spool_dir, monkeypatch):
    campaign_id, (ann, bob) = campaign
    client.get(f"/c/{codec.click_token(campaign_id, ann, 0)}", headers={"User-Agent": HUMAN_UA})  # caches link 0
    assert _drain(spool_dir, db) == 1
    # PostgreSQL "down" for the request path and for the drainer alike
    monkeypatch.setattr(tracking, "get_db", _failing_db)
    monkeypatch.setattr("tracking_service.drainer._insert", _failing_insert)
    before = _spooled(spool_dir)
    _assert_pixel(client.get(f"/o/{codec.open_token(campaign_id, bob)}.gif", headers={"User-Agent": HUMAN_UA}))
    response = client.get(f"/c/{codec.click_token(campaign_id, bob, 0)}", headers={"User-Agent": HUMAN_UA})
    assert (response.status_code, response.headers["Location"]) == (302, LINKS[0])
    assert _spooled(spool_dir) > before
    with pytest.raises(psycopg.OperationalError):
        drain_once(spool_dir, db)
    monkeypatch.undo()
    assert _drain(spool_dir, db) == 2
    assert sorted((e["type"], e["subtype"] or "", e["recipient_id"]) for e in _events(db) if e["recipient_id"] == bob) \
        == [("click", "", bob), ("open", "", bob)]
    assert backlog(spool_dir, db) == 0


def _failing_insert(conn, events):
    raise psycopg.OperationalError("connection to server lost")


def test_events_of_deleted_campaign_are_settled_not_stuck(client, codec, campaign, db, spool_dir):
    campaign_id, (ann, _) = campaign
    client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif")
    db.execute("DELETE FROM campaigns WHERE id = %s", [campaign_id])
    assert _drain(spool_dir, db) == 1
    assert _events(db) == []
    assert backlog(spool_dir, db) == 0


def test_pixel_and_click_still_answer_when_the_spool_refuses_the_write(client, codec, campaign, db, spool_dir,
                                                                     monkeypatch, caplog):
    campaign_id, (ann, _) = campaign

    def disk_full(self, line):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Spool, "append", disk_full)
    _assert_pixel(client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif"))
    response = client.get(f"/c/{codec.click_token(campaign_id, ann, 0)}")
    assert response.status_code == 302
    assert response.headers["Location"] == LINKS[0]
    assert f"open of campaign {campaign_id} recipient {ann} not recorded: the spool refused it" in caplog.text
    assert f"click of campaign {campaign_id} recipient {ann} not recorded: the spool refused it" in caplog.text


def test_a_short_write_ends_the_segment_and_its_torn_line_is_kept_as_a_reject(client, codec, campaign, db, spool_dir,
                                                                            monkeypatch):
    campaign_id, (ann, bob) = campaign
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))  # the disk filled up mid-line
    _assert_pixel(client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif"))
    monkeypatch.undo()
    _assert_pixel(client.get(f"/o/{codec.open_token(campaign_id, bob)}.gif"))  # a new segment, not glued on
    while _drain(spool_dir, db):
        pass
    assert [e["recipient_id"] for e in _events(db)] == [bob]
    [reject] = db.execute("SELECT line, error FROM tracking_spool_rejects").fetchall()
    assert (len(reject["line"]), reject["error"]) == (10, "incomplete or oversized spool line")


def test_drain_command_empties_the_spool(client, codec, campaign, db, spool_dir, capsys):
    from tracking_service import drain

    campaign_id, (ann, _) = campaign
    client.get(f"/o/{codec.open_token(campaign_id, ann)}.gif")
    assert drain.main(["--spool-dir", str(spool_dir)]) == 0
    assert f"settled 1 lines; 0 bytes left in {spool_dir}" in capsys.readouterr().out
    assert len(_events(db)) == 1


def test_drainer_thread_runs_from_app_creation_and_stores_what_the_worker_spools(settings, db, spool_dir, codec):
    campaign_id, (ann,) = _campaign(db, "thread", LINKS, ["t@example.com"])
    app = create_app({"TESTING": True, "TRACKING_DRAINER": True, "TRACKING_SPOOL_DIR": spool_dir})
    drainer = app.extensions["tracking_drainer"]
    try:
        assert drainer.is_alive()  # before any request: a restarted worker drains what it left at once
        app.test_client().get(f"/o/{codec.open_token(campaign_id, ann)}.gif")
        poll(lambda: _events(db), what="the open drained by the worker's thread", timeout=10, interval=0.05)
        assert len(_events(db)) == 1
    finally:
        drainer.stop()
        drainer.join(5)
        app.extensions["tracking_spool"].close()


def test_drain_command_refuses_a_spool_dir_that_does_not_exist(tmp_path, capsys):
    from tracking_service import drain

    assert drain.main(["--spool-dir", str(tmp_path / "typo")]) == 2
    assert f"error: TRACKING_SPOOL_DIR {tmp_path / 'typo'} does not exist or is not a folder" in capsys.readouterr().err


def test_drain_follow_stores_lines_as_they_come_and_stops_on_sigterm(settings, db, spool_dir):
    import signal
    import subprocess
    import sys

    campaign_id, (ann, bob) = _campaign(db, "follow", LINKS, ["f1@example.com", "f2@example.com"])
    spool_dir.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'include'}"}
    follower = subprocess.Popen([sys.executable, "-m", "tracking_service.drain", "--follow", "--spool-dir",
                                 str(spool_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        writer = Spool(spool_dir)
        try:
            for recipient_id in (ann, bob):
                writer.append(encode_event(type="open", campaign_id=campaign_id,
                                           recipient_id=recipient_id))
                poll(lambda rid=recipient_id: [e for e in _events(db) if e["recipient_id"] == rid],
                     what="the line stored by drain --follow", timeout=20, interval=0.05)
        finally:
            writer.close()
        follower.send_signal(signal.SIGTERM)
        out, _ = follower.communicate(timeout=20)
    finally:
        follower.kill()
        follower.wait(10)
    assert follower.returncode == 0
    assert f"settled 2 lines; 0 bytes left in {spool_dir}" in out


def test_click_on_an_uncached_link_while_the_database_is_down_is_503_not_a_redirect(client, codec, campaign,
                                                                                    monkeypatch, spool_dir):
    campaign_id, (ann, _) = campaign
    monkeypatch.setattr(tracking, "get_db", _failing_db)
    response = client.get(f"/c/{codec.click_token(campaign_id, ann, 0)}")
    assert response.status_code == 503
    assert "Location" not in response.headers
    assert response.headers["Retry-After"] == "60"
    assert _spooled(spool_dir) == 0


def _failing_db():
    raise psycopg.OperationalError("connection refused")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TRACKING_SPOOL_SEGMENT_BYTES", "16MB", "TRACKING_SPOOL_SEGMENT_BYTES must be a whole number, got '16MB'"),
    ("TRACKING_SPOOL_FSYNC_SECONDS", "often", "TRACKING_SPOOL_FSYNC_SECONDS must be a number, got 'often'"),
    ("TRACKING_TRUSTED_PROXY_HOPS", "1.5", "TRACKING_TRUSTED_PROXY_HOPS must be a whole number, got '1.5'"),
])
def test_bad_numeric_settings_stop_the_service_naming_the_variable(settings, spool_dir, monkeypatch, name, value,
                                                                   message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_app({"TESTING": True, "TRACKING_DRAINER": False, "TRACKING_SPOOL_DIR": spool_dir})


def test_a_spool_dir_that_cannot_be_created_stops_the_service_naming_it(settings, tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"TRACKING_SPOOL_DIR .*a-file/spool cannot be created"):
        create_app({"TESTING": True, "TRACKING_DRAINER": False, "TRACKING_SPOOL_DIR": in_the_way / "spool"})


def test_livez_stays_200_while_postgres_is_down_because_opens_and_clicks_still_work(client, monkeypatch):
    from tracking_service import health

    monkeypatch.setattr(health.db, "postgres_dsn", lambda: "postgresql://nobody@127.0.0.1:1/none")
    assert client.get("/healthz").status_code == 503
    response = client.get("/livez")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"spool": "ok"}}


def test_livez_is_503_when_the_spool_is_gone(client, spool_dir):
    import shutil

    shutil.rmtree(spool_dir)
    assert client.get("/livez").status_code == 503


# ---- health ---------------------------------------------------------------------------------------------------

def test_healthz_is_200_when_postgres_answers_and_the_spool_is_writable(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"postgres": "ok", "spool": "ok"}}


def test_healthz_is_503_naming_postgres_when_it_does_not_answer(client, monkeypatch):
    from tracking_service import health

    monkeypatch.setattr(health.db, "postgres_dsn", lambda: "postgresql://nobody@127.0.0.1:1/none")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["postgres"].startswith("error: ")
    assert response.get_json()["checks"]["spool"] == "ok"


def test_healthz_is_503_naming_the_spool_when_its_folder_is_gone(client, spool_dir):
    import shutil

    shutil.rmtree(spool_dir)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"postgres": "ok", "spool": "error: missing or not writable"}
