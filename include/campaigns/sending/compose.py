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
  inserted before `</body>` (or appended).
- With `text=None` (or blank), the text part is derived ONCE from the html template: Jinja tags are shielded, the
  html is converted with inscriptis (links shown as `[label](url)`), and the tags are put back, giving a text
  template. Converting every rendered html would cost ~0.5 ms per email. If the derived template does not compile
  (e.g. an `{% if %}` opened inside an html comment and closed outside it), the text is converted from each rendered
  html instead.
- The MIME skeleton (From/Reply-To/extra headers, boundary, part headers) is built once as bytes; per recipient
  only To, Subject, List-Unsubscribe and the two quoted-printable bodies are produced and joined. The output
  parses like the stdlib `EmailMessage(policy=SMTP)` build of the same content. No Date or Message-ID header is
  written: SES sets both.

Merge values that are None render as an empty string (contact attributes are often NULL). Missing merge fields
raise TemplateProblem on render unless the template guards them (`| default(...)`, `is defined`).
"""

from __future__ import annotations

import binascii
import contextvars
import html as html_lib
import logging
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

import idna
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import ChainableUndefined, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from campaigns.errors import AddressProblem, TemplateProblem
from campaigns.feedback.tokens import TokenCodec

log = logging.getLogger(__name__)

__all__ = ["AddressProblem", "CampaignContent", "Composer", "Rendered", "TemplateProblem", "normalize_address"]

UNSUBSCRIBE_VAR = "unsubscribe_url"
# Internal template variables; merge data cannot override them (they are set after it).
_CLICK_VAR = "__cmp_click_{}"
_OPEN_VAR = "__cmp_open_url"
_RESERVED_PREFIX = "__cmp_"

# Headers the Composer writes itself (or SES does); extra_headers may not set them.
_MANAGED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "sender", "subject", "mime-version", "content-type",
    "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post", "return-path", "date", "message-id",
})
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext
_MAX_LINE = 998

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ADDRESS = re.compile(rf"{_LOCAL_PART.pattern}@{_DOMAIN.pattern}")
_BASE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/-]*)?", re.I)
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Jinja tags, each ending at its first closing delimiter. Unambiguous on purpose: with `.*?` an unclosed `<a`
# holding many `{{ }}` made the tag pattern backtrack exponentially.
_JINJA_TAGS = r"\{\{(?:[^}]|\}(?!\}))*\}\}|\{%(?:[^%]|%(?!\}))*%\}|\{\#(?:[^#]|\#(?!\}))*\#\}"
# A start tag `<a ...>` in template source; Jinja tags inside it may contain `>`, `<` or quotes. Every alternative
# starts with a different character, the repetition is possessive and a stray `<` ends the attempt, so matching
# stays linear even for broken markup (an attribute value holding `<` leaves that link untracked).
_A_TAG = re.compile(
    r"""<a(?=[\s>/])(?P<attrs>(?:[^<>"'{]|"[^"<]*"|'[^'<]*'|""" + _JINJA_TAGS + r"""|\{(?![{%\#]))*+)>""",
    re.I,
)
_ATTR = re.compile(
    r"""(?P<jinja>""" + _JINJA_TAGS + r""")"""
    r"""|(?P<ws>\s+)"""
    r"""|(?P<name>[^\s"'>/={]+)(?:\s*=\s*(?P<value>"[^"]*"|'[^']*'|[^\s"'>]+))?"""
    r"""|(?P<other>.)""",
    re.S,
)
_RAW_OR_COMMENT = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|\{\#.*?\#\}", re.S)
_JINJA_TAG = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|" + _JINJA_TAGS, re.S)
_TEMPLATE_SYNTAX = ("{{", "{%", "{#")
_BODY_END = re.compile(r"</body\s*>", re.I)
_BLANK_RUNS = re.compile(r"\n(?:[ \t]*\n){2,}")
_LITERAL_BRACE = re.compile(r"\{(?=[{%#]|$)")
_TEXT_CONFIG = ParserConfig(display_links=True)

_OPEN_PIXEL = '<img src="{{ ' + _OPEN_VAR + ' }}" width="1" height="1" alt="" style="display:none">'
_HTML_FOOTER = (
    '<p style="margin:24px 0 0;font-size:12px;line-height:18px;color:#6b7280;text-align:center">'
    'Don\'t want these emails? <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)
_TEXT_FOOTER = "\n\nUnsubscribe: {{ unsubscribe_url }}\n"

# QP spelling of every byte: printable ASCII, space and tab as is, everything else (and '=') as =XX
_QP_BYTE = tuple(chr(b) if (33 <= b <= 126 and b != 61) or b in (9, 32) else f"={b:02X}" for b in range(256))
_QP_CACHE_LINES = 4096  # per part; static template lines fill it during the first renders
_MAX_REPEAT = 100_000  # longest str/list a template may build with `*`
_MAX_EXPONENT = 1_000
_EW_CHUNK = 42  # bytes per RFC 2047 encoded word: "Subject: " + 10 + 56 + 2 stays within 78 columns


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


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's rendered subject, html and text, and the unsubscribe URL they carry."""

    subject: str
    html: str
    text: str
    unsubscribe_url: str


def normalize_address(address: str, what: str = "recipient") -> str:
    """The address as it may go into a header (IDN domain as punycode); AddressProblem if it cannot."""
    if not isinstance(address, str):
        raise AddressProblem(f"{what} address must be a string, got {type(address).__name__}")
    if "\r" in address or "\n" in address:
        raise AddressProblem(f"{what} address contains a line break (CR/LF)")
    addr = address.strip()
    match = _ADDRESS.fullmatch(addr)
    if match is not None and len(addr) <= 254 and addr.index("@") <= 64:
        return addr
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise AddressProblem(f"{what} address {address!r} is not an email address")
    if not local.isascii():
        raise AddressProblem(f"{what} address {address!r} has a non-ASCII local part (SES cannot send SMTPUTF8)")
    if _LOCAL_PART.fullmatch(local) is None or len(local) > 64:
        raise AddressProblem(f"{what} address {address!r} has an invalid local part (quoted forms are not supported)")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise AddressProblem(f"{what} address {address!r} has an invalid international domain: {exc}") from exc
    if _DOMAIN.fullmatch(domain) is None:
        raise AddressProblem(f"{what} address {address!r} has an invalid domain")
    addr = f"{local}@{domain}"
    if len(addr) > 254:
        raise AddressProblem(f"{what} address {address!r} is longer than 254 characters")
    return addr


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox (templates cannot mutate merge data either) with `*` and `**` capped."""

    # Without a cap one expression such as {{ 'x' * 10**10 }} takes the whole worker's memory.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse repetitions and powers that would build enormous values."""
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if (isinstance(sequence, str | list | tuple) and isinstance(count, int)
                        and len(sequence) * count > _MAX_REPEAT):
                    raise SecurityError(f"repetition would build more than {_MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)


def _environment(*, autoescape: bool, undefined: type = StrictUndefined) -> _Sandbox:
    return _Sandbox(undefined=undefined, autoescape=autoescape, finalize=_none_as_empty)


_RECORDED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("campaigns_compose_recorded", default=None)


class _RecordingUndefined(ChainableUndefined):
    """Undefined that notes the top-level variable names a render actually uses (for missing_fields)."""

    __slots__ = ()

    def _record(self) -> None:
        if self._undefined_obj is missing and self._undefined_name is not None:
            recorded = _RECORDED.get()
            if recorded is not None:
                recorded.add(self._undefined_name)

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
        self._record()
        return super()._fail_with_undefined_error(*args, **kwargs)

    def __str__(self) -> str:
        self._record()
        return ""

    def __html__(self) -> str:
        return str(self)

    def __iter__(self) -> Any:
        self._record()
        return iter(())

    def __bool__(self) -> bool:
        self._record()
        return False

    def __len__(self) -> int:
        self._record()
        return 0

    # StrictUndefined fails on these too, so a render that reaches them needs the field
    def __eq__(self, other: object) -> bool:
        self._record()
        return type(self) is type(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        self._record()
        return id(type(self))

    def __contains__(self, item: object) -> bool:
        self._record()
        return False


def _template_line(exc: BaseException, filename: str) -> int | None:
    """The template line of a Jinja error: syntax errors carry it, runtime errors have it in the traceback."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line = None
    tb = exc.__traceback__
    while tb is not None:
        # Jinja rewrites tracebacks so that template frames carry the template's file name and line
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _problem(part: str, exc: BaseException, *, line: int | None = None) -> TemplateProblem:
    if line is None:
        line = _template_line(exc, _filename(part))
    where = f"{part} template" + (f", line {line}" if line else "")
    message = exc.message if isinstance(exc, TemplateError) and exc.message else str(exc)
    return TemplateProblem(f"{where}: {type(exc).__name__}: {message}", part=part, line=line)


def _filename(part: str) -> str:
    return f"<{part} template>"


class _Part:
    """One compiled template part (subject, html or text) and the source it was compiled from."""

    __slots__ = ("ast", "name", "source", "template")

    def __init__(self, env: _Sandbox, name: str, source: str) -> None:
        self.name = name
        self.source = source
        try:
            self.ast = env.parse(source, name=name, filename=_filename(name))
            _reject_unsafe_names(self.ast, name)
            code = env.compile(self.ast, name=name, filename=_filename(name))
        except TemplateProblem:
            raise
        except TemplateError as exc:
            raise _problem(name, exc) from exc
        self.template = env.template_class.from_code(env, code, env.make_globals(None))
        # a plain dict: every render builds a Context, which takes set(globals), slow on the default ChainMap
        self.template.globals = dict(self.template.globals)

    def render(self, context: dict[str, Any]) -> str:
        """Render with `context` (globals included); any failure of template code becomes TemplateProblem."""
        template = self.template
        try:
            # Template.render() would copy globals + context for every part; one shared dict serves all three
            # parts of an email (templates write their own variables to the Context, never to this dict).
            return "".join(template.root_render_func(template.new_context(context, shared=True)))
        except Exception:  # template code can raise anything (TypeError, ZeroDivisionError, ...)
            try:
                template.environment.handle_exception()  # re-raises with template lines in the traceback
            except Exception as exc:
                raise _problem(self.name, exc) from exc
            raise  # unreachable: handle_exception always raises


def _reject_unsafe_names(ast: nodes.Template, part: str) -> None:
    """Fail at compile time for what the sandbox would refuse at render time: attributes starting with `_`."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            raise TemplateProblem(
                f"{part} template, line {node.lineno}: access to attribute {attr!r} is not allowed (sandbox)",
                part=part, line=node.lineno,
            )


def _unguarded_names(ast: nodes.Template) -> set[str]:
    """Names used somewhere NOT directly under `| default(...)` / `is defined` (those are optional fields)."""
    guarded: set[int] = set()
    for node in ast.find_all((nodes.Filter, nodes.Test)):
        if node.name in ("default", "d", "defined", "undefined") and isinstance(node.node, nodes.Name):
            guarded.add(id(node.node))
    return {name.name for name in ast.find_all(nodes.Name) if name.ctx == "load" and id(name) not in guarded}


def _a_tags(source: str) -> Iterator[re.Match[str]]:
    """The `<a>` start tags of compiled template source, outside `{% raw %}` blocks and `{# #}` comments."""
    # Outside those, every Jinja tag is closed (the source compiled), which keeps each match attempt short.
    start = 0
    for skipped in _RAW_OR_COMMENT.finditer(source):
        yield from _A_TAG.finditer(source, start, skipped.start())
        start = skipped.end()
    yield from _A_TAG.finditer(source, start)


def _rewrite_links(source: str, track: bool) -> tuple[str, list[str]]:
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
            new_attrs[href_at] = f'{name_part}="{{{{ {_CLICK_VAR.format(link_id)} }}}}"'
        elif not no_track:
            continue  # nothing changed in this tag
        out.append(source[last:attrs_start])
        out.append("".join(new_attrs))
        last = tag.end("attrs")
    out.append(source[last:])
    return "".join(out), list(link_ids)


def _insert_before_body_end(source: str, snippet: str) -> str:
    ends = list(_BODY_END.finditer(source))
    if not ends:
        return source + snippet
    at = ends[-1].start()
    return source[:at] + snippet + source[at:]


def _html_to_text(html: str) -> str:
    """inscriptis' text of `html`, without the padding it gives table cells and without runs of blank lines."""
    text = get_text(html, _TEXT_CONFIG)
    # trailing blanks only cost bytes (and =20 escapes); email layouts are tables, so there are many
    return _BLANK_RUNS.sub("\n\n", "\n".join(line.rstrip() for line in text.split("\n")))


def _text_source_from_html(source: str) -> str:
    """A text template from an html template: shield the Jinja tags, convert with inscriptis, restore the tags."""
    marker = f"JINJA{secrets.token_hex(6).upper()}N"
    blocks: list[str] = []

    def shield(match: re.Match[str]) -> str:
        blocks.append(match.group(0))
        return f"{marker}{len(blocks) - 1}X"

    text = _html_to_text(_JINJA_TAG.sub(shield, source))
    pieces = re.split(rf"{marker}(\d+)X", text)
    # Literal braces produced by the conversion (e.g. from &#123;) must not turn into template syntax.
    return "".join(blocks[int(piece)] if i % 2 else _LITERAL_BRACE.sub("{{ '{' }}", piece)
                   for i, piece in enumerate(pieces))


def _qp_line(line: str) -> str:
    """One line (no line break) as quoted-printable, soft-wrapped at 76 columns with CRLF.

    Hand-rolled because binascii.b2a_qp is slow (a byte loop, ~12 us per KB) and can exceed 76 columns when it
    encodes trailing white space; this gives the same decoded text as the stdlib's encoder.
    """
    if line.isascii() and line.isprintable():
        encoded = line.replace("=", "=3D")  # printable ASCII: '=' is the only character that needs escaping
    else:
        encoded = "".join([_QP_BYTE[byte] for byte in line.encode("utf-8")])
    if encoded.endswith((" ", "\t")):  # trailing white space would be stripped in transit
        encoded = encoded[:-1] + ("=20" if encoded[-1] == " " else "=09")
    if len(encoded) <= 76:
        return encoded
    chunks: list[str] = []
    start, end = 0, len(encoded)
    while end - start > 76:
        stop = start + 75  # 75 characters + the soft break '=' = 76
        escape = encoded.rfind("=", stop - 2, stop)
        if escape != -1:  # every '=' starts an =XX escape: never split one across a soft break
            stop = escape
        chunks.append(encoded[start:stop])
        start = stop
    chunks.append(encoded[start:])
    return "=\r\n".join(chunks)


def _qp_body(text: str, cache: dict[str, str]) -> bytes:
    """Quoted-printable body with CRLF line ends and a final line break, like EmailMessage.set_content.

    Most lines of a campaign's body are the same for every recipient, so lines are encoded one by one through
    `cache` (QP's line state resets at every hard line break, so per-line encoding is exact). Regular expressions
    over the whole body were tried and are several times slower than this loop.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "" and len(lines) > 1:
        lines.pop()  # the final line break is added back below (an empty body still gets one, as in the stdlib)
    get = cache.get
    encoded = [hit if (hit := get(line)) is not None else _qp_miss(line, cache) for line in lines]
    encoded.append("")
    return "\r\n".join(encoded).encode("ascii")


def _qp_miss(line: str, cache: dict[str, str]) -> str:
    encoded = _qp_line(line)
    if len(cache) < _QP_CACHE_LINES:  # static lines arrive first; a full cache just stops growing
        cache[line] = encoded
    return encoded


def _subject_value(subject: str) -> bytes:
    """The Subject header value: plain ASCII folded at spaces, or RFC 2047 base64 words when that cannot work."""
    if subject.isascii() and "=?" not in subject and subject.isprintable():
        if len(subject) <= 69:  # "Subject: " + 69 = 78 columns
            return subject.encode("ascii")
        lines: list[str] = []
        current = ""
        for word in subject.split(" "):
            if not current:
                current = word if not lines else " " + word
            elif len(current) + 1 + len(word) <= 69 or not word:
                current += " " + word
            else:
                lines.append(current)
                current = " " + word  # the folding white space is the original space: unfolding restores it
        lines.append(current)
        if all(len(line) <= _MAX_LINE - 10 and line.strip() for line in lines):
            return "\r\n".join(lines).encode("ascii")
    data = subject.encode("utf-8")
    words: list[bytes] = []
    start, end = 0, len(data)
    while start < end:
        stop = min(start + _EW_CHUNK, end)
        while stop < end and (data[stop] & 0xC0) == 0x80:  # never split a UTF-8 sequence between words
            stop -= 1
        words.append(b"=?utf-8?b?" + binascii.b2a_base64(data[start:stop], newline=False) + b"?=")
        start = stop
    return b"\r\n ".join(words)


def _check_header_text(value: str, what: str) -> None:
    if _HEADER_CONTROL.search(value):
        raise AddressProblem(f"{what} contains a line break or control character")


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
        # validate the campaign id once (token encoding would refuse it per recipient otherwise)
        codec.open_token(content.campaign_id, 0)

        html_env = _environment(autoescape=True)
        text_env = _environment(autoescape=False)

        original_html = _Part(html_env, "html", content.html)
        html_has_unsubscribe = UNSUBSCRIBE_VAR in meta.find_undeclared_variables(original_html.ast)
        if not html_has_unsubscribe and not content.auto_footer:
            raise TemplateProblem("html template must contain {{ unsubscribe_url }} when auto_footer is off "
                                  "(a visible unsubscribe link is required)", part="html")

        html_source, self.links = _rewrite_links(content.html, track_clicks)
        if not html_has_unsubscribe:
            html_source = _insert_before_body_end(html_source, _HTML_FOOTER)
        text_base_html = html_source  # the text part shows tracked links too, but never the pixel
        if track_opens:
            html_source = _insert_before_body_end(html_source, _OPEN_PIXEL)
        self._click_vars = [_CLICK_VAR.format(i) for i in range(len(self.links))]

        self._subject = _Part(text_env, "subject", content.subject)
        self._html = _Part(html_env, "html", html_source)
        self._text: _Part | None
        # a blank text template (an empty form field) means "none given", like None
        self._text_derived = content.text is None or not content.text.strip()
        if not self._text_derived:
            text_source = content.text or ""
            probe = _Part(text_env, "text", text_source)
            if UNSUBSCRIBE_VAR not in meta.find_undeclared_variables(probe.ast) and content.auto_footer:
                text_source = text_source.rstrip("\n") + _TEXT_FOOTER
                probe = _Part(text_env, "text", text_source)
            self._text = probe
        else:
            try:
                self._text = _Part(text_env, "text", _text_source_from_html(text_base_html))
            except TemplateProblem as exc:
                log.warning("campaign %s: text part will be converted per recipient (slower): %s",
                            content.campaign_id, exc)
                self._text = None

        parts = [self._subject, original_html] + ([self._text] if self._text is not None else [])
        required: set[str] = set()
        fields: set[str] = set()
        for part in parts:
            undeclared = meta.find_undeclared_variables(part.ast)
            unguarded = _unguarded_names(part.ast)
            undeclared = {n for n in undeclared if n != UNSUBSCRIBE_VAR and not n.startswith(_RESERVED_PREFIX)}
            fields |= undeclared
            required |= undeclared & unguarded
        self.fields = frozenset(fields)
        self._required = frozenset(required)
        self._recording: list[_Part] | None = None
        self._globals = dict(self._html.template.globals)
        self._qp_text: dict[str, str] = {}
        self._qp_html: dict[str, str] = {}
        self._recording_lock = threading.Lock()

        self._build_skeleton(content, extra_headers or {})

    # -- MIME skeleton, built once -------------------------------------------------------------------------------

    def _build_skeleton(self, content: CampaignContent, extra_headers: Mapping[str, str]) -> None:
        self.from_email = normalize_address(content.from_email, "from")
        headers = EmailMessage(policy=email_policy.SMTP)
        display_name = content.from_name or ""
        _check_header_text(display_name, "from name")
        try:
            headers["From"] = Address(display_name=display_name, addr_spec=self.from_email)
            if content.reply_to:
                headers["Reply-To"] = Address(addr_spec=normalize_address(content.reply_to, "reply-to"))
            headers["MIME-Version"] = "1.0"
            for name, value in extra_headers.items():
                if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
                    raise AddressProblem(f"extra header name {name!r} is not a valid header name")
                if name.lower() in _MANAGED_HEADERS:
                    raise AddressProblem(f"extra header {name!r} is set by the composer (or SES) and cannot be added")
                if not isinstance(value, str):
                    raise AddressProblem(f"extra header {name!r} must be a string")
                _check_header_text(value, f"extra header {name!r}")
                headers[name] = value
            head = b"".join(headers.policy.fold_binary(name, value) for name, value in headers.items())
        except AddressProblem:
            raise
        except (ValueError, TypeError) as exc:  # the stdlib's own header checks
            raise AddressProblem(f"header cannot be encoded: {exc}") from exc
        if any(len(line) > _MAX_LINE for line in head.split(b"\r\n")):
            raise AddressProblem("a header line would exceed 998 characters")
        boundary = f"=_c{content.campaign_id}_{secrets.token_hex(8)}".encode("ascii")  # "=_" never occurs in QP
        part_head = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        self._head = head + b"To: "
        self._after_to = b"\r\nSubject: "
        self._after_subject = b"\r\nList-Unsubscribe: <"
        self._after_unsubscribe = (
            b">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + b"\r\n" + part_head % b"plain"
        )
        self._between_parts = b"\r\n--" + boundary + b"\r\n" + part_head % b"html"
        self._tail = b"\r\n--" + boundary + b"--\r\n"

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
            context[_OPEN_VAR] = f"{self._open_prefix}{open_token}.gif"
        return context, unsubscribe_url

    def render(self, recipient_id: int, merge_data: Mapping[str, Any]) -> Rendered:
        """Subject, html and text for one recipient, strictly (a missing field raises TemplateProblem)."""
        return Rendered(*self._render(recipient_id, merge_data))

    def _render(self, recipient_id: int, merge_data: Mapping[str, Any]) -> tuple[str, str, str, str]:
        context, unsubscribe_url = self._context(recipient_id, merge_data)
        subject = self._subject.render(context).strip()
        if _HEADER_CONTROL.search(subject):
            raise TemplateProblem("subject template: the rendered subject contains a line break or control "
                                  "character (check the merge data)", part="subject")
        html = self._html.render(context)
        if self._text is None:
            text = _html_to_text(html)
        else:
            text = self._text.render(context)
            if self._text_derived and "\n\n\n" in text:
                # statement tags between blocks leave runs of empty lines that a direct conversion would not
                text = _BLANK_RUNS.sub("\n\n", text)
        return subject, html, text, unsubscribe_url

    def compose(self, recipient_id: int, to_email: str, merge_data: Mapping[str, Any]) -> bytes:
        """The complete raw MIME message (CRLF, lines <= 998) for one recipient."""
        to = normalize_address(to_email).encode("ascii")
        subject, html, text, unsubscribe_url = self._render(recipient_id, merge_data)
        return b"".join((
            self._head, to,
            self._after_to, _subject_value(subject),
            self._after_subject, unsubscribe_url.encode("ascii"),
            self._after_unsubscribe, _qp_body(text, self._qp_text),
            self._between_parts, _qp_body(html, self._qp_html),
            self._tail,
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
        candidates = {name for name in self._required if name not in merge_data}
        if not candidates:
            return set()
        recorded: set[str] = set()
        token = _RECORDED.set(recorded)
        try:
            context, _url = self._context(0, merge_data)
            for part in self._recording_parts():
                part.render(context)
        except (TemplateProblem, ValueError):
            return candidates
        finally:
            _RECORDED.reset(token)
        return recorded & candidates

    def _recording_parts(self) -> list[_Part]:
        with self._recording_lock:
            if self._recording is None:
                html_env = _environment(autoescape=True, undefined=_RecordingUndefined)
                text_env = _environment(autoescape=False, undefined=_RecordingUndefined)
                parts = [_Part(text_env, "subject", self._subject.source), _Part(html_env, "html", self._html.source)]
                if self._text is not None:
                    parts.append(_Part(text_env, "text", self._text.source))
                self._recording = parts
            return self._recording
