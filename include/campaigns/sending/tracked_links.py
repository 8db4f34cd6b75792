"""Click and open tracking in the html template source: tracked hrefs become template variables, the open pixel and
the footers (unsubscribe, "view in browser") are inserted before `</body>`, the hidden preheader right after
`<body>` (the rules are in compose.py's docstring).
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator

from campaigns.sending.templates import JINJA_TAGS

UNSUBSCRIBE_VAR = "unsubscribe_url"
VIEW_VAR = "view_in_browser_url"
# Merge tags the Composer fills in per recipient: never merge fields, and merge data cannot override them.
RESERVED_VARS = frozenset({UNSUBSCRIBE_VAR, VIEW_VAR})
# Internal template variables; merge data cannot override them (they are set after it).
CLICK_VAR = "__cmp_click_{}"
OPEN_VAR = "__cmp_open_url"
RESERVED_PREFIX = "__cmp_"

# A start tag `<a ...>` in template source; Jinja tags inside it may contain `>`, `<` or quotes. Every alternative
# starts with a different character, the repetition is possessive and a stray `<` ends the attempt, so matching
# stays linear even for broken markup (an attribute value holding `<` leaves that link untracked).
_A_TAG = re.compile(
    r"""<a(?=[\s>/])(?P<attrs>(?:[^<>"'{]|"[^"<]*"|'[^'<]*'|""" + JINJA_TAGS + r"""|\{(?![{%\#]))*+)>""",
    re.I,
)
_ATTR = re.compile(
    r"""(?P<jinja>""" + JINJA_TAGS + r""")"""
    r"""|(?P<ws>\s+)"""
    r"""|(?P<name>[^\s"'>/={]+)(?:\s*=\s*(?P<value>"[^"]*"|'[^']*'|[^\s"'>]+))?"""
    r"""|(?P<other>.)""",
    re.S,
)
_RAW_OR_COMMENT = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|\{\#.*?\#\}", re.S)
_TEMPLATE_SYNTAX = ("{{", "{%", "{#")
_BODY_END = re.compile(r"</body\s*>", re.I)
_BODY_START = re.compile(r"<body(?=[\s>/])[^>]*>", re.I)

OPEN_PIXEL = '<img src="{{ ' + OPEN_VAR + ' }}" width="1" height="1" alt="" style="display:none">'
HTML_FOOTER = (
    '<p style="margin:24px 0 0;font-size:12px;line-height:18px;color:#6b7280;text-align:center">'
    'Don\'t want these emails? <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)
TEXT_FOOTER = "\n\nUnsubscribe: {{ unsubscribe_url }}\n"
HTML_VIEW_FOOTER = (
    '<p style="margin:24px 0 0;font-size:12px;line-height:18px;color:#6b7280;text-align:center">'
    '<a href="{{ view_in_browser_url }}">View this email in your browser</a></p>'
)
TEXT_VIEW_FOOTER = "\n\nView this email in your browser: {{ view_in_browser_url }}"

# The hidden preview text inbox apps show after the subject: the first thing inside <body>, hidden everywhere
# (mso-hide for Outlook), then zero-width-joiner + no-break-space padding so the apps do not fill the rest of the
# preview with the body's first words. messages.read_message finds the text by PREHEADER_START. No tiny font
# (font-size:1px): SpamAssassin counts text in it as invisible text (FONT_INVIS_MSGID), and display:none, zero size
# and mso-hide already hide it in every client.
PREHEADER_START = ('<div data-preheader style="display:none;max-height:0;max-width:0;opacity:0;overflow:hidden;'
                   'mso-hide:all">')
PREHEADER_END = "</div>"
_PREHEADER_PADDING = ('<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
                      + "&zwnj;&nbsp;" * 90 + "</div>")


def _a_tags(source: str) -> Iterator[re.Match[str]]:
    """The `<a>` start tags of compiled template source, outside `{% raw %}` blocks and `{# #}` comments."""
    # Outside those, every Jinja tag is closed (the source compiled), which keeps each match attempt short.
    start = 0
    for skipped in _RAW_OR_COMMENT.finditer(source):
        yield from _A_TAG.finditer(source, start, skipped.start())
        start = skipped.end()
    yield from _A_TAG.finditer(source, start)


def rewrite_links(source: str, track: bool) -> tuple[str, list[str]]:
    """Replace tracked hrefs with click variables and drop data-no-track; returns (source, links)."""
    link_ids: dict[str, int] = {}
    out: list[str] = []
    last = 0
    for tag in _a_tags(source):
        attrs_start = tag.start("attrs")
        new_attrs: list[str] = []
        href_done = no_track = False
        href_at: int | None = None
        href_url: str | None = None
        pending_ws = ""
        for token in _ATTR.finditer(tag.group("attrs")):
            if token.group("ws") is not None:
                pending_ws = token.group(0)  # emitted with the next token, dropped with data-no-track
                continue
            name = token.group("name")
            if name is not None and name.lower() == "data-no-track":
                no_track = True
                pending_ws = ""
                continue
            new_attrs.append(pending_ws)
            pending_ws = ""
            value = token.group("value")
            if name is not None and not href_done and name.lower() == "href" and value is not None:
                href_done = True
                raw = value[1:-1] if value[:1] in ('"', "'") else value
                url = raw.strip()
                if (url.lower().startswith(("http://", "https://")) and "\n" not in raw
                        and not any(mark in url for mark in _TEMPLATE_SYNTAX)):
                    href_at = len(new_attrs)
                    href_url = html_lib.unescape(url)
            new_attrs.append(token.group(0))
        new_attrs.append(pending_ws)
        if track and href_at is not None and href_url is not None and not no_track:
            link_id = link_ids.setdefault(href_url, len(link_ids))
            name_part = new_attrs[href_at].split("=", 1)[0]
            new_attrs[href_at] = f'{name_part}="{{{{ {CLICK_VAR.format(link_id)} }}}}"'
        elif not no_track:
            continue  # nothing changed in this tag
        out.append(source[last:attrs_start])
        out.append("".join(new_attrs))
        last = tag.end("attrs")
    out.append(source[last:])
    return "".join(out), list(link_ids)


def insert_after_body_start(source: str, snippet: str) -> str:
    """`snippet` put right after the first `<body ...>` tag of `source`, or prepended when there is none."""
    start = _BODY_START.search(source)
    at = start.end() if start else 0
    return source[:at] + snippet + source[at:]


def preheader_block(preheader_source: str) -> str:
    """The hidden preheader block around an (html-safe) preheader template, each div on its own line (the
    padding line is then the same bytes in every message, which the quoted-printable line cache keeps)."""
    return f"\n{PREHEADER_START}{preheader_source}{PREHEADER_END}\n{_PREHEADER_PADDING}\n"


def insert_before_body_end(source: str, snippet: str) -> str:
    """`snippet` put before the last `</body>` of `source`, or appended when there is none."""
    ends = list(_BODY_END.finditer(source))
    if not ends:
        return source + snippet
    at = ends[-1].start()
    return source[:at] + snippet + source[at:]
