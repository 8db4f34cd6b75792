"""Campaign definitions: validate an inline campaign from a run's conf, create or update it by key, load it.

Both ways to define a campaign end here: the inline `campaign` JSON of the REST API, and the send_campaign form,
whose fields campaigns.lifecycle.form turns into the same dict. `parse` checks it and names the bad field.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from jsonschema import FormatChecker
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from psycopg import sql
from psycopg.types.json import Jsonb

from campaigns import queries, states
from campaigns.audience.filters import Audience
from campaigns.errors import AddressProblem, CampaignDefinitionError, CampaignNotFound, IllegalTransition
from campaigns.lifecycle import scheduling
from campaigns.lifecycle.scheduling import Recurrence
from campaigns.sending.list_id import parse_list_id

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CONTENT_FIELDS = ("name", "subject", "preheader", "from_email", "from_name", "reply_to", "html", "text")
SETTING_KEYS = {"track_opens": bool, "track_clicks": bool, "auto_footer": bool, "view_in_browser_footer": bool,
                "list_id": str}  # list_id: the List-Id header, e.g. "Spring News <spring-news.example.com>"
_JSON_TYPES = {bool: "boolean", str: "string"}
DEFINITION_KEYS = {"key", "audience", "settings", "send_at", "recurrence", *CONTENT_FIELDS}
# An occurrence's key is the template's key plus ":YYYYMMDDTHHMMZ" (15 characters) and must still fit 128.
MAX_RECURRING_KEY = 128 - 15

_OPTIONAL_TEXT = {"type": ["string", "null"]}
_LIST_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
# The schema of an inline campaign (dag_run.conf `campaign`): `validate_inline` refuses wrong types and values
# before anything is stored; rules across fields are checked by CampaignDefinition.parse.
CAMPAIGN_JSON_SCHEMA = {
    "type": ["null", "object"],
    "properties": {
        "key": {"type": "string", "pattern": KEY.pattern},
        "name": _OPTIONAL_TEXT,
        "subject": {"type": "string", "minLength": 1, "maxLength": 998},
        "preheader": _OPTIONAL_TEXT,
        "from_email": _OPTIONAL_TEXT,
        "from_name": _OPTIONAL_TEXT,
        "reply_to": _OPTIONAL_TEXT,
        "html": {"type": "string", "minLength": 1},
        "text": _OPTIONAL_TEXT,
        "audience": {
            "type": "object",
            "properties": {
                "lists": {**_LIST_NAMES, "minItems": 1},
                "exclude_lists": _LIST_NAMES,
                "where": {"type": "object", "additionalProperties": {
                    "type": ["string", "number", "boolean", "array"],
                    "items": {"type": ["string", "number", "boolean"]}}},
            },
            "required": ["lists"],
            "additionalProperties": False,
        },
        "settings": {
            "type": "object",
            "properties": {name: {"type": _JSON_TYPES[kind]} for name, kind in SETTING_KEYS.items()},
            "additionalProperties": False,
        },
        "send_at": {"type": ["string", "null"], "minLength": 1,
                    "description": "ISO 8601 with a timezone, e.g. 2026-12-01T09:00:00+01:00: send then, not now."},
        "recurrence": {
            "type": ["object", "null"],
            "properties": {"cron": {"type": "string", "minLength": 9}, "timezone": {"type": "string", "minLength": 1}},
            "required": ["cron", "timezone"],
            "additionalProperties": False,
            "description": "Send every occurrence of a cron in a timezone, each as its own campaign.",
        },
    },
    "required": ["key", "subject", "html", "audience"],
    "additionalProperties": False,
}


def validate_inline(raw: Any) -> None:
    """Check an inline campaign against CAMPAIGN_JSON_SCHEMA; the error names the field (campaign.audience.lists)."""
    validator = validator_for(CAMPAIGN_JSON_SCHEMA)(CAMPAIGN_JSON_SCHEMA, format_checker=FormatChecker())
    error = best_match(validator.iter_errors(raw))
    if error is not None:
        where = ".".join(["campaign", *map(str, error.absolute_path)])
        raise CampaignDefinitionError(f"{where}: {error.message}")


@dataclass(frozen=True)
class CampaignDefinition:
    """An inline campaign as given in a DAG run's conf; `parse` checks every field and names the bad one."""

    key: str
    name: str
    subject: str
    from_email: str
    html: str
    audience: Audience
    preheader: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    text: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    send_at: datetime | None = None  # UTC; set: the campaign is scheduled, not sent now
    recurrence: Recurrence | None = None  # set: a recurring template whose occurrences are sent

    @classmethod
    def parse(cls, raw: Any, *, default_from_email: str | None = None, default_from_name: str | None = None,
              default_reply_to: str | None = None, prefix: str = "campaign.") -> CampaignDefinition:
        """`prefix` goes before every field an error names: "campaign." for the inline JSON, "" for the form,
        whose fields are called like the definition's (subject, key, ...)."""
        if not isinstance(raw, dict):
            raise CampaignDefinitionError("campaign must be an object")
        unknown = set(raw) - DEFINITION_KEYS
        if unknown:
            raise CampaignDefinitionError(f"campaign has unknown fields: {', '.join(sorted(unknown))}")
        key = raw.get("key")
        if not isinstance(key, str) or not KEY.match(key):
            raise CampaignDefinitionError(
                f"{prefix}key is required: 1-128 characters of letters, digits and . _ : - (e.g. 'nov-news')")
        values: dict[str, Any] = {}
        for name in CONTENT_FIELDS:
            value = raw.get(name)
            if value is not None and not isinstance(value, str):
                raise CampaignDefinitionError(f"{prefix}{name} must be a string")
            values[name] = value if value not in ("",) else None
        values["from_email"] = values["from_email"] or default_from_email
        values["from_name"] = values["from_name"] or default_from_name
        values["reply_to"] = values["reply_to"] or default_reply_to
        values["name"] = values["name"] or key
        for required in ("subject", "html", "from_email"):
            if not values[required]:
                hint = " (or set SES_FROM_EMAIL)" if required == "from_email" else ""
                raise CampaignDefinitionError(f"{prefix}{required} is required{hint}")
        settings = raw.get("settings") or {}
        if not isinstance(settings, dict):
            raise CampaignDefinitionError(f"{prefix}settings must be an object")
        for name, value in settings.items():
            if name not in SETTING_KEYS:
                raise CampaignDefinitionError(
                    f"{prefix}settings.{name} is not a setting (known: {', '.join(sorted(SETTING_KEYS))})")
            if not isinstance(value, SETTING_KEYS[name]):
                raise CampaignDefinitionError(f"{prefix}settings.{name} must be a {SETTING_KEYS[name].__name__}")
        if settings.get("list_id") is not None:
            try:
                parse_list_id(settings["list_id"], f"{prefix}settings.list_id")
            except AddressProblem as exc:
                raise CampaignDefinitionError(str(exc)) from exc
        if "audience" not in raw:
            raise CampaignDefinitionError(f"{prefix}audience is required, e.g. {{\"lists\": [\"newsletter\"]}}")
        send_at = recurrence = None
        if raw.get("send_at") is not None and raw.get("recurrence") is not None:
            raise CampaignDefinitionError(
                f"give {prefix}send_at (send once, then) or {prefix}recurrence (send every occurrence), not both")
        if raw.get("send_at") is not None:
            send_at = scheduling.parse_send_at(raw["send_at"], field=f"{prefix}send_at")
        if raw.get("recurrence") is not None:
            recurrence = Recurrence.parse(raw["recurrence"], field=f"{prefix}recurrence")
            if len(key) > MAX_RECURRING_KEY:
                raise CampaignDefinitionError(
                    f"{prefix}key of a recurring campaign may have at most {MAX_RECURRING_KEY} characters "
                    "(each occurrence's key adds its time)")
        return cls(key=key, audience=Audience.parse(raw["audience"]), settings=dict(settings), send_at=send_at,
                   recurrence=recurrence, **values)

    def row_values(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in CONTENT_FIELDS}
        values.update(key=self.key, audience=Jsonb(self.audience.as_dict()), settings=Jsonb(self.settings))
        return values

    def same_content_as(self, row: dict[str, Any]) -> bool:
        mine = asdict(self)
        mine["audience"] = self.audience.as_dict()
        return all(row.get(name) == mine[name] for name in (*CONTENT_FIELDS, "audience", "settings"))

    def same_timing_as(self, row: dict[str, Any]) -> bool:
        """Same send_at (one-off) or same recurrence (recurring) as the stored campaign."""
        if self.recurrence is not None:
            return row.get("recurrence") == self.recurrence.stored()
        return row.get("recurrence") is None and row.get("send_at") == self.send_at

    def timing_values(self, row: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
        """status, send_at, recurrence (and run_id) for storing this definition over `row` (None: a new campaign)."""
        if self.recurrence is not None:
            stored = self.recurrence.stored()
            keep = row is not None and row.get("recurrence") == stored and row.get("status") == states.SCHEDULED
            # A template's send_at is its next occurrence, from the moment the recurrence was (re)defined.
            send_at = row["send_at"] if keep else self.recurrence.next_after(now)
            return {"status": states.SCHEDULED, "send_at": send_at, "recurrence": stored, "run_id": None}
        if self.send_at is not None:
            # A new time frees the campaign from a run that took it for the old time.
            run_id = row.get("run_id") if row is not None and row.get("send_at") == self.send_at else None
            return {"status": states.SCHEDULED, "send_at": self.send_at, "recurrence": None, "run_id": run_id}
        if row is not None and row.get("status") == states.SCHEDULED:
            when = (f"recurring ({row['recurrence']})" if row.get("recurrence")
                    else f"scheduled for {scheduling.utc_text(row['send_at'])}")
            raise CampaignDefinitionError(
                f"campaign {self.key!r} is {when}: give send_at (or recurrence) to reschedule it, a send_at in the "
                "past to send it now, or cancel it")
        return {"status": states.DRAFT, "send_at": None, "recurrence": None}


def upsert_campaign(conn: psycopg.Connection, definition: CampaignDefinition,
                    *, now: datetime | None = None, keep_timing: bool = False) -> dict[str, Any]:
    """Create the campaign or update it by key; content and timing may change only while it is a draft or scheduled.

    A definition with send_at or recurrence stores the campaign as `scheduled` (a new send_at reschedules it);
    `now` (default: the clock) is where a recurrence's next occurrence is counted from. `keep_timing` (a run that
    only sends tests first) stores the content alone: a new campaign is a draft, a stored one keeps its timing, so
    a test never schedules anything.
    """
    now = now or datetime.now(UTC)
    with conn.transaction():
        row = conn.execute(queries.load("definitions")["lock-campaign-by-key"], {"key": definition.key}).fetchone()
        if row is None:
            timing = {"status": states.DRAFT} if keep_timing else definition.timing_values(None, now)
            values = {**definition.row_values(), **timing}
            return conn.execute(_with_fields("insert-campaign", values), values).fetchone()
        same_timing = keep_timing or definition.same_timing_as(row)
        if definition.same_content_as(row) and same_timing:
            return row
        if row["status"] not in (states.DRAFT, states.SCHEDULED):
            if not same_timing:
                hint = ("release it (campaign_control) to send it now, or cancel it" if row["status"] == states.HELD
                        else "use a new key for a new campaign")
                raise IllegalTransition(
                    f"campaign {definition.key!r} is {row['status']}; it can no longer be rescheduled ({hint})")
            raise CampaignDefinitionError(
                f"key {definition.key!r} belongs to a campaign that is {row['status']}; its content can no longer "
                "change (give a new key for a new campaign)")
        timing = {} if keep_timing else definition.timing_values(row, now)
        values = {**definition.row_values(), **timing}
        # Guarded by the status read under the row lock: draft -> scheduled is the state machine's move.
        updated = conn.execute(_with_fields("update-campaign", values),
                               {**values, "id": row["id"], "old_status": row["status"]}).fetchone()
        if updated is None:
            raise IllegalTransition(f"campaign {definition.key!r} changed state while being updated; try again")
        return updated


def _with_fields(name: str, values: dict[str, Any]) -> sql.Composed:
    """A definitions query with `values`' keys composed in as {columns} and as bound {values} placeholders."""
    return sql.SQL(queries.load("definitions")[name]).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, values)),
        values=sql.SQL(", ").join(map(sql.Placeholder, values)))


def load_campaign(conn: psycopg.Connection, campaign_id: int) -> dict[str, Any]:
    row = conn.execute(queries.load("definitions")["campaign-by-id"], {"campaign_id": campaign_id}).fetchone()
    if row is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    return row
