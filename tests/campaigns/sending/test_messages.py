"""Preheader, "view in browser" and a composed message read back: what inbox apps and the preview pages show."""

from __future__ import annotations

import re

import pytest

from campaigns.config import get_settings
from campaigns.feedback.tokens import VIEW, TokenCodec
from campaigns.sending.compose import CampaignContent, Composer, TemplateProblem
from campaigns.sending.messages import composer_for, read_message

BASE = "https://track.example.test"
CODEC = TokenCodec(["test-signing-key"])
HTML = ('<html><head><title>News</title></head><body style="margin:0">\n<h1>Hello {{ first_name }}!</h1>\n'
        '<p><a href="https://shop.example.com/sale">Shop the sale</a></p>\n</body></html>')
DATA = {"first_name": "Ann", "coupon": "SPRING"}


def composer(**overrides) -> Composer:
    options = {key: overrides.pop(key) for key in ("track_opens", "track_clicks") if key in overrides}
    values = {"campaign_id": 12, "subject": "News for {{ first_name }}", "html": HTML, "text": None,
              "from_email": "news@example.com", "from_name": "Example News"}
    return Composer(CampaignContent(**{**values, **overrides}), tracking_base_url=BASE, codec=CODEC, **options)


def _body_start(html: str) -> str:
    """What follows the <body> tag."""
    return html.split('<body style="margin:0">', 1)[1]


# -- preheader ---------------------------------------------------------------------------------------------------


def test_preheader_is_the_hidden_block_first_inside_body_rendered_per_recipient():
    built = composer(preheader="{{ first_name }}, your code {{ coupon }} is inside")
    message = read_message(built.compose(7, "ann@example.com", DATA))
    assert message.preheader == "Ann, your code SPRING is inside"
    block = _body_start(message.html).lstrip("\n")
    first_div = block[:block.index(">") + 1]
    assert first_div.startswith("<div ")
    for rule in ("display:none", "max-height:0", "overflow:hidden", "mso-hide:all"):
        assert rule in first_div
    # the padding right after it keeps the body's first words out of the inbox preview
    after = block.split("Ann, your code SPRING is inside</div>", 1)[1]
    assert after.lstrip("\n").startswith("<div style=\"display:none")
    assert after.count("&zwnj;&nbsp;") >= 50
    assert after.index("&zwnj;&nbsp;") < after.index("<h1>Hello Ann!</h1>")
    other = read_message(built.compose(8, "bob@example.com", {"first_name": "Bob", "coupon": "X1"}))
    assert other.preheader == "Bob, your code X1 is inside"


@pytest.mark.parametrize("text", [None, "Hello {{ first_name }}\n"])
def test_preheader_is_not_in_the_text_part(text):
    message = read_message(composer(preheader="Secret preview {{ coupon }}", text=text)
                           .compose(7, "ann@example.com", DATA))
    assert message.preheader == "Secret preview SPRING"
    assert "Secret preview" not in message.text
    assert "Hello Ann" in message.text


def test_preheader_text_and_merge_values_are_html_escaped_and_read_back_as_written():
    built = composer(preheader='Tom & Jerry <3 "{{ first_name }}" {{ missing | default("<none>") }}')
    message = read_message(built.compose(7, "ann@example.com", {"first_name": "<b>Ann</b> & co"}))
    assert message.preheader == 'Tom & Jerry <3 "<b>Ann</b> & co" <none>'
    assert "<b>Ann" not in message.html
    assert "Tom &amp; Jerry &lt;3" in message.html


@pytest.mark.parametrize("preheader", ["line one\nline two", "carriage\rreturn", "crlf\r\nhere"])
def test_preheader_with_a_line_break_is_refused_naming_the_preheader(preheader):
    with pytest.raises(TemplateProblem, match=r"preheader.*one line") as caught:
        composer(preheader=preheader)
    assert caught.value.part == "preheader"


def test_preheader_template_error_names_the_preheader():
    with pytest.raises(TemplateProblem, match="preheader template") as caught:
        composer(preheader="Hi {{ first_name ")
    assert caught.value.part == "preheader"


def test_preheader_merge_fields_count_as_campaign_fields_and_are_reported_missing():
    built = composer(preheader="Your code: {{ coupon }}")
    assert "coupon" in built.fields
    assert built.missing_fields({"first_name": "Ann"}) == {"coupon"}
    assert built.missing_fields(DATA) == set()
    with pytest.raises(TemplateProblem, match="coupon"):
        built.compose(7, "ann@example.com", {"first_name": "Ann"})


@pytest.mark.parametrize("preheader", [None, "", "   "])
def test_no_or_blank_preheader_adds_nothing(preheader):
    message = read_message(composer(preheader=preheader).compose(7, "ann@example.com", DATA))
    assert message.preheader == ""
    assert "data-preheader" not in message.html
    assert _body_start(message.html).startswith("\n<h1>")


def test_preheader_goes_first_in_html_without_a_body_tag():
    message = read_message(composer(html="<p>Hi {{ first_name }}</p>", preheader="Short {{ first_name }}")
                           .compose(7, "ann@example.com", DATA))
    assert message.html.lstrip("\n").startswith("<div data-preheader")
    assert message.preheader == "Short Ann"


# -- view in browser ---------------------------------------------------------------------------------------------


def _view_urls(html: str) -> list[str]:
    return re.findall(re.escape(BASE) + r"/v/[A-Za-z0-9_-]+", html)


def test_view_in_browser_merge_tag_is_the_recipients_signed_url_and_cannot_be_overridden():
    built = composer(html='<body><a href="{{ view_in_browser_url }}">Open in browser</a>'
                          '<a href="https://shop.example.com/">Shop</a></body>')
    assert "view_in_browser_url" not in built.fields
    assert built.links == ["https://shop.example.com/"]  # its own link is never click-tracked
    message = read_message(built.compose(7, "ann@example.com", {**DATA, "view_in_browser_url": "https://evil.example/"}))
    [url] = _view_urls(message.html)
    assert url == built.view_in_browser_url(7)
    payload = CODEC.decode(VIEW, url.rsplit("/", 1)[1])
    assert (payload.campaign_id, payload.recipient_id) == (12, 7)
    assert "evil.example" not in message.html


@pytest.mark.parametrize("text", [None, "Hello {{ first_name }}\n"])
def test_view_in_browser_footer_puts_the_link_in_both_parts_before_the_unsubscribe_footer(text):
    built = composer(view_in_browser_footer=True, text=text)
    message = read_message(built.compose(7, "ann@example.com", DATA))
    url = built.view_in_browser_url(7)
    assert f'<a href="{url}">View this email in your browser</a>' in message.html
    assert message.html.index("View this email") < message.html.index("Unsubscribe")
    assert url in message.text
    assert message.text.index(url) < message.text.index("Unsubscribe")


def test_without_the_footer_setting_a_message_has_no_view_link_at_all():
    message = read_message(composer().compose(7, "ann@example.com", DATA))
    assert "/v/" not in message.html
    assert "/v/" not in message.text


def test_view_in_browser_footer_is_not_added_twice_when_the_template_places_the_link():
    built = composer(view_in_browser_footer=True,
                     html='<body><a href="{{ view_in_browser_url }}">Web version</a><p>Hi</p></body>')
    message = read_message(built.compose(7, "ann@example.com", DATA))
    assert "View this email in your browser" not in message.html
    assert _view_urls(message.html) == [built.view_in_browser_url(7)]


# -- the composer from a stored campaign, and a message read back ------------------------------------------------


def _campaign_row(**overrides) -> dict:
    row = {"id": 12, "subject": "News for {{ first_name }}", "html": HTML, "text": None,
           "from_email": "news@example.com", "from_name": "Example News", "reply_to": None,
           "preheader": "Hi {{ first_name }}, the sale ends Sunday", "settings": {"view_in_browser_footer": True}}
    row.update(overrides)
    return row


def test_composer_for_reads_the_preheader_and_the_view_in_browser_footer_setting(settings):
    message = read_message(composer_for(_campaign_row(), settings).compose(7, "ann@example.com", DATA))
    assert message.preheader == "Hi Ann, the sale ends Sunday"
    assert "View this email in your browser" in message.html
    plain = read_message(composer_for(_campaign_row(preheader=None, settings={}), get_settings())
                         .compose(7, "ann@example.com", DATA))
    assert (plain.preheader, "View this email" in plain.html) == ("", False)


def test_a_message_read_back_equals_what_compose_produced(settings):
    built = composer_for(_campaign_row(subject="Grüße {{ first_name }} — the sale", reply_to="reply@example.com"),
                         settings)
    data = {"first_name": "Zoë & <Ann>"}
    rendered = built.render(7, data)
    message = read_message(built.compose(7, "zoe@example.com", data))
    assert message.subject == rendered.subject == "Grüße Zoë & <Ann> — the sale"
    assert message.preheader == "Hi Zoë & <Ann>, the sale ends Sunday"
    # a MIME body ends with a line break (as EmailMessage.set_content writes it); the rest is exactly the render
    assert message.html == rendered.html + "\n"
    assert message.text == rendered.text + ("" if rendered.text.endswith("\n") else "\n")
    headers = dict(message.headers)
    assert headers["List-Unsubscribe"] == f"<{rendered.unsubscribe_url}>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["To"] == "zoe@example.com"
    assert headers["Reply-To"] == "reply@example.com"
