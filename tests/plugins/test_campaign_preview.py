"""The preview on the Campaigns view: the real composed message, for sample values, an audience contact or a ledger
row, with nothing that loads or records anything; and the address search that lives only on the campaign's page."""

from __future__ import annotations

import re

import lxml.html
import pytest

from campaigns import states
from campaigns.config import get_settings
from campaigns.lifecycle import definitions
from campaigns.sending import ledger
from campaigns.sending.messages import composer_for, read_message
from tests.campaigns.lifecycle.test_control import prepared_campaign
from tests.helpers import add_contacts, inline_campaign, insert_campaign

HTML = ("<html><head><meta http-equiv=\"refresh\" content=\"0;url=https://evil.example\"></head><body>"
        "<p>Hello {{ first_name }} from {{ city | default('Vienna') }}!</p>"
        "<p><a href=\"https://example.com/offer\">See the offer</a> <img src=\"https://cdn.example.com/logo.png\"></p>"
        "</body></html>")


@pytest.fixture
def draft(db):
    add_contacts(db, ["ana@example.org", "anton@example.org", "bob@example.org"], attributes={"city": "Graz"})
    definition = definitions.CampaignDefinition.parse(inline_campaign(html=HTML, subject="Hi {{ first_name }}"))
    return definitions.upsert_campaign(db, definition)["id"]


def doc_of(response) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(response.text)


def field(doc, name: str) -> str:
    return doc.xpath(f"//*[@data-field='{name}']")[0].text_content()


def test_a_draft_previews_with_sample_values_for_the_fields_the_templates_use(analyst, db, draft):
    page = doc_of(analyst.get(f"/{draft}"))
    samples = {i.get("name"): i.get("value") for i in page.xpath("//form[@data-form='sample']//input")}
    # a stand-in where the template needs a value; empty where its default applies, as for a contact without it
    assert samples == {"sample.city": "", "sample.first_name": "First Name"}

    response = analyst.get(f"/{draft}/preview", params={"sample.first_name": "Ana", "sample.city": "Linz"})

    assert response.status_code == 200
    doc = doc_of(response)
    assert field(doc, "subject") == "Hi Ana"
    assert "Hello Ana from Linz!" in field(doc, "text")
    headers = {th.text_content(): th.getnext().text_content() for th in doc.xpath("//table[@data-table='headers']//th")}
    assert headers["List-Unsubscribe"].startswith("<https://track.example.test/u/")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["From"] == "Example News <news@example.com>"
    (frame,) = doc.xpath("//iframe[@data-frame='html']")
    assert frame.get("sandbox") == ""
    assert frame.get("src") == f"/{draft}/preview.html?sample.first_name=Ana&sample.city=Linz"
    assert doc.xpath("//ul[@data-list='links']/li/code/text()") == ["https://example.com/offer",
                                                                    "the one-click unsubscribe link"]


def test_the_preview_html_loads_nothing_and_no_link_can_be_followed(analyst, db, draft):
    response = analyst.get(f"/{draft}/preview.html", params={"sample.first_name": "Ana"})

    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "img-src data:" in csp
    assert "script-src" not in csp  # default-src 'none' forbids scripts
    assert response.headers["referrer-policy"] == "no-referrer"
    html = doc_of(response)
    assert "Hello Ana from Vienna!" in html.text_content()  # no city given: the template's default shows
    assert html.xpath("//a[@href] | //area[@href]") == []
    assert html.xpath("//a/@data-preview-target") == ["https://example.com/offer", "the one-click unsubscribe link"]
    assert "track.example.test/o/" not in response.text  # the open pixel is gone
    assert "/c/" not in response.text
    assert html.xpath("//meta[@http-equiv]") == []


def test_as_a_recipient_received_it_equals_what_compose_sends(analyst, db, draft):
    ledger.snapshot(db, draft, ledger_audience(), page_size=500)
    db.execute("UPDATE campaigns SET status = 'sent' WHERE id = %s", [draft])
    row = db.execute("SELECT * FROM campaign_recipients WHERE campaign_id = %s AND email = 'anton@example.org'",
                     [draft]).fetchone()
    campaign = definitions.load_campaign(db, draft)
    expected = read_message(composer_for(campaign, get_settings()).compose(row["id"], row["email"],
                                                                          ledger.merge_fields(row)))

    doc = doc_of(analyst.get(f"/{draft}/preview", params={"recipient": row["id"]}))

    assert field(doc, "who") == "as anton@example.org received it (pending)"
    assert field(doc, "subject") == expected.subject == "Hi First1"
    # the text part as sent, but each tracked link shown as where it leads: copying one out records nothing
    text = field(doc, "text")
    assert text == re.sub(r"https://track\.example\.test/c/[\w-]+", "https://example.com/offer",
                          re.sub(r"https://track\.example\.test/u/[\w-]+", "the one-click unsubscribe link",
                                 expected.text.replace("\r\n", "\n")))  # as the browser reads the <pre>
    assert "https://example.com/offer" in text
    assert "/c/" not in text
    headers = [(th.text_content(), th.getnext().text_content())
               for th in doc.xpath("//table[@data-table='headers']//th")]
    # List-Unsubscribe carries this row's own token; only the MIME boundary is drawn anew per Composer
    def without_boundary(pairs):
        return [(name, re.sub(r'boundary="[^"]+"', "boundary", value)) for name, value in pairs]

    assert without_boundary(headers) == without_boundary(expected.headers)
    assert dict(headers)["List-Unsubscribe"] == dict(expected.headers)["List-Unsubscribe"]
    html = analyst.get(f"/{draft}/preview.html", params={"recipient": row["id"]}).text
    assert "Hello First1 from Graz!" in html
    expected_doc = lxml.html.fromstring(expected.html)
    assert [a.text_content() for a in lxml.html.fromstring(html).xpath("//a")] == [
        a.text_content() for a in expected_doc.xpath("//a")]


def ledger_audience():
    from campaigns.audience.filters import Audience

    return Audience.parse({"lists": ["newsletter"]})


def test_a_template_error_is_shown_not_a_500(analyst, db):
    campaign_id = prepared_campaign(db, states.DRAFT)
    db.execute("UPDATE campaigns SET html = '<p>{{ first_name }</p>' WHERE id = %s", [campaign_id])

    response = analyst.get(f"/{campaign_id}/preview")

    assert response.status_code == 422
    assert "The message does not render:" in field(doc_of(response), "error")
    assert "html" in field(doc_of(response), "error")
    assert analyst.get(f"/{campaign_id}").status_code == 200  # the campaign page still opens


def test_search_finds_audience_contacts_of_a_draft_by_address_prefix(analyst, db, draft):
    doc = doc_of(analyst.get(f"/{draft}", params={"q": "AN"}))
    matches = {a.text_content(): a.get("href") for a in doc.xpath("//ul[@data-list='matches']//a")}
    assert set(matches) == {"ana@example.org", "anton@example.org"}
    contact = db.execute("SELECT id FROM contacts WHERE email = 'ana@example.org'").fetchone()["id"]
    assert matches["ana@example.org"] == f"/{draft}/preview?contact={contact}"

    preview = doc_of(analyst.get(matches["ana@example.org"]))
    assert field(preview, "who") == "as ana@example.org would get it"
    assert field(preview, "subject") == "Hi First0"

    assert doc_of(analyst.get(f"/{draft}", params={"q": "zed"})).xpath("//*[@data-empty='matches']")


def test_search_of_a_sent_campaign_finds_its_ledger_rows_only(analyst, db, draft):
    ledger.snapshot(db, draft, ledger_audience(), page_size=500)
    add_contacts(db, ["bobby@example.org"])  # joined after the snapshot: not a recipient
    doc = doc_of(analyst.get(f"/{draft}", params={"q": "bob"}))
    assert [a.text_content() for a in doc.xpath("//ul[@data-list='matches']//a")] == ["bob@example.org"]
    assert doc.xpath("//ul[@data-list='matches']//a/@href")[0].startswith(f"/{draft}/preview?recipient=")


def test_a_contact_outside_the_audience_or_another_campaigns_row_is_404(analyst, db, draft):
    outsider = add_contacts(db, ["eve@example.org"], list_name="other")[0]
    assert analyst.get(f"/{draft}/preview", params={"contact": outsider}).status_code == 404
    other = insert_campaign(db, "other")
    foreign_row = db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (%s, 'x@example.org') "
                             "RETURNING id", [other]).fetchone()["id"]
    assert analyst.get(f"/{draft}/preview", params={"recipient": foreign_row}).status_code == 404
    assert analyst.get(f"/{draft}/preview", params={"recipient": "x"}).status_code == 400


def test_no_address_is_listed_on_the_overview_page(analyst, db, draft):
    ledger.snapshot(db, draft, ledger_audience(), page_size=500)
    db.execute("INSERT INTO test_sends (campaign_id, email, status, ses_message_id) "
               "VALUES (%s, 'tester@example.org', 'sent', 'm-1')", [draft])
    overview = analyst.get("/").text
    assert not re.search(r"[\w.+-]+@example\.org", overview)
    assert "tester@example.org" in analyst.get(f"/{draft}").text  # the campaign's own page shows its test sends


@pytest.mark.parametrize("path", ["/{id}/preview", "/{id}/preview.html", "/{id}/progress.json"])
def test_the_new_pages_need_a_login(view, db, path):
    campaign_id = prepared_campaign(db, states.DRAFT)
    assert view.get(path.format(id=campaign_id)).status_code == 401
