"""Campaign stats rollups: incremental runs equal a from-scratch count, late commits are counted exactly once,
retention prunes only what was rolled up, and the read API states its rates' denominators.

Events are written the way the product writes them: opens and clicks through the tracking service's spool and its
drainer, SES notifications through campaigns.feedback.ses_events.record_notification, unsubscribes with the tracking
service's query.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from campaigns import queries
from campaigns.config import ConfigError, Settings
from campaigns.db import connect
from campaigns.feedback.ses_events import record_notification
from campaigns.lifecycle import stats
from tests.helpers import insert_campaign
from tracking_service.drainer import drain_once
from tracking_service.spool import buffer_event

DOCS = Path(__file__).resolve().parents[3] / "docs"
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)  # campaign A's start
LINKS = ["https://example.com/offer", "https://example.com/blog"]

# event -> the per-recipient "first" metrics it can set
FIRSTS = {
    "unique_opens": lambda e: e["type"] == "open",
    "unique_human_opens": lambda e: e["type"] == "open" and not e["is_machine"],
    "unique_clicks": lambda e: e["type"] == "click",
    "unique_human_clicks": lambda e: e["type"] == "click" and not e["is_machine"],
    "delivered": lambda e: e["type"] == "delivery",
    "bounced": lambda e: e["type"] == "bounce",
    "bounced_hard": lambda e: e["type"] == "bounce" and e["subtype"] == "Permanent",
    "complained": lambda e: e["type"] == "complaint",
    "unsubscribes": lambda e: e["type"] == "unsubscribe",
}
TOTALS = {
    "opens": lambda e: e["type"] == "open",
    "human_opens": lambda e: e["type"] == "open" and not e["is_machine"],
    "clicks": lambda e: e["type"] == "click",
    "human_clicks": lambda e: e["type"] == "click" and not e["is_machine"],
}


# ---- writing data the way the product does ---------------------------------------------------------------------

def make_campaign(db, key: str, started: datetime, sent: int) -> tuple[int, list[int]]:
    """A campaign that sent to `sent` recipients (one minute apart), plus one failed, two skipped and one unknown
    ledger row and two tracked links; returns (campaign id, ledger ids of the sent rows, then the unknown row)."""
    campaign_id = insert_campaign(db, key)
    db.execute("UPDATE campaigns SET status = 'sent', started_at = %s, finished_at = %s WHERE id = %s",
               [started, started + timedelta(hours=1), campaign_id])
    ids = []
    for i in range(sent):
        ids.append(db.execute(
            """INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at)
               VALUES (%s, %s, 'sent', %s, %s) RETURNING id""",
            [campaign_id, f"r{i}@{key}.example", f"msg-{key}-{i}", started + timedelta(minutes=i)]).fetchone()["id"])
    db.execute("INSERT INTO campaign_recipients (campaign_id, email, status, error) VALUES (%s, %s, 'failed', 'x')",
               [campaign_id, f"failed@{key}.example"])
    for reason in ("suppressed:unsubscribe", "invalid_address"):
        db.execute("""INSERT INTO campaign_recipients (campaign_id, email, status, skip_reason)
                      VALUES (%s, %s, 'skipped', %s)""", [campaign_id, f"{reason[:3]}@{key}.example", reason])
    ids.append(db.execute("""INSERT INTO campaign_recipients (campaign_id, email, status, attempt)
                             VALUES (%s, %s, 'unknown', 'run/0/1') RETURNING id""",
                          [campaign_id, f"unknown@{key}.example"]).fetchone()["id"])
    for link_id, url in enumerate(LINKS):
        db.execute("INSERT INTO campaign_links (campaign_id, link_id, url) VALUES (%s, %s, %s)",
                   [campaign_id, link_id, url])
    return campaign_id, ids


def track(spool, db, *events) -> None:
    """Opens/clicks through the tracking service's spool, then drained into PostgreSQL."""
    for type_, campaign_id, recipient_id, at, extra in events:
        buffer_event(spool, type=type_, campaign_id=campaign_id, recipient_id=recipient_id,
                     occurred=at.timestamp(), user_agent="Mozilla/5.0 (Macintosh) Mail", **extra)
    drain_once(spool.directory, db)


def ses_event(conn, settings, kind: str, message_id: str, at: datetime, email: str = "x@example.org",
              tags: dict | None = None, **detail) -> str:
    """One SES notification (configuration-set shape) through record_notification, as the webhook does."""
    key = {"Bounce": "bounce", "Complaint": "complaint", "Delivery": "delivery", "Send": "send"}[kind]
    body = {"timestamp": at.isoformat(), **detail}
    if kind == "Bounce":
        body["bouncedRecipients"] = [{"emailAddress": email}]
    if kind == "Complaint":
        body["complainedRecipients"] = [{"emailAddress": email}]
    message = {"eventType": kind, "mail": {"messageId": message_id, "timestamp": at.isoformat(),
                                           "destination": [email], "tags": tags or {}}, key: body}
    return record_notification(conn, {"MessageId": str(uuid.uuid4()), "Message": json.dumps(message)}, settings)


def unsubscribe(db, campaign_id: int, recipient_id: int) -> None:
    """The tracking service's one-click unsubscribe event (the same named query)."""
    email = db.execute("SELECT email FROM campaign_recipients WHERE id = %s", [recipient_id]).fetchone()["email"]
    db.execute(queries.load("tracking")["record-unsubscribe-event"], {
        "campaign_id": campaign_id, "recipient_id": recipient_id, "email": email, "subtype": "one_click",
        "ip": None, "user_agent": None, "payload": None})


# ---- the from-scratch count the rollups must equal ---------------------------------------------------------------

def bucket(started: datetime, at: datetime) -> tuple[datetime, str]:
    hourly_until = (started + timedelta(hours=168)).astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                                           microsecond=0) + timedelta(days=1)
    if at < hourly_until:
        return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0), "hour"
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0), "day"


def from_scratch(db, campaign_id: int) -> dict:
    """Every number of one campaign, counted from the raw events and the ledger."""
    started = db.execute("SELECT coalesce(started_at, created_at) AS s FROM campaigns WHERE id = %s",
                         [campaign_id]).fetchone()["s"]
    events = db.execute("SELECT * FROM email_events WHERE campaign_id = %s", [campaign_id]).fetchall()
    ledger = db.execute("SELECT * FROM campaign_recipients WHERE campaign_id = %s", [campaign_id]).fetchall()
    totals: Counter = Counter()
    series: dict = defaultdict(Counter)
    firsts: dict = defaultdict(dict)
    links: dict = defaultdict(lambda: {"clicks": 0, "human_clicks": 0, "unique": set(), "unique_human": set()})
    for e in events:
        for metric, hit in TOTALS.items():
            if hit(e):
                totals[metric] += 1
                series[bucket(started, e["occurred_at"])][metric] += 1
        for metric, hit in FIRSTS.items():
            if hit(e) and e["recipient_id"] is not None:
                seen = firsts[metric].get(e["recipient_id"])
                firsts[metric][e["recipient_id"]] = min(seen, e["occurred_at"]) if seen else e["occurred_at"]
        if e["type"] == "click" and e["link_id"] is not None:
            link = links[e["link_id"]]
            link["clicks"] += 1
            link["unique"].add(e["recipient_id"])
            if not e["is_machine"]:
                link["human_clicks"] += 1
                link["unique_human"].add(e["recipient_id"])
    for metric, per_recipient in firsts.items():
        totals[metric] = len(per_recipient)
        for at in per_recipient.values():
            series[bucket(started, at)][metric] += 1
    skipped: Counter = Counter()
    for row in ledger:
        totals["recipients"] += 1
        totals[row["status"]] += 1
        if row["status"] == "skipped":
            skipped[row["skip_reason"]] += 1
        if row["status"] == "sent":
            series[bucket(started, row["sent_at"] or row["updated_at"])]["sent"] += 1
    totals["bounced_soft"] = totals["bounced"] - totals["bounced_hard"]
    return {
        "counts": {name: totals[name] for name in stats.COUNTS},
        "skipped_by_reason": dict(skipped),
        "series": {key: dict(+counter) for key, counter in series.items() if +counter},
        "links": {link_id: {"clicks": v["clicks"], "human_clicks": v["human_clicks"], "unique_clicks": len(v["unique"]),
                            "unique_human_clicks": len(v["unique_human"])} for link_id, v in links.items()},
    }


def rolled_up(db, campaign_id: int) -> dict:
    """The same numbers, read from the rollup tables through the public API."""
    result = stats.campaign_stats(db, campaign_id)
    series = {}
    for row in stats.campaign_series(db, campaign_id):
        values = {k: v for k, v in row.items() if k not in ("bucket_start", "granularity") and v}
        if values:
            series[(row["bucket_start"], row["granularity"])] = values
    return {
        "counts": {name: result[name] for name in stats.COUNTS},
        "skipped_by_reason": result["skipped_by_reason"],
        "series": series,
        "links": {link["link_id"]: {k: link[k] for k in ("clicks", "human_clicks", "unique_clicks",
                                                         "unique_human_clicks")}
                  for link in result["links"] if link["clicks"]},
    }


def hourly_from_scratch(db) -> Counter:
    counts: Counter = Counter()
    for e in db.execute("SELECT occurred_at, type, subtype, is_machine FROM email_events").fetchall():
        hour = e["occurred_at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        counts[(hour, e["type"], e["subtype"], e["is_machine"])] += 1
    return counts


def hourly_rolled_up(db) -> Counter:
    rows = db.execute("SELECT hour, type, subtype, is_machine, events FROM email_event_counts_hourly").fetchall()
    return Counter({(r["hour"], r["type"], r["subtype"], r["is_machine"]): r["events"] for r in rows})


def assert_matches_scratch(db, *campaign_ids: int) -> None:
    for campaign_id in campaign_ids:
        assert rolled_up(db, campaign_id) == from_scratch(db, campaign_id)
    assert hourly_rolled_up(db) == hourly_from_scratch(db)


# ---- tests -----------------------------------------------------------------------------------------------------

@pytest.fixture
def two_campaigns(db):
    a = make_campaign(db, "a", T0, sent=6)
    b = make_campaign(db, "b", T0 - timedelta(days=9), sent=3)  # past its first 7 days: daily buckets
    return a, b


def test_incremental_rollups_equal_a_from_scratch_count(db, spool, settings, two_campaigns):
    (a, ra), (b, rb) = two_campaigns
    machine = {"is_machine": True, "reasons": ["apple_proxy_ip"]}
    track(spool, db,
          ("open", a, ra[0], T0 + timedelta(hours=2), {}),
          ("open", a, ra[0], T0 + timedelta(hours=2, minutes=5), machine),
          ("open", a, ra[1], T0 + timedelta(hours=1), machine),
          ("click", a, ra[1], T0 + timedelta(hours=1, minutes=1), {"link_id": 0}),
          ("click", a, ra[2], T0 + timedelta(hours=3), {"link_id": 1}),  # no open yet: an implied open too
          ("open", b, rb[0], T0 + timedelta(hours=5), {}))
    for i in range(5):
        ses_event(db, settings, "Delivery", f"msg-a-{i}", T0 + timedelta(minutes=i, seconds=3))
    ses_event(db, settings, "Bounce", "msg-a-5", T0 + timedelta(minutes=6), bounceType="Transient")
    ses_event(db, settings, "Delivery", "msg-b-0", T0 - timedelta(days=9))
    ses_event(db, settings, "Bounce", "msg-nobody", T0, bounceType="Permanent")  # no ledger row: hourly only

    first = stats.refresh(db)

    assert first["first_run"] is True
    assert first["events"] == db.execute("SELECT count(*) AS n FROM email_events").fetchone()["n"]
    assert_matches_scratch(db, a, b)
    assert stats.campaign_stats(db, a)["unique_opens"] == 3  # r0, r1 and r2 (implied by the click)

    # wave 2: a soft bounce turns hard, a complaint, an unsubscribe, repeat clicks, and an open that happened
    # EARLIER than the recipient's counted first open (its bucket moves, its unique count does not)
    ses_event(db, settings, "Bounce", "msg-a-5", T0 + timedelta(hours=4), bounceType="Permanent")
    ses_event(db, settings, "Complaint", "msg-a-3", T0 + timedelta(hours=6), complaintFeedbackType="abuse")
    unsubscribe(db, a, ra[4])
    track(spool, db,
          ("click", a, ra[2], T0 + timedelta(hours=7), {"link_id": 1}),
          ("click", a, ra[0], T0 + timedelta(hours=8), {"link_id": 0}),
          ("open", a, ra[0], T0 + timedelta(minutes=30), {}),
          ("open", b, rb[1], T0 + timedelta(days=1), {}))
    # the unknown ledger row is settled `sent` by its SES Send event: a ledger change the campaign row never sees
    ses_event(db, settings, "Send", "msg-late", T0 + timedelta(minutes=9),
              tags={"campaign": [str(a)], "recipient": [str(ra[-1])]})

    second = stats.refresh(db)

    assert second["first_run"] is False
    assert second["events"] == 8
    assert_matches_scratch(db, a, b)
    numbers = stats.campaign_stats(db, a)
    assert (numbers["sent"], numbers["unknown"]) == (7, 0)
    assert (numbers["bounced"], numbers["bounced_hard"], numbers["bounced_soft"]) == (1, 1, 0)
    assert numbers["unique_opens"] == 3

    third = stats.refresh(db)  # nothing new: nothing counted twice

    assert third["events"] == 0
    assert_matches_scratch(db, a, b)


def test_an_event_committed_late_with_a_lower_id_is_counted_exactly_once(db, dsn, settings, two_campaigns):
    (a, _), _ = two_campaigns
    stats.refresh(db)
    late = connect(dsn)  # not autocommit: its transaction stays open until we commit it
    try:
        late.execute("SELECT 1")
        ses_event(late, settings, "Delivery", "msg-a-0", T0 + timedelta(minutes=1))  # id assigned now, not committed
        late_id = late.execute("SELECT max(id) AS id FROM email_events").fetchone()["id"]
        ses_event(db, settings, "Delivery", "msg-a-1", T0 + timedelta(minutes=2))  # higher id, committed first
        early_id = db.execute("SELECT max(id) AS id FROM email_events").fetchone()["id"]
        assert late_id < early_id

        during = stats.refresh(db)  # runs while the lower id is still uncommitted

        assert during["events"] == 1
        assert stats.campaign_stats(db, a)["delivered"] == 1
        late.commit()
    finally:
        late.close()

    after = stats.refresh(db)
    again = stats.refresh(db)

    assert (after["events"], again["events"]) == (1, 0)
    assert stats.campaign_stats(db, a)["delivered"] == 2
    assert_matches_scratch(db, a)


def test_only_campaigns_that_changed_have_their_ledger_recounted(db, spool, settings, two_campaigns):
    (a, _), (b, _) = two_campaigns
    running = insert_campaign(db, "running")
    db.execute("UPDATE campaigns SET status = 'running', started_at = %s WHERE id = %s", [T0, running])
    row = db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (%s, 'p@example.org') RETURNING id",
                     [running]).fetchone()["id"]
    assert stats.refresh(db)["campaigns_recounted"] == 3

    db.execute("UPDATE campaign_recipients SET status = 'sent', ses_message_id = 'm-p', sent_at = %s WHERE id = %s",
               [T0 + timedelta(minutes=3), row])
    assert stats.refresh(db)["campaigns_recounted"] == 1  # only the running one: finished ledgers do not change
    assert stats.campaign_stats(db, running)["sent"] == 1

    db.execute("UPDATE campaigns SET status = 'sent', updated_at = now() WHERE id = %s", [running])
    assert stats.refresh(db)["campaigns_recounted"] == 1  # its final state move
    assert stats.refresh(db)["campaigns_recounted"] == 0
    track(spool, db, ("open", running, row, T0 + timedelta(hours=1), {}))
    assert stats.refresh(db) == {"events": 1, "campaigns_recounted": 0, "first_run": False}  # opens move no row
    assert_matches_scratch(db, a, b, running)


def test_retention_prunes_only_rolled_up_events_and_the_numbers_stay(db, spool, settings):
    long_ago = datetime.now(UTC) - timedelta(days=500)
    campaign_id, ids = make_campaign(db, "old", long_ago, sent=2)
    track(spool, db, ("open", campaign_id, ids[0], long_ago + timedelta(hours=1), {}))
    backdate = "UPDATE email_events SET created_at = occurred_at WHERE created_at > now() - interval '1 day'"
    db.execute(backdate)
    assert stats.prune_events(db, 400) == 0  # nothing rolled up yet: nothing may go

    stats.refresh(db)
    before = rolled_up(db, campaign_id)
    track(spool, db, ("open", campaign_id, ids[1], long_ago + timedelta(hours=2), {}))
    db.execute(backdate)  # old, but not rolled up yet
    recent = datetime.now(UTC) - timedelta(days=1)
    ses_event(db, settings, "Delivery", "msg-old-0", recent)

    assert stats.prune_events(db, 0) == 0  # 0 keeps everything
    assert stats.prune_events(db, 400, chunk=1) == 1

    assert rolled_up(db, campaign_id) == before
    assert [e["type"] for e in db.execute("SELECT type FROM email_events ORDER BY id")] == ["open", "delivery"]
    stats.refresh(db)
    assert stats.prune_events(db, 400) == 1
    assert db.execute("SELECT type FROM email_events").fetchall() == [{"type": "delivery"}]

    # the first recipient opens again: its first open is remembered although its events are gone
    track(spool, db, ("open", campaign_id, ids[0], datetime.now(UTC), {}))
    stats.refresh(db)
    numbers = stats.campaign_stats(db, campaign_id)
    assert (numbers["opens"], numbers["unique_opens"], numbers["delivered"]) == (3, 2, 1)


def test_campaign_stats_states_every_rate_with_its_denominator(db, spool, settings):
    campaign_id, ids = make_campaign(db, "rates", T0, sent=4)
    never = insert_campaign(db, "never-rolled-up")
    track(spool, db,
          ("open", campaign_id, ids[0], T0 + timedelta(hours=1), {}),
          ("click", campaign_id, ids[1], T0 + timedelta(hours=1), {"link_id": 1}))
    ses_event(db, settings, "Bounce", "msg-rates-3", T0, bounceType="Permanent")
    unsubscribe(db, campaign_id, ids[2])

    stats.refresh(db)
    result = stats.campaign_stats(db, campaign_id)

    assert result["key"] == "rates"
    assert result["skipped_by_reason"] == {"invalid_address": 1, "suppressed:unsubscribe": 1}
    assert result["rates"]["bounce"] == {"value": 0.25, "numerator": 1, "denominator": 4, "formula": "bounced / sent"}
    assert result["rates"]["open"] == {"value": round(2 / 3, 6), "numerator": 2, "denominator": 3,
                                       "formula": "unique_opens / (sent - bounced)"}
    assert result["rates"]["click_to_open"]["value"] == 0.5
    assert result["rates"]["unsubscribe"]["numerator"] == 1
    assert [(link["link_id"], link["url"], link["clicks"]) for link in result["links"]] == [
        (0, LINKS[0], 0), (1, LINKS[1], 1)]
    empty = stats.campaign_stats(db, never)
    assert empty["sent"] == 0
    assert empty["rates"]["bounce"]["value"] is None
    with pytest.raises(stats.CampaignNotFound, match="campaign 999999 does not exist"):
        stats.campaign_stats(db, 999_999)


def test_series_is_hourly_for_the_first_seven_days_then_daily(db, spool):
    campaign_id, ids = make_campaign(db, "series", T0, sent=1)
    track(spool, db,
          ("open", campaign_id, ids[0], T0 + timedelta(hours=1, minutes=10), {}),
          ("open", campaign_id, ids[0], T0 + timedelta(days=7, hours=5), {}),   # same UTC day as hour 168: hourly
          ("open", campaign_id, ids[0], T0 + timedelta(days=9, hours=3), {}))

    stats.refresh(db)
    series = [(r["bucket_start"], r["granularity"], r["sent"], r["opens"])
              for r in stats.campaign_series(db, campaign_id)]

    assert series == [
        (datetime(2026, 11, 2, 9, tzinfo=UTC), "hour", 1, 0),
        (datetime(2026, 11, 2, 10, tzinfo=UTC), "hour", 0, 1),
        (datetime(2026, 11, 9, 14, tzinfo=UTC), "hour", 0, 1),
        (datetime(2026, 11, 11, tzinfo=UTC), "day", 0, 1),
    ]


def test_refresh_refuses_a_connection_inside_a_transaction(db, dsn, settings, two_campaigns):
    with connect(dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="no transaction open"):
            stats.refresh(conn)
    assert db.execute("SELECT count(*) AS n FROM campaign_stats").fetchone()["n"] == 0


def test_analytics_doc_queries_run_against_the_rollups(db, spool, settings, two_campaigns):
    (a, ra), _ = two_campaigns
    track(spool, db, ("open", a, ra[0], datetime.now(UTC) - timedelta(hours=1), {}),
          ("click", a, ra[0], datetime.now(UTC) - timedelta(minutes=50), {"link_id": 0}))
    ses_event(db, settings, "Bounce", "msg-a-1", datetime.now(UTC) - timedelta(hours=2), bounceType="Permanent")
    db.execute("UPDATE campaigns SET finished_at = now() - interval '1 hour' WHERE id = %s", [a])
    stats.refresh(db)
    blocks = re.findall(r"```sql\n(.*?)```", (DOCS / "analytics.md").read_text(), re.DOTALL)
    assert len(blocks) >= 3

    results = []
    for block in blocks:
        with db.cursor() as cur:  # a doc query that failed would raise here, naming the SQL
            cur.execute(block.replace("'nov-news'", "'a'"))
            results.append(cur.fetchall())

    assert all(results), "every documented query returns rows for a campaign with events"


def test_events_retention_days_is_validated(monkeypatch):
    assert Settings.from_env({}).events_retention_days == 400
    assert Settings.from_env({"EVENTS_RETENTION_DAYS": "0"}).events_retention_days == 0
    with pytest.raises(ConfigError, match=r"EVENTS_RETENTION_DAYS must be 0 \(keep\) or at least SOFT_BOUNCE_DAYS"):
        Settings.from_env({"EVENTS_RETENTION_DAYS": "7"})
    with pytest.raises(ConfigError, match="EVENTS_RETENTION_DAYS must be a whole number"):
        Settings.from_env({"EVENTS_RETENTION_DAYS": "a year"})


def test_deleting_a_campaign_deletes_its_stats(db, two_campaigns):
    (a, _), (b, _) = two_campaigns
    stats.refresh(db)

    db.execute("DELETE FROM campaigns WHERE id = %s", [a])

    assert [r["campaign_id"] for r in db.execute("SELECT campaign_id FROM campaign_stats")] == [b]
    with pytest.raises(psycopg.errors.UndefinedTable):
        db.execute("SELECT * FROM stats_batch")  # the staging tables never outlive a run
