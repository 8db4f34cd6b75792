"""GET /v/<token> against real PostgreSQL: the recipient's own message from the frozen merge data, with its tracked
links and no open pixel, behind headers that allow no scripts; anything else is a plain 404."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg.types.json import Jsonb

from campaigns.audience.filters import Audience
from campaigns.feedback.links import register_links
from campaigns.feedback.tokens import CLICK, TokenCodec
from campaigns.sending import ledger
from campaigns.sending.messages import composer_for, preheader_of, read_message
from tests.helpers import add_contacts
from tracking_service import view
from tracking_service.spool_format import segments

HTML = ('<html><body><h1>Hello {{ first_name }}!</h1><p>Your plan: {{ plan }}</p>'
        '<p><a href="https://shop.example.com/sale">Shop the sale</a></p>'
        '<img src="https://cdn.example.com/banner.png" alt="Spring"></body></html>')


def _load_campaign(db, campaign_id):
    return db.execute("SELECT * FROM campaigns WHERE id = %s", [campaign_id]).fetchone()


@pytest.fixture
def sent(db, settings):
    """A running campaign snapshotted from the newsletter (ann, bob, cem) whose rows are sent, except cem's
    (pending); returns (campaign id, {email: ledger row id})."""
    add_contacts(db, ["ann@example.com", "bob@example.com", "cem@example.com"],
                 attributes=lambda i: {"plan": ["pro", "free", "team"][i]})
    db.execute("UPDATE contacts SET first_name = 'Ann' WHERE email = 'ann@example.com'")
    campaign_id = db.execute(
        """INSERT INTO campaigns (key, name, subject, preheader, from_email, from_name, html, audience, settings,
                                  status)
           VALUES ('spring', 'Spring', 'Spring for {{ first_name }}', %s, 'news@example.com', 'Example News',
                   %s, %s, %s, 'running') RETURNING id""",
        ["Hi {{ first_name }}, 20% off this week", HTML, Jsonb({"lists": ["newsletter"]}),
         Jsonb({"view_in_browser_footer": True})]).fetchone()["id"]
    ledger.snapshot(db, campaign_id, Audience.parse({"lists": ["newsletter"]}), page_size=500)
    register_links(db, campaign_id, composer_for(_load_campaign(db, campaign_id), settings).links)
    db.execute("""UPDATE campaign_recipients SET status = 'sent', ses_message_id = 'ses-' || id, sent_at = now()
                   WHERE email <> 'cem@example.com'""")
    ids = {row["email"]: row["id"] for row in db.execute("SELECT id, email FROM campaign_recipients")}
    return campaign_id, ids


def _url(codec, campaign_id, recipient_id) -> str:
    return f"/v/{codec.view_token(campaign_id, recipient_id)}"


def _assert_safe_headers(response):
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp  # falls back to default-src 'none': no script runs
    assert "img-src data:;" in csp  # no remote image loads: none could act as a read receipt
    assert "style-src 'unsafe-inline'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "Set-Cookie" not in response.headers


def test_view_page_is_the_message_the_recipient_got_without_the_open_pixel(client, codec, sent, db, settings):
    campaign_id, ids = sent
    response = client.get(_url(codec, campaign_id, ids["ann@example.com"]))

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    _assert_safe_headers(response)
    page = response.get_data(as_text=True)
    # the message the send path composed for Ann, with opens tracked: the page is that, minus the pixel
    received = read_message(composer_for(_load_campaign(db, campaign_id), settings)
                            .compose(ids["ann@example.com"], "ann@example.com",
                                     {"first_name": "Ann", "plan": "pro", "email": "ann@example.com"}))
    pixel = re.search(r'<img src="https://track\.example\.test/o/[^"]+"[^>]*>', received.html)
    assert pixel is not None
    assert page == received.html.replace(pixel.group(0), "")
    assert "/o/" not in page
    assert preheader_of(page) == "Hi Ann, 20% off this week"
    assert "Your plan: pro" in page


def test_view_page_links_are_the_recipients_tracked_links_and_they_redirect(client, codec, sent):
    campaign_id, ids = sent
    page = client.get(_url(codec, campaign_id, ids["bob@example.com"])).get_data(as_text=True)
    [click] = re.findall(r'href="https://track\.example\.test(/c/[^"]+)"', page)
    payload = codec.decode(CLICK, click.rsplit("/", 1)[1])
    assert (payload.campaign_id, payload.recipient_id, payload.link_id) == (campaign_id, ids["bob@example.com"], 0)
    assert client.get(click).headers["Location"] == "https://shop.example.com/sale"
    # the page's own footer link points back at this same page
    assert f'href="https://track.example.test{_url(codec, campaign_id, ids["bob@example.com"])}"' in page


def test_viewing_in_the_browser_records_no_open(client, codec, sent, spool_dir):
    campaign_id, ids = sent
    client.get(_url(codec, campaign_id, ids["ann@example.com"]))
    assert sum(path.stat().st_size for path in segments(spool_dir)) == 0


def test_view_page_shows_the_merge_data_frozen_at_snapshot(client, codec, sent, db):
    campaign_id, ids = sent
    db.execute("""UPDATE contacts SET first_name = 'Annabel', attributes = '{"plan": "enterprise"}'
                   WHERE email = 'ann@example.com'""")
    page = client.get(_url(codec, campaign_id, ids["ann@example.com"])).get_data(as_text=True)
    assert "Hello Ann!" in page
    assert "Your plan: pro" in page
    assert "Annabel" not in page


def test_a_row_whose_outcome_is_unknown_is_shown_it_may_have_been_received(client, codec, sent, db):
    campaign_id, ids = sent
    db.execute("UPDATE campaign_recipients SET status = 'unknown' WHERE id = %s", [ids["bob@example.com"]])
    assert client.get(_url(codec, campaign_id, ids["bob@example.com"])).status_code == 200


@pytest.mark.parametrize("status", ["pending", "skipped", "failed", "cancelled", "sending"])
def test_a_row_nobody_received_is_404(client, codec, sent, db, status):
    campaign_id, ids = sent
    db.execute("UPDATE campaign_recipients SET status = %s, skip_reason = 'unsubscribed' WHERE id = %s",
               [status, ids["ann@example.com"]])
    response = client.get(_url(codec, campaign_id, ids["ann@example.com"]))
    _assert_not_found(response)


def _assert_not_found(response):
    assert response.status_code == 404
    _assert_safe_headers(response)
    page = response.get_data(as_text=True)
    assert "Message not found" in page
    assert "Hello" not in page
    assert "Spring" not in page


def test_forged_tampered_and_other_kinds_of_tokens_are_404_with_nothing_rendered(client, codec, sent):
    campaign_id, ids = sent
    ann = ids["ann@example.com"]
    token = codec.view_token(campaign_id, ann)
    bad = [
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token[:-4],
        TokenCodec(["someone-elses-key"]).view_token(campaign_id, ann),
        codec.open_token(campaign_id, ann),
        codec.unsubscribe_token(campaign_id, ann),
        codec.click_token(campaign_id, ann, 0),
        "x' OR '1'='1",
    ]
    for forged in bad:
        _assert_not_found(client.get(f"/v/{forged}"))


def test_a_view_token_of_another_campaigns_row_is_404(client, codec, sent):
    campaign_id, ids = sent
    _assert_not_found(client.get(_url(codec, campaign_id + 1, ids["ann@example.com"])))


def test_view_page_while_the_database_is_down_is_503_and_shows_nothing(client, codec, sent, monkeypatch):
    campaign_id, ids = sent

    def failing_db():
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(view, "get_db", failing_db)
    response = client.get(_url(codec, campaign_id, ids["ann@example.com"]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert "Hello" not in response.get_data(as_text=True)


def test_a_changed_campaign_is_composed_again_not_served_from_the_cache(client, codec, sent, db):
    campaign_id, ids = sent
    url = _url(codec, campaign_id, ids["ann@example.com"])
    assert "Hello Ann!" in client.get(url).get_data(as_text=True)
    db.execute("UPDATE campaigns SET html = replace(html, 'Hello', 'Welcome back'), updated_at = now() + interval "
               "'1 second' WHERE id = %s", [campaign_id])
    assert "Welcome back Ann!" in client.get(url).get_data(as_text=True)


def test_the_composer_cache_keeps_the_most_recently_used_campaigns():
    cache = view.ComposerCache(size=2)
    built: list[int] = []

    def build(n):
        def make():
            built.append(n)
            return n
        return make

    for key in (1, 2, 1, 3, 1, 2):
        cache.get((key,), build(key))
    # 1 stays (used again before 3 came), 2 was evicted by 3 and built again
    assert built == [1, 2, 3, 2]
