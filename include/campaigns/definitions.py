"""Campaign definitions: validate an inline campaign from a run's conf, create or update it by key, load it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from campaigns import states
from campaigns.audience import Audience
from campaigns.errors import CampaignDefinitionError

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CONTENT_FIELDS = ("name", "subject", "from_email", "from_name", "reply_to", "html", "text")
SETTING_KEYS = {"track_opens": bool, "track_clicks": bool, "auto_footer": bool}
DEFINITION_KEYS = {"key", "audience", "settings", *CONTENT_FIELDS}

_OPTIONAL_TEXT = {"type": ["string", "null"]}
# The trigger form's schema for an inline campaign: wrong types and values are rejected when the run is
# triggered (UI, REST API, CLI); rules across fields are checked by CampaignDefinition.parse.
CAMPAIGN_JSON_SCHEMA = {
    "type": ["null", "object"],
    "properties": {
        "key": {"type": "string", "pattern": KEY.pattern},
        "name": _OPTIONAL_TEXT,
        "subject": {"type": "string", "minLength": 1, "maxLength": 998},
        "from_email": _OPTIONAL_TEXT,
        "from_name": _OPTIONAL_TEXT,
        "reply_to": _OPTIONAL_TEXT,
        "html": {"type": "string", "minLength": 1},
        "text": _OPTIONAL_TEXT,
        "audience": {
            "type": "object",
            "properties": {
                "lists": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                "where": {"type": "object", "additionalProperties": {
                    "type": ["string", "number", "boolean", "array"],
                    "items": {"type": ["string", "number", "boolean"]}}},
            },
            "required": ["lists"],
            "additionalProperties": False,
        },
        "settings": {
            "type": "object",
            "properties": {"track_opens": {"type": "boolean"}, "track_clicks": {"type": "boolean"},
                           "auto_footer": {"type": "boolean"}},
            "additionalProperties": False,
        },
    },
    "required": ["key", "subject", "html", "audience"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class CampaignDefinition:
    """An inline campaign as given in a DAG run's conf; `parse` checks every field and names the bad one."""

    key: str
    name: str
    subject: str
    from_email: str
    html: str
    audience: Audience
    from_name: str | None = None
    reply_to: str | None = None
    text: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, *, default_from_email: str | None = None,
              default_from_name: str | None = None, default_reply_to: str | None = None) -> CampaignDefinition:
        if not isinstance(raw, dict):
            raise CampaignDefinitionError("campaign must be an object")
        unknown = set(raw) - DEFINITION_KEYS
        if unknown:
            raise CampaignDefinitionError(f"campaign has unknown fields: {', '.join(sorted(unknown))}")
        key = raw.get("key")
        if not isinstance(key, str) or not KEY.match(key):
            raise CampaignDefinitionError(
                "campaign.key is required: 1-128 characters of letters, digits and . _ : - (e.g. 'nov-news')")
        values: dict[str, Any] = {}
        for name in CONTENT_FIELDS:
            value = raw.get(name)
            if value is not None and not isinstance(value, str):
                raise CampaignDefinitionError(f"campaign.{name} must be a string")
            values[name] = value if value not in ("",) else None
        values["from_email"] = values["from_email"] or default_from_email
        values["from_name"] = values["from_name"] or default_from_name
        values["reply_to"] = values["reply_to"] or default_reply_to
        values["name"] = values["name"] or key
        for required in ("subject", "html", "from_email"):
            if not values[required]:
                hint = " (or set SES_FROM_EMAIL)" if required == "from_email" else ""
                raise CampaignDefinitionError(f"campaign.{required} is required{hint}")
        settings = raw.get("settings") or {}
        if not isinstance(settings, dict):
            raise CampaignDefinitionError("campaign.settings must be an object")
        for name, value in settings.items():
            if name not in SETTING_KEYS:
                raise CampaignDefinitionError(
                    f"campaign.settings.{name} is not a setting (known: {', '.join(sorted(SETTING_KEYS))})")
            if not isinstance(value, SETTING_KEYS[name]):
                raise CampaignDefinitionError(f"campaign.settings.{name} must be a {SETTING_KEYS[name].__name__}")
        if "audience" not in raw:
            raise CampaignDefinitionError("campaign.audience is required, e.g. {\"lists\": [\"newsletter\"]}")
        return cls(key=key, audience=Audience.parse(raw["audience"]), settings=dict(settings), **values)

    def row_values(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in CONTENT_FIELDS}
        values.update(key=self.key, audience=Jsonb(self.audience.as_dict()), settings=Jsonb(self.settings))
        return values

    def same_content_as(self, row: dict[str, Any]) -> bool:
        mine = asdict(self)
        mine["audience"] = self.audience.as_dict()
        return all(row.get(name) == mine[name] for name in (*CONTENT_FIELDS, "audience", "settings"))


def upsert_campaign(conn: psycopg.Connection, definition: CampaignDefinition) -> dict[str, Any]:
    """Create the campaign or update it by key; content may change only while it is a draft or scheduled."""
    with conn.transaction():
        row = conn.execute("SELECT * FROM campaigns WHERE key = %s FOR UPDATE", [definition.key]).fetchone()
        if row is None:
            values = definition.row_values()
            columns = ", ".join(values)
            placeholders = ", ".join(f"%({name})s" for name in values)
            return conn.execute(
                f"INSERT INTO campaigns ({columns}) VALUES ({placeholders}) RETURNING *",  # noqa: S608 - fixed names
                values,
            ).fetchone()
        if definition.same_content_as(row):
            return row
        if row["status"] not in (states.DRAFT, states.SCHEDULED):
            raise CampaignDefinitionError(
                f"campaign {definition.key!r} is {row['status']}; its content can no longer change "
                "(use a new key for a new campaign)")
        values = definition.row_values()
        assignments = ", ".join(f"{name} = %({name})s" for name in values)
        return conn.execute(
            f"UPDATE campaigns SET {assignments}, updated_at = now() WHERE id = %(id)s RETURNING *",  # noqa: S608
            {**values, "id": row["id"]},
        ).fetchone()


def load_campaign(conn: psycopg.Connection, campaign_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM campaigns WHERE id = %s", [campaign_id]).fetchone()
    if row is None:
        raise CampaignDefinitionError(f"campaign {campaign_id} does not exist")
    return row
