"""Compile a campaign's audience ({"lists": [...], "where": {...}, "exclude_lists": [...]}) into SQL with every
value bound.

`where` filters on contact fields and attributes by equality or any-of: {"country": ["DE", "AT"], "plan": "pro"}.
`exclude_lists` names lists whose members are left out (the snapshot keeps them as skipped rows with the reason
`excluded:<list>`, so they are counted, never silently dropped).
Raw SQL from a campaign definition is never executed: field names are checked against a pattern and bound as
parameters (attributes) or mapped to fixed column expressions (email, first_name, last_name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from campaigns.errors import CampaignDefinitionError

CONTACT_COLUMNS = {
    "email": sql.SQL("lower(c.email)"),
    "first_name": sql.SQL("c.first_name"),
    "last_name": sql.SQL("c.last_name"),
}
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_VALUES = 1000


@dataclass(frozen=True)
class Audience:
    """Which contacts a campaign goes to: members of any of `lists`, filtered by `where`, minus members of any of
    `exclude_lists`."""

    lists: tuple[str, ...]
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude_lists: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> Audience:
        """Validate an audience definition; errors name the offending field."""
        if not isinstance(raw, dict):
            raise CampaignDefinitionError("audience must be an object like {\"lists\": [\"newsletter\"]}")
        unknown = set(raw) - {"lists", "where", "exclude_lists"}
        if unknown:
            raise CampaignDefinitionError(f"audience has unknown keys: {', '.join(sorted(unknown))}")
        lists = raw.get("lists")
        if isinstance(lists, str):
            lists = [lists]
        if not isinstance(lists, list) or not lists or not all(isinstance(x, str) and x.strip() for x in lists):
            raise CampaignDefinitionError("audience.lists must be a non-empty list of list names")
        where_raw = raw.get("where") or {}
        if not isinstance(where_raw, dict):
            raise CampaignDefinitionError("audience.where must be an object of field -> value or list of values")
        where = []
        for field, value in sorted(where_raw.items()):
            if not FIELD_NAME.match(field):
                raise CampaignDefinitionError(f"audience.where field {field!r} is not a valid field name")
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > MAX_VALUES:
                raise CampaignDefinitionError(f"audience.where.{field} needs 1 to {MAX_VALUES} values")
            if not all(isinstance(v, str | int | float | bool) for v in values):
                raise CampaignDefinitionError(f"audience.where.{field} values must be strings, numbers or booleans")
            where.append((field, tuple(_as_text(v) for v in values)))
        lists = tuple(x.strip() for x in lists)
        return cls(lists=lists, where=tuple(where), exclude_lists=_exclude_lists(raw.get("exclude_lists"), lists))

    def as_dict(self) -> dict[str, Any]:
        """The stored form; `exclude_lists` only when there are any, so audiences stored before it compare equal."""
        stored: dict[str, Any] = {"lists": list(self.lists),
                                  "where": {field: list(values) for field, values in self.where}}
        if self.exclude_lists:
            stored["exclude_lists"] = list(self.exclude_lists)
        return stored

    def filters(self) -> tuple[sql.Composable, dict[str, Any]]:
        """SQL conditions on contacts `c` (ANDed) and their bound parameters."""
        parts: list[sql.Composable] = [sql.SQL("TRUE")]
        params: dict[str, Any] = {}
        for i, (field, values) in enumerate(self.where):
            params[f"w{i}_values"] = list(values)
            if field in CONTACT_COLUMNS:
                column = CONTACT_COLUMNS[field]
                if field == "email":
                    params[f"w{i}_values"] = [v.lower() for v in values]
                parts.append(sql.SQL("{} = ANY({})").format(column, sql.Placeholder(f"w{i}_values")))
            else:
                params[f"w{i}_key"] = field
                parts.append(sql.SQL("c.attributes ->> {} = ANY({})").format(
                    sql.Placeholder(f"w{i}_key"), sql.Placeholder(f"w{i}_values")))
        return sql.SQL(" AND ").join(parts), params


def _exclude_lists(raw: Any, lists: tuple[str, ...]) -> tuple[str, ...]:
    """The validated exclude_lists (none when absent or empty); a list both sent to and excluded is refused."""
    if raw is None or raw == []:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise CampaignDefinitionError("audience.exclude_lists must be a list of list names")
    names = tuple(dict.fromkeys(x.strip() for x in raw))
    both = sorted(set(names) & set(lists))
    if both:
        raise CampaignDefinitionError(f"audience.exclude_lists names {', '.join(repr(x) for x in both)}, which "
                                      "audience.lists also names: a list is either sent to or excluded")
    return names


def _as_text(value: str | int | float | bool) -> str:
    # Attributes are stored as JSON; ->> yields text, and JSON booleans read back as 'true'/'false'.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
