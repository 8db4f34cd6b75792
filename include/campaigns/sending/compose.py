"""One campaign's per-recipient message path: Jinja2 templates -> click/open tracking + unsubscribe -> raw MIME bytes.

Everything that is the same for every recipient is done once, when the Composer is built:

- The templates are compiled in Jinja2's immutable sandbox with StrictUndefined (syntax errors and obviously unsafe
  attribute access such as `''.__class__` raise TemplateProblem right there; anything the sandbox catches at render
  time raises TemplateProblem too). The html part is autoescaped, subject and text are not.
- Click tracking is decided from the html template *source*: every `<a>` whose literal href starts with http:// or
  https:// gets its href replaced by a template variable, so rendering fills in the recipient's tracked URL
  `{base}/c/{click_token}`. `links[link_id]` is the original URL (HTML entities decoded); identical URLs share an id,
  ids follow the order of first appearance. NOT tracked: hrefs containing template syntax (`{{`, `{%`, `{#`, which
  includes `{{ unsubscribe_url }}`), mailto: and other schemes, links carrying a `data-no-track` attribute (the
  attribute is removed from the output), hrefs spanning lines, and links inside `{% raw %}` or `{# #}`.
- The open pixel and, unless the template places `{{ unsubscribe_url }}` itself, an unsubscribe footer are
  inserted before `</body>` (or appended). With `view_in_browser_footer`, a "View this email in your browser" link
  (`{{ view_in_browser_url }}`, `{base}/v/{view_token}`: the tracking service shows that recipient's copy) goes
  before the unsubscribe footer, unless the template places `{{ view_in_browser_url }}` itself; both merge tags
  are reserved (merge data cannot override them) and the view token is only signed when a part uses it.
- The preheader (a one-line text template like the subject) becomes part of the compiled html template: the
  standard hidden block as the first thing inside `<body>`, its literal text html-escaped and its expressions
  autoescaped, so it costs no extra step per recipient. It is not in the text part.
- With `text=None` (or blank), the text part is derived ONCE from the html template: Jinja tags are shielded, the
  html is converted with inscriptis (links shown as `[label](url)`), and the tags are put back, giving a text
  template. Converting every rendered html would cost ~0.5 ms per email. If the derived template does not compile
  (e.g. an `{% if %}` opened inside an html comment and closed outside it), the text is converted from each rendered
  html instead.
- The MIME skeleton (From/Reply-To/List-Id/extra headers, boundary, part headers) is built once as bytes; per
  recipient only To, Subject, List-Unsubscribe and the two quoted-printable bodies are produced and joined. The
  output parses like the stdlib `EmailMessage(policy=SMTP)` build of the same content. No Date or Message-ID header
  is written: SES overwrites both (docs/deliverability.md).
- Every message carries a List-Id (campaigns.sending.list_id): the campaign's, else one derived from its key under
  the From domain. `feedback_tags` are the SES message tags from which SES writes the Feedback-ID header: the
  campaign's key and the List-Id's label.

Merge values that are None render as an empty string (contact attributes are often NULL). Missing merge fields
raise TemplateProblem on render unless the template guards them (`| default(...)`, `is defined`).

The pieces: addresses.py (address checks), templates.py (the sandbox, missing fields, html -> text), tracked_links.py
(link rewriting, pixel, footer) and mime.py (headers, skeleton, quoted-printable); this module puts them together.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, meta

from campaigns.errors import AddressProblem, TemplateProblem
from campaigns.feedback.tokens import TokenCodec
from campaigns.sending.addresses import normalize_address
from campaigns.sending.list_id import ListId, derive_list_id
from campaigns.sending.mime import HEADER_CONTROL, MimeSkeleton, qp_body, subject_value
from campaigns.sending.ses import feedback_tags
from campaigns.sending.templates import (
    BLANK_RUNS,
    RECORDED,
    RecordingUndefined,
    TemplatePart,
    environment,
    escape_text_template,
    html_to_text,
    text_source_from_html,
    unguarded_names,
)
from campaigns.sending.tracked_links import (
    CLICK_VAR,
    HTML_FOOTER,
    HTML_VIEW_FOOTER,
    OPEN_PIXEL,
    OPEN_VAR,
    RESERVED_PREFIX,
    RESERVED_VARS,
    TEXT_FOOTER,
    TEXT_VIEW_FOOTER,
    UNSUBSCRIBE_VAR,
    VIEW_VAR,
    insert_after_body_start,
    insert_before_body_end,
    preheader_block,
    rewrite_links,
)

log = logging.getLogger(__name__)

__all__ = ["AddressProblem", "CampaignContent", "Composer", "Rendered", "TemplateProblem", "normalize_address"]

_BASE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/-]*)?", re.I)


@dataclass(frozen=True)
class CampaignContent:
    """The campaign's templates and sender, as stored on the campaign."""

    campaign_id: int
    subject: str  # Jinja2 template
    html: str  # Jinja2 template
    text: str | None  # Jinja2 template; None or blank -> generated from the html (inscriptis)
    from_email: str
    from_name: str | None = None
    reply_to: str | None = None
    # Add an unsubscribe footer to each part whose template does not place {{ unsubscribe_url }}. When off, the
    # html template must place it (Composer refuses otherwise); a text template without it is left as written.
    auto_footer: bool = True
    preheader: str | None = None  # Jinja2 template, one line; None or blank -> no preheader
    # Add a "View this email in your browser" link to each part whose template does not place it.
    view_in_browser_footer: bool = False
    key: str | None = None  # the campaign's key: the Feedback-ID's campaign part (else "campaign-<id>")
    list_id: ListId | None = None  # None: derived from the key (or id) under the From domain


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's rendered subject, html and text, and the unsubscribe URL they carry."""

    subject: str
    html: str
    text: str
    unsubscribe_url: str


class Composer:
    """Renders and assembles one campaign's messages; build it once per campaign, call compose() per recipient."""

    def __init__(
        self,
        content: CampaignContent,
        *,
        tracking_base_url: str,
        codec: TokenCodec,
        track_opens: bool = True,
        track_clicks: bool = True,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.content = content
        self.campaign_id = content.campaign_id
        self._codec = codec
        self.track_opens = track_opens
        self.track_clicks = track_clicks
        base = tracking_base_url.strip().rstrip("/") if isinstance(tracking_base_url, str) else ""
        if _BASE_URL.fullmatch(base) is None or len(base) > 800:
            raise ValueError(f"tracking_base_url must be an http(s) URL without query or odd characters, "
                             f"got {tracking_base_url!r}")
        self.tracking_base_url = base
        self._click_prefix = f"{base}/c/"
        self._open_prefix = f"{base}/o/"
        self._unsubscribe_prefix = f"{base}/u/"
        self._view_prefix = f"{base}/v/"
        # validate the campaign id once (token encoding would refuse it per recipient otherwise)
        codec.open_token(content.campaign_id, 0)

        html_env = environment(autoescape=True)
        text_env = environment(autoescape=False)

        original_html = TemplatePart(html_env, "html", content.html)
        html_has_unsubscribe = UNSUBSCRIBE_VAR in meta.find_undeclared_variables(original_html.ast)
        if not html_has_unsubscribe and not content.auto_footer:
            raise TemplateProblem("html template must contain {{ unsubscribe_url }} when auto_footer is off "
                                  "(a visible unsubscribe link is required)", part="html")

        html_source, self.links = rewrite_links(content.html, track_clicks)
        view_footer = (content.view_in_browser_footer
                       and VIEW_VAR not in meta.find_undeclared_variables(original_html.ast))
        if view_footer:
            html_source = insert_before_body_end(html_source, HTML_VIEW_FOOTER)
        if not html_has_unsubscribe:
            html_source = insert_before_body_end(html_source, HTML_FOOTER)
        text_base_html = html_source  # the text part shows tracked links too, but never the pixel or the preheader
        if track_opens:
            html_source = insert_before_body_end(html_source, OPEN_PIXEL)
        self._preheader = _preheader_part(text_env, content.preheader)
        if self._preheader is not None:
            html_source = insert_after_body_start(html_source, preheader_block(
                escape_text_template(self._preheader.source)))
        self._click_vars = [CLICK_VAR.format(i) for i in range(len(self.links))]

        self._subject = TemplatePart(text_env, "subject", content.subject)
        self._html = TemplatePart(html_env, "html", html_source)
        self._text: TemplatePart | None
        # a blank text template (an empty form field) means "none given", like None
        self._text_derived = content.text is None or not content.text.strip()
        if not self._text_derived:
            self._text = _text_part(text_env, content)
        else:
            try:
                self._text = TemplatePart(text_env, "text", text_source_from_html(text_base_html))
            except TemplateProblem as exc:
                log.warning("campaign %s: text part will be converted per recipient (slower): %s",
                            content.campaign_id, exc)
                self._text = None

        parts = [self._subject, original_html] + [part for part in (self._preheader, self._text) if part is not None]
        required: set[str] = set()
        fields: set[str] = set()
        for part in parts:
            undeclared = meta.find_undeclared_variables(part.ast)
            unguarded = unguarded_names(part.ast)
            undeclared = {n for n in undeclared if n not in RESERVED_VARS and not n.startswith(RESERVED_PREFIX)}
            fields |= undeclared
            required |= undeclared & unguarded
        # the view token is one more signature per email: only sign it when a part shows the link
        self._uses_view = any(VIEW_VAR in meta.find_undeclared_variables(part.ast)
                              for part in (self._subject, self._html, self._text) if part is not None)
        self.fields = frozenset(fields)
        self.required_fields = frozenset(required)  # used outside `| default(...)` / `is defined`
        self._recording: list[TemplatePart] | None = None
        self._globals = dict(self._html.template.globals)
        self._qp_text: dict[str, str] = {}
        self._qp_html: dict[str, str] = {}
        self._recording_lock = threading.Lock()

        self.from_email = normalize_address(content.from_email, "from")
        family = content.key or f"campaign-{content.campaign_id}"
        self.list_id = content.list_id or derive_list_id(family, self.from_email)
        # the SES message tags SES turns into the Feedback-ID header (same for every message of the campaign)
        self.feedback_tags = feedback_tags(family, self.list_id.label)
        self._skeleton = MimeSkeleton.build(content.campaign_id, self.from_email, content.from_name, content.reply_to,
                                            extra_headers or {}, self.list_id)

    # -- per recipient -------------------------------------------------------------------------------------------

    def unsubscribe_url(self, recipient_id: int) -> str:
        """The one-click unsubscribe URL of this campaign's email to `recipient_id` (ledger row id)."""
        return self._unsubscribe_prefix + self._codec.unsubscribe_token(self.campaign_id, recipient_id)

    def _context(self, recipient_id: int, merge_data: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        open_token, unsubscribe_token, clicks = self._codec.message_tokens(
            self.campaign_id, recipient_id, len(self._click_vars))
        unsubscribe_url = self._unsubscribe_prefix + unsubscribe_token
        context = self._globals.copy()
        if merge_data:  # a NULL merge_data column arrives as None
            context.update(merge_data)
        context[UNSUBSCRIBE_VAR] = unsubscribe_url
        prefix = self._click_prefix
        for name, token in zip(self._click_vars, clicks, strict=True):
            context[name] = prefix + token
        if self.track_opens:
            context[OPEN_VAR] = f"{self._open_prefix}{open_token}.gif"
        if self._uses_view:
            context[VIEW_VAR] = self.view_in_browser_url(recipient_id)
        return context, unsubscribe_url

    def view_in_browser_url(self, recipient_id: int) -> str:
        """The "view in browser" URL of this campaign's email to `recipient_id` (ledger row id)."""
        return self._view_prefix + self._codec.view_token(self.campaign_id, recipient_id)

    def render(self, recipient_id: int, merge_data: Mapping[str, Any]) -> Rendered:
        """Subject, html and text for one recipient, strictly (a missing field raises TemplateProblem)."""
        return Rendered(*self._render(recipient_id, merge_data))

    def _render(self, recipient_id: int, merge_data: Mapping[str, Any]) -> tuple[str, str, str, str]:
        context, unsubscribe_url = self._context(recipient_id, merge_data)
        subject = self._subject.render(context).strip()
        if HEADER_CONTROL.search(subject):
            raise TemplateProblem("subject template: the rendered subject contains a line break or control "
                                  "character (check the merge data)", part="subject")
        html = self._html.render(context)
        if self._text is None:
            text = html_to_text(html)
        else:
            text = self._text.render(context)
            if self._text_derived and "\n\n\n" in text:
                # statement tags between blocks leave runs of empty lines that a direct conversion would not
                text = BLANK_RUNS.sub("\n\n", text)
        return subject, html, text, unsubscribe_url

    def compose(self, recipient_id: int, to_email: str, merge_data: Mapping[str, Any]) -> bytes:
        """The complete raw MIME message (CRLF, lines <= 998) for one recipient."""
        to = normalize_address(to_email).encode("ascii")
        subject, html, text, unsubscribe_url = self._render(recipient_id, merge_data)
        skeleton = self._skeleton
        return b"".join((
            skeleton.head, to,
            skeleton.after_to, subject_value(subject),
            skeleton.after_subject, unsubscribe_url.encode("ascii"),
            skeleton.after_unsubscribe, qp_body(text, self._qp_text),
            skeleton.between_parts, qp_body(html, self._qp_html),
            skeleton.tail,
        ))

    # -- preflight -----------------------------------------------------------------------------------------------

    def missing_fields(self, merge_data: Mapping[str, Any]) -> set[str]:
        """Template variables a render for this recipient would need but merge_data lacks.

        A name is only counted when the template uses it outside `| default(...)` / `is defined`. When the quick
        check finds candidates, a recording render confirms which ones this recipient's render really reaches (a
        field used only in an `{% if %}` branch not taken is not missing); if that render fails for another
        reason, all candidates are reported.
        """
        merge_data = merge_data or {}
        candidates = {name for name in self.required_fields if name not in merge_data}
        if not candidates:
            return set()
        recorded: set[str] = set()
        token = RECORDED.set(recorded)
        try:
            context, _url = self._context(0, merge_data)
            for part in self._recording_parts():
                part.render(context)
        except (TemplateProblem, ValueError):
            return candidates
        finally:
            RECORDED.reset(token)
        return recorded & candidates

    def _recording_parts(self) -> list[TemplatePart]:
        with self._recording_lock:
            if self._recording is None:
                html_env = environment(autoescape=True, undefined=RecordingUndefined)
                text_env = environment(autoescape=False, undefined=RecordingUndefined)
                parts = [TemplatePart(text_env, "subject", self._subject.source),
                         TemplatePart(html_env, "html", self._html.source)]
                if self._text is not None:
                    parts.append(TemplatePart(text_env, "text", self._text.source))
                self._recording = parts
            return self._recording


def _preheader_part(env: Environment, source: str | None) -> TemplatePart | None:
    """The preheader compiled on its own (so its errors name it), or None when there is none; one line only."""
    if source is None or not source.strip():
        return None
    if "\n" in source or "\r" in source:
        raise TemplateProblem("preheader template: the preheader must be one line (no line breaks)", part="preheader")
    return TemplatePart(env, "preheader", source.strip())


def _text_part(env: Environment, content: CampaignContent) -> TemplatePart:
    """The campaign's own text template, with the footers it lacks (and the settings ask for) added."""
    source = content.text or ""
    probe = TemplatePart(env, "text", source)
    used = meta.find_undeclared_variables(probe.ast)
    footers = ""
    if content.view_in_browser_footer and VIEW_VAR not in used:
        footers += TEXT_VIEW_FOOTER
    if UNSUBSCRIBE_VAR not in used and content.auto_footer:
        footers += TEXT_FOOTER
    if not footers:
        return probe
    return TemplatePart(env, "text", source.rstrip("\n") + footers.rstrip("\n") + "\n")
