"""Campaign templates: compiled once in Jinja2's immutable sandbox, rendered per recipient, analysed for the merge
fields a recipient needs, and the text part derived from the html one (see compose.py for the whole path).

Syntax errors and obviously unsafe attribute access raise TemplateProblem at compile time; anything the sandbox
catches at render time raises TemplateProblem too. Merge values that are None render as an empty string.
"""

from __future__ import annotations

import contextvars
import html as html_lib
import re
import secrets
from typing import Any

from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import ChainableUndefined, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from campaigns.errors import TemplateProblem

__all__ = [
    "BLANK_RUNS", "JINJA_TAGS", "RECORDED", "RecordingUndefined", "TemplatePart", "TemplateProblem", "environment",
    "escape_text_template", "html_to_text", "text_source_from_html", "unguarded_names",
]

# Jinja tags, each ending at its first closing delimiter. Unambiguous on purpose: with `.*?` an unclosed `<a`
# holding many `{{ }}` made the tag pattern backtrack exponentially.
JINJA_TAGS = r"\{\{(?:[^}]|\}(?!\}))*\}\}|\{%(?:[^%]|%(?!\}))*%\}|\{\#(?:[^#]|\#(?!\}))*\#\}"
_JINJA_TAG = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|" + JINJA_TAGS, re.S)
_JINJA_TAG_SPLIT = re.compile(f"({JINJA_TAGS})", re.S)
BLANK_RUNS = re.compile(r"\n(?:[ \t]*\n){2,}")
_LITERAL_BRACE = re.compile(r"\{(?=[{%#]|$)")
_TEXT_CONFIG = ParserConfig(display_links=True)
_MAX_REPEAT = 100_000  # longest str/list a template may build with `*`
_MAX_EXPONENT = 1_000


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


def environment(*, autoescape: bool, undefined: type = StrictUndefined) -> _Sandbox:
    """A sandbox for one kind of part (html autoescaped, subject and text not); None renders as ''."""
    return _Sandbox(undefined=undefined, autoescape=autoescape, finalize=_none_as_empty)


RECORDED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("campaigns_compose_recorded", default=None)


class RecordingUndefined(ChainableUndefined):
    """Undefined that notes the top-level variable names a render actually uses (for missing_fields)."""

    __slots__ = ()

    def _record(self) -> None:
        if self._undefined_obj is missing and self._undefined_name is not None:
            recorded = RECORDED.get()
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


class TemplatePart:
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


def unguarded_names(ast: nodes.Template) -> set[str]:
    """Names used somewhere NOT directly under `| default(...)` / `is defined` (those are optional fields)."""
    guarded: set[int] = set()
    for node in ast.find_all((nodes.Filter, nodes.Test)):
        if node.name in ("default", "d", "defined", "undefined") and isinstance(node.node, nodes.Name):
            guarded.add(id(node.node))
    return {name.name for name in ast.find_all(nodes.Name) if name.ctx == "load" and id(name) not in guarded}


def html_to_text(html: str) -> str:
    """inscriptis' text of `html`, without the padding it gives table cells and without runs of blank lines."""
    text = get_text(html, _TEXT_CONFIG)
    # trailing blanks only cost bytes (and =20 escapes); email layouts are tables, so there are many
    return BLANK_RUNS.sub("\n\n", "\n".join(line.rstrip() for line in text.split("\n")))


def text_source_from_html(source: str) -> str:
    """A text template from an html template: shield the Jinja tags, convert with inscriptis, restore the tags."""
    marker = f"JINJA{secrets.token_hex(6).upper()}N"
    blocks: list[str] = []

    def shield(match: re.Match[str]) -> str:
        blocks.append(match.group(0))
        return f"{marker}{len(blocks) - 1}X"

    text = html_to_text(_JINJA_TAG.sub(shield, source))
    pieces = re.split(rf"{marker}(\d+)X", text)
    # Literal braces produced by the conversion (e.g. from &#123;) must not turn into template syntax.
    return "".join(blocks[int(piece)] if i % 2 else _LITERAL_BRACE.sub("{{ '{' }}", piece)
                   for i, piece in enumerate(pieces))


def escape_text_template(source: str) -> str:
    """A text template made fit for an autoescaped html template: its literal text html-escaped, its Jinja tags
    left alone (their output is escaped by autoescape), so it renders in html to exactly the text it renders to
    on its own (the preheader: a text like the subject, placed in the html part)."""
    pieces = _JINJA_TAG_SPLIT.split(source)
    return "".join(piece if i % 2 else html_lib.escape(piece, quote=False) for i, piece in enumerate(pieces))
