"""The send_campaign trigger form: its fields (Airflow Params) and how they become an inline campaign definition.

An analyst composes a campaign in Airflow's trigger form without typing JSON; `form_definition` turns the fields
into the same dict the REST API's `{"campaign": {...}}` carries, and CampaignDefinition.parse checks both alike.
Every field accepts an empty value, so a REST run with `campaign` or `campaign_id` is never blocked by the form;
what is required is enforced here and in `parse`, with errors that name the form field.

Sections as Airflow 3.3 draws them: each `section` is one accordion item, all start collapsed and one is open at a
time (the UI has no per-section "open" option); a field without a section would go under "Run Parameters".
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from campaigns.config import MAX_BATCH_SIZE, MIN_BATCH_SIZE, Settings
from campaigns.errors import CampaignDefinitionError
from campaigns.lifecycle import scheduling
from campaigns.lifecycle.definitions import MAX_RECURRING_KEY
from campaigns.lifecycle.scheduling import Recurrence
from campaigns.lifecycle.testsend import MAX_RECIPIENTS

CONTENT, CAMPAIGN, AUDIENCE, WHEN, OPTIONS, TEST_FIRST = (
    "Content", "Campaign", "Audience", "When", "Options", "Test first")
NOW, AT, RECURRING = "now", "at", "recurring"
TEXT_FIELDS = ("name", "key", "subject", "preheader", "from_name", "from_email", "reply_to", "html", "text")
LIST_FIELDS = ("lists", "filters", "exclude_lists")
# Filled in, these define a campaign in the form (rather than by `campaign_id` or the inline `campaign` JSON).
DEFINING_FIELDS = (*TEXT_FIELDS, *LIST_FIELDS, "send_date", "send_time", "cron")
SETTING_FIELDS = ("track_opens", "track_clicks", "view_in_browser_footer")
COMMON_ZONES = ("UTC", "Europe/London", "Europe/Berlin", "Europe/Vienna", "Europe/Paris", "Europe/Madrid",
                "Europe/Warsaw", "Europe/Helsinki", "America/New_York", "America/Chicago", "America/Denver",
                "America/Los_Angeles", "America/Sao_Paulo", "Asia/Dubai", "Asia/Kolkata", "Asia/Singapore",
                "Asia/Tokyo", "Australia/Sydney")
CLOCK_PATTERN = r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$"
FILTER_LINE = re.compile(r"^\s*(?P<field>[^:]+?)\s*:\s*(?P<values>.*?)\s*$")
# A derived key is <slug>-YYYYMMDD and must leave room for a recurring occurrence's suffix.
MAX_SLUG = MAX_RECURRING_KEY - len("-YYYYMMDD")

_TEXT = ["null", "string"]
_LINES = {"type": ["null", "array"], "items": {"type": "string"}}


def _field(section: str, title: str, description: str, *, default: Any = None, **schema: Any) -> dict[str, Any]:
    """One form field: Param(**spec) builds it (the default, the plain-text description, the JSON schema)."""
    return {"default": default, "description": description, "title": title, "section": section, **schema}


def param_specs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The form's fields in the order the UI shows them; `settings` names the configured defaults."""
    def configured(value: str | None, variable: str) -> str:
        return f"Empty: {value} ({variable})." if value else f"Empty: {variable} (not set)."

    return {
        # Content
        "name": _field(CONTENT, "Name", "What the campaign is called on the Campaigns page; the key is made from it "
                       "when Key is empty.", type=_TEXT, maxLength=200),
        "key": _field(CONTENT, "Key (optional)", "Names the campaign for good. Empty: the name and today's date, e.g. "
                      "nov-news-20261205 (shown in the run's log). Trigger again with the same key to revise a "
                      "draft; a sent campaign's key cannot take new content.", type=_TEXT, maxLength=128),
        "subject": _field(CONTENT, "Subject", "Merge tags allowed, e.g. Hi {{ first_name | default('there') }}.",
                          type=_TEXT, maxLength=998),
        "preheader": _field(CONTENT, "Preheader (optional)", "The preview text inbox apps show after the subject; "
                            "hidden in the message itself.", type=_TEXT, maxLength=500),
        "from_name": _field(CONTENT, "From name", configured(settings.from_name, "SES_FROM_NAME"), type=_TEXT),
        "from_email": _field(CONTENT, "From address", configured(settings.from_email, "SES_FROM_EMAIL")
                             + " Must be on an SES-verified domain.", type=_TEXT),
        "reply_to": _field(CONTENT, "Reply-to", configured(settings.reply_to, "SES_REPLY_TO"), type=_TEXT),
        "html": _field(CONTENT, "HTML", "The message's HTML; merge tags such as {{ first_name }} and "
                       "{{ unsubscribe_url }}.", type=_TEXT, format="multiline"),
        "text": _field(CONTENT, "Plain text (optional)", "Empty: made from the HTML.", type=_TEXT,
                       format="multiline"),
        # Campaign
        "campaign_id": _field(CAMPAIGN, "Existing campaign id", "Send a stored campaign (a draft, or one to resume) "
                              "instead of the Content above; leave Content and Audience empty.",
                              type=["null", "integer"], minimum=1),
        # Audience
        "lists": _field(AUDIENCE, "Lists", "One list name per line: members of any of them get the campaign.",
                        **_LINES),
        "filters": _field(AUDIENCE, "Filters (optional)", "One per line, attribute: value, value - e.g. "
                          "country: DE, AT. A contact must match every line (any value of a line).", **_LINES),
        "exclude_lists": _field(AUDIENCE, "Exclude lists (optional)", "One list name per line: their members are "
                                "left out (counted by reason in the snapshot).", **_LINES),
        # When
        "when": _field(WHEN, "When", "Send now, once at a date and time, or on a cron schedule.", default=NOW,
                       type=_TEXT, enum=[NOW, AT, RECURRING, None],
                       values_display={NOW: "Now", AT: "At a date and time", RECURRING: "Recurring (cron)",
                                       "null": "(empty: now)"}),
        # A date and a time of day, not Airflow's date-time picker: that one converts what was picked from the UI's
        # own time zone (the browser's, unless changed) to UTC, so the zone the analyst means would be applied
        # twice. The time is text with proposals: JSON schema's "time" format demands a UTC offset ("09:00:00Z"),
        # which the browser's time input never sends.
        "send_date": _field(WHEN, "Send on", "For 'at a date and time': the day, in Time zone below.", type=_TEXT,
                            format="date"),
        "send_time": _field(WHEN, "Send at", "For 'at a date and time': the time of day, 24 h (e.g. 09:00 or "
                            "17:30), on the clock of Time zone below. Must be in the future.", type=_TEXT,
                            pattern=CLOCK_PATTERN, examples=[f"{hour:02d}:00" for hour in range(6, 23)]),
        "timezone": _field(WHEN, "Time zone", f"An IANA name, e.g. Europe/Vienna. Empty: {settings.timezone} "
                           "(CAMPAIGN_TIMEZONE).", default=settings.timezone, type=_TEXT,
                           examples=list(COMMON_ZONES)),
        "cron": _field(WHEN, "Cron", "For 'recurring': minute hour day-of-month month day-of-week in Time zone, "
                       "e.g. 0 9 * * MON (Mondays 09:00).", type=_TEXT),
        # Options
        "track_opens": _field(OPTIONS, "Track opens", "An invisible image counts who opened the email.",
                              default=True, type=["null", "boolean"]),
        "track_clicks": _field(OPTIONS, "Track clicks", "Links go through the tracking service.", default=True,
                               type=["null", "boolean"]),
        "view_in_browser_footer": _field(OPTIONS, "'View in browser' link", "A footer link to the recipient's own "
                                         "copy of the message on the web.", default=False, type=["null", "boolean"]),
        "batch_size": _field(OPTIONS, "Batch size", "Recipients per page. Empty: SES_BATCH_SIZE "
                             f"({settings.batch_size}).", type=["null", "integer"], minimum=MIN_BATCH_SIZE,
                             maximum=MAX_BATCH_SIZE),
        "dry_run": _field(OPTIONS, "Dry run", "Check, snapshot and plan, but send nothing.", default=False,
                          type=["null", "boolean"]),
        # Test first
        "test_recipients": _field(TEST_FIRST, "Send a test first to", f"Up to {MAX_RECIPIENTS} addresses, one per "
                                  "line. Given: the campaign is stored as a draft and ONLY [TEST] copies go out; "
                                  "trigger again without addresses to send for real.", **_LINES,
                                  maxItems=MAX_RECIPIENTS),
        "test_sample_values": _field(TEST_FIRST, "Sample values (optional)", "For test addresses that are not "
                                     "contacts: one per line, field: value, e.g. first_name: Ana. Empty: a "
                                     "stand-in per field (first_name -> First Name). A contact's test uses their "
                                     "own data.", **_LINES),
    }


def lines(conf: dict[str, Any], name: str) -> list[str]:
    """A one-value-per-line field's values, stripped, blank lines dropped (the UI keeps a trailing empty line)."""
    raw = conf.get(name)
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = raw.splitlines()
    if not isinstance(raw, list) or not all(isinstance(value, str) for value in raw):
        raise CampaignDefinitionError(f"{name} must be a list of text lines, got {raw!r}")
    return [value.strip() for value in raw if value.strip()]


def text(conf: dict[str, Any], name: str) -> str | None:
    """A text field's value, None when empty."""
    value = conf.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CampaignDefinitionError(f"{name} must be text, got {value!r}")
    return value if value.strip() else None


def filled_fields(conf: dict[str, Any]) -> list[str]:
    """The defining fields the form has values in (none: the run names its campaign another way)."""
    return [name for name in DEFINING_FIELDS
            if (lines(conf, name) if name in LIST_FIELDS else text(conf, name) is not None)]


def parse_filters(values: list[str]) -> dict[str, list[str]]:
    """`country: DE, AT` lines -> {"country": ["DE", "AT"]}; the error names the line."""
    where: dict[str, list[str]] = {}
    for number, line in enumerate(values, start=1):
        match = FILTER_LINE.match(line)
        found = [value.strip() for value in match["values"].split(",") if value.strip()] if match else []
        if not found:
            raise CampaignDefinitionError(
                f"filters line {number} {line!r} must look like 'attribute: value, value', e.g. 'country: DE, AT'")
        if match["field"] in where:
            raise CampaignDefinitionError(
                f"filters line {number}: {match['field']!r} is on two lines; put all its values on one line")
        where[match["field"]] = found
    return where


def derive_key(name: str, run_date: datetime) -> str:
    """`<slug of the name>-YYYYMMDD` of the run's date in UTC: the same name on the same day is the same campaign."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:MAX_SLUG].strip("-") or "campaign"
    return f"{slug}-{run_date.astimezone(UTC):%Y%m%d}"


def form_definition(conf: dict[str, Any], *, run_date: datetime, now: datetime,
                    settings: Settings) -> dict[str, Any]:
    """The inline campaign definition the form's fields describe (parse it with prefix="").

    Refuses, naming the field, what parse cannot see: a missing subject, HTML or list, timing fields that
    contradict When, a send time in the past.
    """
    values = {name: text(conf, name) for name in TEXT_FIELDS}
    for required in ("subject", "html"):
        if values[required] is None:
            raise CampaignDefinitionError(f"{required} is required")
    if values["name"] is None and values["key"] is None:
        raise CampaignDefinitionError("name is required (or give a key)")
    lists = lines(conf, "lists")
    if not lists:
        raise CampaignDefinitionError("lists is required: one list name per line, e.g. newsletter")
    audience: dict[str, Any] = {"lists": lists, "where": parse_filters(lines(conf, "filters"))}
    if exclude := lines(conf, "exclude_lists"):
        audience["exclude_lists"] = exclude
    definition: dict[str, Any] = {name: value for name, value in values.items() if value is not None}
    definition["key"] = values["key"].strip() if values["key"] else derive_key(values["name"], run_date)
    definition["audience"] = audience
    definition["settings"] = {name: conf[name] for name in SETTING_FIELDS if conf.get(name) is not None}
    definition.update(timing(conf, now=now, settings=settings))
    return definition


def timing(conf: dict[str, Any], *, now: datetime, settings: Settings) -> dict[str, Any]:
    """The definition's send_at or recurrence from When, Send on/at, Time zone and Cron."""
    when = conf.get("when") or NOW
    zone = text(conf, "timezone") or settings.timezone
    day, clock, cron = text(conf, "send_date"), text(conf, "send_time"), text(conf, "cron")
    if when not in (NOW, AT, RECURRING):
        raise CampaignDefinitionError(f"when must be one of {NOW}, {AT}, {RECURRING}; got {when!r}")
    for name, value in (("send_date", day), ("send_time", clock)):
        if value is not None and when != AT:
            raise CampaignDefinitionError(f"{name} is filled in but when is {when!r}: pick 'at a date and time' "
                                          f"or clear {name}")
    if cron is not None and when != RECURRING:
        raise CampaignDefinitionError(f"cron is filled in but when is {when!r}: pick 'recurring' or clear cron")
    if when == AT:
        moment = scheduling.wall_clock(day, clock, zone)
        if moment <= now:
            raise CampaignDefinitionError(f"send_date/send_time {day} {clock} {zone} is in the past")
        return {"send_at": scheduling.utc_text(moment)}
    if when == RECURRING:
        if cron is None:
            raise CampaignDefinitionError("cron is required when the campaign is recurring, e.g. 0 9 * * MON")
        return {"recurrence": Recurrence.parse({"cron": cron, "timezone": zone}, field="").as_dict()}
    scheduling.zone_named(zone, field="timezone")  # a wrong zone is wrong even when nothing is timed
    return {}
