"""A campaign's `List-Id` (RFC 2919): one stable id per list, so mailbox providers and filters see a list family.

Derived, unless the campaign definition gives one (`settings.list_id`):

    description  the name of the campaign's first audience list, as written ("Spring News")
    label        that name slugged: lowercase ASCII letters, digits and '-' ("spring-news"); a name with none of
                 those (all non-Latin) gets "list-" + a hash of the name, still the same for every campaign to it
    namespace    LIST_ID_DOMAIN, else the From address's domain

    List-Id: Spring News <spring-news.example.com>

The same label is the `ses:feedback-id-b` tag (the list part of Gmail's Feedback-ID), so a complaint rate in
Google Postmaster Tools names the same list the List-Id does. List names are untrusted text: the description is
cleaned of control characters and encoded by `mime.list_id_value`, never pasted into the header.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from campaigns.errors import AddressProblem

__all__ = ["ListId", "derive_list_id", "parse_list_id"]

MAX_LABEL = 63  # one DNS label: the id reads like a host name under the namespace
MAX_ID = 255  # RFC 2919: the whole list-id
MAX_DESCRIPTION = 80  # a label for people; longer names are cut (the id stays exact)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_NAMESPACE = re.compile(rf"{_LABEL.pattern}(?:\.{_LABEL.pattern})*")
_GIVEN = re.compile(r"(?:(?P<description>[^<>]*?)\s*<(?P<bracketed>[^<>]+)>|(?P<bare>[^<>\s]+))")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class ListId:
    """One List-Id: `description <label.namespace>` (the description may be empty)."""

    description: str
    label: str
    namespace: str

    @property
    def identifier(self) -> str:
        """The list-id itself, the part between the angle brackets."""
        return f"{self.label}.{self.namespace}"


def derive_list_id(list_name: str, from_email: str, namespace: str | None = None) -> ListId:
    """The List-Id of a campaign to `list_name` from `from_email` (already normalized) under `namespace`."""
    space = (namespace or from_email.rpartition("@")[2]).lower()
    description = _clean(list_name)
    label = _slug(list_name)[:max(1, min(MAX_LABEL, MAX_ID - len(space) - 1))].strip("-") or "list"
    return _checked(ListId(description, label, space), "derived List-Id")


def parse_list_id(value: str, what: str = "list_id") -> ListId:
    """A List-Id as a campaign definition gives it: "Description <label.namespace>" or "label.namespace"."""
    match = _GIVEN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or _CONTROL.search(value):
        raise AddressProblem(f"{what} must look like 'Spring News <spring-news.example.com>' or "
                             f"'spring-news.example.com', got {value!r}")
    identifier = match["bracketed"] or match["bare"]
    label, dot, space = identifier.partition(".")
    if not dot:
        raise AddressProblem(f"{what}: {identifier!r} needs a label and a domain, e.g. spring-news.example.com")
    return _checked(ListId(_clean(match["description"] or ""), label, space.lower()), what)


def _checked(list_id: ListId, what: str) -> ListId:
    if (_LABEL.fullmatch(list_id.label) is None or len(list_id.label) > MAX_LABEL
            or _NAMESPACE.fullmatch(list_id.namespace) is None or len(list_id.identifier) > MAX_ID):
        raise AddressProblem(f"{what} {list_id.identifier!r} is not a list-id: a label of letters, digits and '-' "
                             f"(at most {MAX_LABEL}) and a domain, at most {MAX_ID} characters in all")
    return list_id


def _slug(name: str) -> str:
    """Lowercase ASCII letters, digits and '-', accents dropped; "list-<hash>" when nothing of the name is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_SLUG.sub("-", ascii_name.lower()).strip("-")
    return slug or "list-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]


def _clean(text: str) -> str:
    """Untrusted text as a one-line description: control characters and runs of white space become one space."""
    return " ".join(_CONTROL.sub(" ", text).split())[:MAX_DESCRIPTION].strip()
