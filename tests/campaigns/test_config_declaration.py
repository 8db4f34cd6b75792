"""The settings declaration (campaigns.config) is the one source: Settings, from_env and docs/configuration.md."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from campaigns.config import MAX_BATCH_SIZE, MIN_BATCH_SIZE, ConfigError, Settings, declarations

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SETTINGS_TABLE_HEADER = re.compile(r"^\| env var \| alias \(original design\) \| default \| meaning \|$")


def documented_settings() -> dict[str, tuple[tuple[str, ...], str]]:
    """env var -> (aliases, default cell) from every table of docs/configuration.md with the settings header."""
    rows: dict[str, tuple[tuple[str, ...], str]] = {}
    in_table = False
    for line in DOCS.read_text().splitlines():
        if SETTINGS_TABLE_HEADER.match(line):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or line.startswith("|---"):
            continue
        name, alias, default = (cell.strip() for cell in line.strip().strip("|").split("|")[:3])
        name = name.strip("`")
        assert name not in rows, f"{name} is documented twice"
        rows[name] = (tuple(re.findall(r"`([A-Z][A-Z0-9_]+)`", alias)), default)
    return rows


def shown(default: object, shown_default: str | None) -> str:
    """How the docs' default cell starts for a declared default."""
    if shown_default is not None:
        return shown_default
    if default is None or default == ():
        return "(none)"
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def test_every_declared_env_var_is_documented_with_its_aliases_and_default():
    documented = documented_settings()
    for _name, default, setting in declarations():
        if setting.env is None:
            continue
        assert setting.env in documented, f"{setting.env} is not in docs/configuration.md"
        aliases, cell = documented[setting.env]
        assert aliases == setting.aliases, f"{setting.env}: documented aliases {aliases}, declared {setting.aliases}"
        expected = shown(default, setting.shown_default)
        assert cell == expected or cell.startswith(expected + " "), f"{setting.env}: default {cell!r}, not {expected}"


def test_nothing_is_documented_that_is_not_declared():
    declared = {setting.env for _name, _default, setting in declarations() if setting.env}
    assert set(documented_settings()) - declared == set()


def test_every_settings_field_is_declared_once_with_its_own_env_var_and_a_doc():
    names = [f.name for f in fields(Settings)]
    assert [name for name, _default, _setting in declarations()] == names
    env_names = [setting.env for _name, _default, setting in declarations() if setting.env]
    aliases = [alias for _name, _default, setting in declarations() for alias in setting.aliases]
    assert len(set(env_names + aliases)) == len(env_names) + len(aliases)
    assert all(setting.doc.strip() for _name, _default, setting in declarations())


def test_the_defaults_are_the_declared_ones_when_nothing_is_set():
    assert Settings.from_env({}) == Settings()
    assert [default for _name, default, _setting in declarations()] == [getattr(Settings(), f.name)
                                                                         for f in fields(Settings)]


def test_connection_ids_are_fixed_names_not_read_from_the_environment():
    settings = Settings.from_env({"DB_CONN_ID": "other", "AWS_CONN_ID": "other", "REDIS_CONN_ID": "other"})
    assert (settings.db_conn_id, settings.aws_conn_id, settings.redis_conn_id) == (
        "campaign_db", "aws_default", "redis_default")


def test_secrets_stay_out_of_the_repr():
    settings = Settings.from_env({"TRACKING_SECRET_KEYS": "k-one", "REDIS_URL": "redis://:pw-two@cache:6379/0"})
    assert "k-one" not in repr(settings)
    assert "pw-two" not in repr(settings)
    assert settings.redis_url == "redis://:pw-two@cache:6379/0"


def test_config_error_is_a_campaigns_error_type_still_importable_from_config():
    from campaigns.errors import ConfigError as FromErrors

    assert ConfigError is FromErrors
    assert issubclass(ConfigError, ValueError)


@pytest.fixture(scope="module")
def send_dag_params():
    from tests.helpers import parse_dag

    return parse_dag("send_campaign").params


@pytest.mark.parametrize(("size", "accepted"), [
    (MIN_BATCH_SIZE - 1, False), (MIN_BATCH_SIZE, True), (MAX_BATCH_SIZE, True), (MAX_BATCH_SIZE + 1, False)])
def test_the_batch_size_range_is_one_rule_for_env_conf_and_the_dag_param(send_dag_params, size, accepted):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from campaigns.errors import CampaignDefinitionError
    from campaigns.lifecycle.pipeline import RunOptions

    def passes(check, *errors: type[Exception]) -> bool:
        try:
            check()
        except errors:
            return False
        return True

    def set_param() -> None:
        ParamsDict(send_dag_params)["batch_size"] = size

    assert passes(lambda: Settings.from_env({"SES_BATCH_SIZE": str(size)}), ConfigError) is accepted
    assert passes(lambda: RunOptions.from_conf({"batch_size": size}, Settings()), CampaignDefinitionError) is accepted
    assert passes(set_param, ParamValidationError) is accepted
