"""List-Id (RFC 2919) on every message: derived from the campaign's first list, encoded safely, overridable."""

from __future__ import annotations

import email
import email.policy

import pytest

from campaigns.config import ConfigError, Settings
from campaigns.errors import AddressProblem, CampaignDefinitionError
from campaigns.feedback.tokens import TokenCodec
from campaigns.lifecycle.definitions import CampaignDefinition
from campaigns.sending.compose import CampaignContent, Composer
from campaigns.sending.list_id import derive_list_id, parse_list_id
from campaigns.sending.messages import composer_for
from tests.helpers import inline_campaign

SETTINGS = Settings(tracking_secret_keys=("k",), tracking_base_url="https://track.example.test")


def campaign_row(**overrides):
    row = {"id": 3, "key": "nov-news", "subject": "Hi", "html": "<p>Hello</p>", "text": None, "preheader": None,
           "from_email": "news@example.com", "from_name": "Example News", "reply_to": None, "settings": {},
           "audience": {"lists": ["Newsletter"]}}
    return {**row, **overrides}


def list_id_header(campaign, settings=SETTINGS) -> tuple[str, bytes]:
    """(the List-Id as a reader's mail client decodes it, the raw header block)."""
    raw = composer_for(campaign, settings).compose(9, "ann@example.org", {})
    head = raw.split(b"\r\n\r\n", 1)[0]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert len(message.get_all("List-Id")) == 1
    return str(message["List-Id"]), head


def test_the_list_id_is_the_first_lists_name_slugged_under_the_from_domain():
    value, head = list_id_header(campaign_row(audience={"lists": ["Spring News", "Other"]}))
    assert value == "Spring News <spring-news.example.com>"
    assert b"\r\nList-Id: Spring News <spring-news.example.com>\r\n" in head


def test_list_id_domain_moves_every_list_under_it():
    value, _ = list_id_header(campaign_row(), Settings(**{**SETTINGS.__dict__, "list_id_domain": "lists.example.com"}))
    assert value == "Newsletter <newsletter.lists.example.com>"
    assert Settings.from_env({"LIST_ID_DOMAIN": "Lists.Example.COM."}).list_id_domain == "lists.example.com"
    with pytest.raises(ConfigError, match="LIST_ID_DOMAIN"):
        Settings.from_env({"LIST_ID_DOMAIN": "not a domain"})


def test_a_hostile_list_name_cannot_add_a_header_or_break_the_phrase():
    value, head = list_id_header(campaign_row(audience={"lists": ['Deals"\r\nBcc: all@example.net <x>']}))
    lines = head.split(b"\r\n")
    assert not any(line.startswith(b"Bcc") for line in lines)
    assert all(len(line) <= 78 for line in lines if line.startswith(b"List-Id"))
    assert value == '"Deals\\" Bcc: all@example.net <x>" <deals-bcc-all-example-net-x.example.com>'


def test_a_non_ascii_name_is_encoded_words_and_keeps_a_stable_ascii_id():
    value, head = list_id_header(campaign_row(audience={"lists": ["Grüße aus Wien"]}))
    assert value == "Grüße aus Wien <grue-aus-wien.example.com>"
    assert b"=?utf-8?b?" in head
    assert head.isascii()
    cyrillic = derive_list_id("Новости", "news@example.com")
    assert cyrillic.label.startswith("list-")
    assert cyrillic == derive_list_id("Новости", "news@example.com")  # the same id for every campaign to it


def test_a_long_name_is_cut_for_people_and_folded_and_the_id_stays_within_rfc_2919():
    value, head = list_id_header(campaign_row(audience={"lists": ["Weekly " * 40]}))
    identity = derive_list_id("Weekly " * 40, "news@example.com")
    assert len(identity.label) <= 63
    assert len(identity.identifier) <= 255
    assert value.endswith(f"<{identity.identifier}>")
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


def test_a_definition_can_name_its_list_id_and_a_bad_one_is_refused_naming_the_field():
    value, _ = list_id_header(campaign_row(settings={"list_id": "Weekly digest <digest.lists.example.com>"}))
    assert value == "Weekly digest <digest.lists.example.com>"
    bare, _ = list_id_header(campaign_row(settings={"list_id": "digest.lists.example.com"}))
    assert bare == "<digest.lists.example.com>"

    parsed = CampaignDefinition.parse(inline_campaign(settings={"list_id": "digest.lists.example.com"}))
    assert parsed.settings == {"list_id": "digest.lists.example.com"}
    for bad in ("no-domain", "Digest <a b.example.com>", "x.example.com\r\nBcc: a@b.c", "<>"):
        with pytest.raises(CampaignDefinitionError, match=r"campaign\.settings\.list_id"):
            CampaignDefinition.parse(inline_campaign(settings={"list_id": bad}))
    with pytest.raises(CampaignDefinitionError, match=r"settings\.list_id must be a str"):
        CampaignDefinition.parse(inline_campaign(settings={"list_id": True}))


def test_the_feedback_id_tags_are_the_campaign_key_and_the_list_label_in_ses_tag_characters():
    composer = composer_for(campaign_row(key="spring.sale:20261201T0900Z", audience={"lists": ["VIP Club"]}),
                            SETTINGS)
    assert composer.feedback_tags == {"ses:feedback-id-a": "spring_sale_20261201T0900Z",
                                      "ses:feedback-id-b": "vip-club"}


def test_a_composer_without_a_campaign_list_still_writes_a_list_id_and_extra_headers_cannot_set_one():
    content = CampaignContent(campaign_id=12, subject="Hi", html="<p>x</p>", text=None, from_email="n@example.com")
    composer = Composer(content, tracking_base_url="https://t.example.test", codec=TokenCodec(["k"]))
    message = email.message_from_bytes(composer.compose(1, "a@example.org", {}), policy=email.policy.default)
    assert message["List-Id"] == "campaign-12 <campaign-12.example.com>"
    assert composer.feedback_tags["ses:feedback-id-a"] == "campaign-12"
    for name in ("List-Id", "Feedback-ID"):
        with pytest.raises(AddressProblem, match="set by the composer"):
            Composer(content, tracking_base_url="https://t.example.test", codec=TokenCodec(["k"]),
                     extra_headers={name: "x"})


def test_parse_list_id_refuses_control_characters():
    with pytest.raises(AddressProblem, match="list_id"):
        parse_list_id("News\n <news.example.com>")
