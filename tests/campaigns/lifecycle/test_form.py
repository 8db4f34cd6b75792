"""The send_campaign form: its Params as Airflow validates them, and its fields turned into a campaign definition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from campaigns.config import Settings
from campaigns.errors import CampaignDefinitionError
from campaigns.lifecycle import form
from campaigns.lifecycle.definitions import CampaignDefinition
from campaigns.lifecycle.pipeline import RunOptions, definition_from_conf
from tests.helpers import inline_campaign

NOW = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)
SETTINGS = Settings(from_email="news@example.com", from_name="Example News", timezone="Europe/Vienna")


def fields(**values):
    """A filled-in form: the fields an analyst types, every other field as the UI sends it (its default)."""
    conf = {name: spec["default"] for name, spec in form.param_specs(SETTINGS).items()}
    conf.update(name="November news", subject="Hi {{ first_name }}", html="<p>Hello</p>", lists=["newsletter"])
    conf.update(values)
    return conf


def definition(**values) -> dict:
    return form.form_definition(fields(**values), run_date=NOW, now=NOW, settings=SETTINGS)


def parsed(**values) -> CampaignDefinition:
    return definition_from_conf(fields(**values), settings=SETTINGS, now=NOW, run_date=NOW)


@pytest.fixture
def params():
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamsDict

    return ParamsDict({name: Param(**spec) for name, spec in form.param_specs(SETTINGS).items()})


# --- the Params: what Airflow accepts when the run is triggered ---------------------------------------------------

def test_an_empty_form_is_accepted_so_api_runs_are_never_blocked(params):
    values = params.validate()

    assert values["when"] == "now"
    assert values["timezone"] == "Europe/Vienna"  # CAMPAIGN_TIMEZONE is the field's default
    assert values["dry_run"] is False
    assert values["subject"] is None


def test_every_field_accepts_an_empty_value(params):
    for name in params:
        params[name] = None
    assert set(params.validate().values()) == {None}


def test_the_documented_api_conf_is_accepted(params):
    params["campaign_id"] = 42
    params["batch_size"] = 500
    params["dry_run"] = True
    params["test_recipients"] = ["me@example.com", ""]  # the UI's textarea keeps a trailing empty line

    assert params.validate()["campaign_id"] == 42


def test_the_date_and_time_inputs_values_pass_the_params_as_the_browser_sends_them(params):
    params["when"] = "at"
    params["send_date"] = "2026-12-05"  # <input type=date>
    params["send_time"] = "09:00"  # typed or picked from the proposals

    assert params.validate()["send_time"] == "09:00"


@pytest.mark.parametrize(("name", "value"), [
    ("subject", 5), ("lists", "newsletter"), ("filters", [{"country": "DE"}]), ("when", "later"),
    ("send_date", "next tuesday"), ("send_time", "9 o'clock"), ("track_opens", "yes"), ("dry_run", "false"),
    ("batch_size", 0),
    ("test_recipients", [f"t{i}@example.com" for i in range(21)]), ("campaign_id", 0),
])
def test_wrong_types_and_values_are_refused_when_the_run_is_triggered(params, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params[name] = value


def test_the_form_shows_its_sections_in_order_with_the_configured_defaults_named():
    specs = form.param_specs(SETTINGS)

    sections = list(dict.fromkeys(spec["section"] for spec in specs.values()))
    assert sections == ["Content", "Campaign", "Audience", "When", "Options", "Test first"]
    assert "news@example.com (SES_FROM_EMAIL)" in specs["from_email"]["description"]
    assert "Example News (SES_FROM_NAME)" in specs["from_name"]["description"]
    assert specs["html"]["format"] == specs["text"]["format"] == "multiline"
    # a date and a time of day the browser leaves as typed, never the date-time picker, which converts from its
    # own zone; the time is text ("time" in JSON schema demands a UTC offset, which a time input never sends)
    assert specs["send_date"]["format"] == "date"
    assert "format" not in specs["send_time"]
    assert "09:00" in specs["send_time"]["examples"]
    assert set(specs["when"]["values_display"]) == {"now", "at", "recurring", "null"}
    assert specs["dry_run"]["default"] is False
    assert "null" in specs["dry_run"]["type"]  # not marked required in the UI


# --- fields -> definition ------------------------------------------------------------------------------------

def test_every_content_field_reaches_the_definition():
    result = parsed(key="nov-news", preheader="Our November picks", from_name="Ana", from_email="ana@example.com",
                    reply_to="help@example.com", text="Hello", track_opens=False, track_clicks=True,
                    view_in_browser_footer=True)

    assert (result.key, result.name, result.subject, result.preheader) == (
        "nov-news", "November news", "Hi {{ first_name }}", "Our November picks")
    assert (result.from_name, result.from_email, result.reply_to) == ("Ana", "ana@example.com", "help@example.com")
    assert (result.html, result.text) == ("<p>Hello</p>", "Hello")
    assert result.settings == {"track_opens": False, "track_clicks": True, "view_in_browser_footer": True}
    assert result.send_at is None
    assert result.recurrence is None


def test_form_and_inline_json_give_the_same_definition():
    inline = inline_campaign(key="nov-news", name="November news", subject="Hi {{ first_name }}",
                             from_email="news@example.com", from_name="Example News", html="<p>Hello</p>",
                             audience={"lists": ["newsletter"], "where": {"country": ["DE", "AT"]}},
                             settings={"track_opens": True, "track_clicks": True, "view_in_browser_footer": False})

    from_form = parsed(key="nov-news", filters=["country: DE, AT"])
    from_json = definition_from_conf({"campaign": inline}, settings=SETTINGS, now=NOW, run_date=NOW)

    assert from_form == from_json


def test_empty_from_fields_fall_back_to_the_configured_defaults():
    result = parsed()

    assert (result.from_email, result.from_name, result.reply_to) == ("news@example.com", "Example News", None)


def test_filter_lines_become_the_audience_where():
    result = definition(filters=["country: DE, AT", " plan :pro ", ""])

    assert result["audience"] == {"lists": ["newsletter"], "where": {"country": ["DE", "AT"], "plan": ["pro"]}}


@pytest.mark.parametrize(("line", "problem"), [
    ("country DE", r"filters line 1 'country DE' must look like 'attribute: value, value'"),
    ("country:", r"filters line 1 'country:' must look like"),
    ("country: ,", r"filters line 1"),
])
def test_a_filter_line_that_is_not_attribute_colon_values_is_refused_naming_the_line(line, problem):
    with pytest.raises(CampaignDefinitionError, match=problem):
        definition(filters=[line])


def test_an_attribute_on_two_filter_lines_is_refused():
    with pytest.raises(CampaignDefinitionError, match="filters line 2: 'country' is on two lines"):
        definition(filters=["country: DE", "country: AT"])


def test_exclude_lists_and_lists_are_read_one_per_line():
    result = definition(lists=["newsletter", " ", "customers"], exclude_lists=["vip", ""])

    assert result["audience"]["lists"] == ["newsletter", "customers"]
    assert result["audience"]["exclude_lists"] == ["vip"]


def test_no_exclude_lists_leave_the_audience_as_before():
    assert "exclude_lists" not in definition(exclude_lists=["", " "])["audience"]


@pytest.mark.parametrize(("missing", "message"), [
    ({"subject": None}, "subject is required"),
    ({"subject": "  "}, "subject is required"),
    ({"html": ""}, "html is required"),
    ({"lists": ["", ""]}, "lists is required"),
    ({"name": None}, r"name is required \(or give a key\)"),
])
def test_a_missing_required_field_is_named(missing, message):
    with pytest.raises(CampaignDefinitionError, match=f"^{message}"):
        parsed(**missing)


def test_a_bad_key_is_refused_naming_the_key_field_without_the_inline_prefix():
    with pytest.raises(CampaignDefinitionError, match=r"^key is required: 1-128 characters"):
        parsed(key="bad key!")


# --- key derivation ---------------------------------------------------------------------------------------------

def test_an_empty_key_is_derived_from_the_name_and_the_run_date_in_utc():
    late_evening_vienna = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)  # already the 5th in Vienna, still the 4th in UTC

    assert form.derive_key("Black Friday: 30% off!", late_evening_vienna) == "black-friday-30-off-20261204"
    assert form.derive_key("Grüße aus Wien", NOW) == "grue-aus-wien-20261204"
    assert form.derive_key("Новости", NOW) == "campaign-20261204"


def test_the_same_name_on_the_same_day_derives_the_same_key():
    assert parsed().key == parsed().key == "november-news-20261204"


def test_a_derived_key_fits_a_recurring_campaign():
    result = parsed(name="x" * 300, when="recurring", cron="0 9 * * MON")

    assert len(result.key) <= 128 - 15


# --- when ---------------------------------------------------------------------------------------------------------

def test_the_date_and_time_are_wall_clock_time_in_the_chosen_zone():
    # 09:00 in Vienna in December is 08:00 UTC
    result = parsed(when="at", send_date="2026-12-05", send_time="09:00", timezone="Europe/Vienna")

    assert result.send_at == datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def test_summer_time_is_respected_and_a_one_digit_hour_is_accepted():
    result = parsed(when="at", send_date="2027-07-01", send_time="9:00", timezone="Europe/Vienna")

    assert result.send_at == datetime(2027, 7, 1, 7, 0, tzinfo=UTC)


def test_a_time_the_clocks_skip_is_refused_naming_it():
    with pytest.raises(CampaignDefinitionError, match=r"^send_time 02:30 does not exist on 2027-03-28 in "
                                                      r"Europe/Vienna"):
        parsed(when="at", send_date="2027-03-28", send_time="02:30", timezone="Europe/Vienna")


def test_an_empty_time_zone_is_the_configured_one():
    result = parsed(when="at", send_date="2026-12-05", send_time="09:00", timezone=None)

    assert result.send_at == datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def test_a_send_time_in_the_past_is_refused_naming_it_in_the_chosen_zone():
    with pytest.raises(CampaignDefinitionError,
                       match=r"^send_date/send_time 2026-01-01 09:00 Europe/Vienna is in the past"):
        parsed(when="at", send_date="2026-01-01", send_time="09:00", timezone="Europe/Vienna")


@pytest.mark.parametrize(("values", "message"), [
    ({"when": "at"}, "^send_date is required"),
    ({"when": "at", "send_date": "2026-12-05"}, "^send_time is required"),
    ({"when": "at", "send_date": "soon", "send_time": "09:00"}, "^send_date is required: the day"),
    ({"when": "at", "send_date": "2026-02-30", "send_time": "09:00"}, "^send_date/send_time 2026-02-30 09:00 is not"),
    ({"when": "at", "send_date": "2026-12-05", "send_time": "25:00"}, "^send_date/send_time 2026-12-05 25:00 is not"),
    ({"when": "at", "send_date": "2026-12-05", "send_time": "09:00", "timezone": "Mars/Olympus"},
     "^timezone 'Mars/Olympus' is not a known IANA timezone"),
    ({"timezone": "Vienna"}, "^timezone 'Vienna' is not a known IANA timezone"),
    ({"send_date": "2026-12-05"}, "^send_date is filled in but when is 'now'"),
    ({"send_time": "09:00"}, "^send_time is filled in but when is 'now'"),
    ({"when": "recurring"}, "^cron is required when the campaign is recurring"),
    ({"when": "recurring", "cron": "every monday"}, "^cron must have 5 fields"),
    ({"cron": "0 9 * * MON"}, "^cron is filled in but when is 'now'"),
])
def test_contradicting_or_unreadable_timing_is_refused_naming_the_field(values, message):
    with pytest.raises(CampaignDefinitionError, match=message):
        parsed(**values)


def test_recurring_runs_the_cron_in_the_chosen_zone():
    result = parsed(when="recurring", cron="0  9 * * MON", timezone="Europe/Vienna")

    assert result.recurrence.as_dict() == {"cron": "0 9 * * MON", "timezone": "Europe/Vienna"}


# --- which campaign: form, campaign_id or inline JSON ------------------------------------------------------------

def test_an_api_run_with_only_campaign_id_ignores_the_empty_form():
    conf = {name: spec["default"] for name, spec in form.param_specs(SETTINGS).items()} | {"campaign_id": 7}

    assert definition_from_conf(conf, settings=SETTINGS, now=NOW, run_date=NOW) is None


@pytest.mark.parametrize(("extra", "message"), [
    ({"campaign_id": 7}, r"got `campaign_id` and the form's fields \(name, subject, html, lists\)"),
    ({"campaign": inline_campaign()}, r"got `campaign` and the form's fields"),
])
def test_the_form_and_another_way_to_name_the_campaign_are_refused_together(extra, message):
    with pytest.raises(CampaignDefinitionError, match=message):
        definition_from_conf(fields(**extra), settings=SETTINGS, now=NOW, run_date=NOW)


def test_nothing_given_at_all_is_refused():
    with pytest.raises(CampaignDefinitionError, match="got none of them"):
        definition_from_conf({"when": "now"}, settings=SETTINGS, now=NOW, run_date=NOW)


def test_a_stored_campaign_cannot_be_scheduled_from_the_form():
    with pytest.raises(CampaignDefinitionError, match=r"^when: a stored campaign"):
        definition_from_conf({"campaign_id": 7, "when": "at"}, settings=SETTINGS, now=NOW, run_date=NOW)


# --- options --------------------------------------------------------------------------------------------------------

def test_test_recipients_are_read_one_per_line_and_a_missing_dry_run_is_off():
    options = RunOptions.from_conf({"test_recipients": ["me@example.com", "", " qa@example.net "],
                                    "dry_run": None}, SETTINGS)

    assert options.test_recipients == ("me@example.com", "qa@example.net")
    assert options.dry_run is False


def test_more_than_twenty_test_recipients_are_refused():
    with pytest.raises(CampaignDefinitionError, match=r"test_recipients: at most 20 addresses, got 21"):
        RunOptions.from_conf({"test_recipients": [f"t{i}@example.com" for i in range(21)]}, SETTINGS)
