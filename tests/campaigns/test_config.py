"""Settings: one object from the environment, the original design's names as aliases, clear errors."""

from __future__ import annotations

import pytest

from campaigns.config import ConfigError, Settings


def test_defaults_when_nothing_is_set():
    settings = Settings.from_env({})
    assert settings.sending_rate == 14.0
    assert settings.batch_size == 500
    assert settings.tracking_secret_keys == ()


def test_original_design_names_are_accepted_as_aliases():
    settings = Settings.from_env({
        "AWS_SES_FROM_EMAIL": "news@example.com", "AWS_SES_FROM_NAME": "News",
        "AWS_SES_REPLY_TO_EMAIL": "r@example.com",
        "AWS_SES_CONFIGURATION_SET": "set", "AWS_SES_SENDING_RATE": "20", "AWS_SES_BATCH_SIZE": "250",
        "NEXT_PUBLIC_SITE_URL": "https://t.example.com/",
    })
    assert (settings.from_email, settings.from_name, settings.reply_to) == ("news@example.com", "News", "r@example.com")
    assert (settings.configuration_set, settings.sending_rate, settings.batch_size) == ("set", 20.0, 250)
    assert settings.tracking_base_url == "https://t.example.com"


def test_the_new_name_wins_over_its_alias():
    settings = Settings.from_env({"SES_SENDING_RATE": "50", "AWS_SES_SENDING_RATE": "20"})
    assert settings.sending_rate == 50.0


def test_auto_rate_and_key_rotation():
    settings = Settings.from_env({"SES_SENDING_RATE": "auto", "TRACKING_SECRET_KEYS": "new, old ,"})
    assert settings.sending_rate is None
    assert settings.tracking_secret_keys == ("new", "old")


@pytest.mark.parametrize(("env", "message"), [
    ({"SES_BATCH_SIZE": "ten"}, "SES_BATCH_SIZE must be a whole number"),
    ({"SES_BATCH_SIZE": "0"}, "SES_BATCH_SIZE must be at least 1"),
    ({"SES_BATCH_SIZE": "20000"}, "SES_BATCH_SIZE must be at most 10000"),
    ({"SES_SENDING_RATE": "-1"}, "SES_SENDING_RATE must be at least"),
    ({"TRACKING_BASE_URL": "track.example.com"}, "TRACKING_BASE_URL must be an absolute"),
    ({"SNS_TEST_CONFIRM_URL": "https://sns.evil.example/confirm"}, "SNS_TEST_CONFIRM_URL must be an http"),
    ({"SNS_TEST_CONFIRM_URL": "http://127.0.0.1.evil.example/"}, "SNS_TEST_CONFIRM_URL must be an http"),
    ({"SNS_TEST_CONFIRM_URL": "http://127.0.0.1:25500/sns/confirm?next=x"}, "SNS_TEST_CONFIRM_URL must be an http"),
    ({"SNS_TEST_CONFIRM_URL": "file:///etc/passwd"}, "SNS_TEST_CONFIRM_URL must be an http"),
    # the send plan's settings (campaigns.sending.plan)
    ({"SES_POOL_SLOTS": "0"}, "SES_POOL_SLOTS must be at least 1"),
    ({"SES_POOL_SLOTS": "four"}, "SES_POOL_SLOTS must be a whole number"),
    ({"SEND_TASK_PARALLELISM": "8", "SES_POOL_SLOTS": "4"}, "SEND_TASK_PARALLELISM must be at most SES_POOL_SLOTS"),
    ({"SEND_CPU_PER_EMAIL_US": "fast"}, "SEND_CPU_PER_EMAIL_US must be a number"),
    ({"SEND_CPU_PER_EMAIL_US": "0"}, "SEND_CPU_PER_EMAIL_US must be at least 1"),
    ({"SES_LATENCY_SECONDS": "0"}, "SES_LATENCY_SECONDS must be at least 0.001"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_conf_overrides_environment():
    settings = Settings.from_env({"SES_BATCH_SIZE": "250"}).with_overrides(batch_size=100, from_email=None)
    assert settings.batch_size == 100


def test_the_dev_confirm_url_is_off_by_default_and_takes_only_a_loopback_url():
    assert Settings.from_env({}).sns_test_confirm_url is None
    url = "http://127.0.0.1:25500/sns/confirm"
    assert Settings.from_env({"SNS_TEST_CONFIRM_URL": url}).sns_test_confirm_url == url
