"""One error tree: every exception the product defines lives in campaigns.errors, a missing campaign is one type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import campaigns
import tracking_service
from campaigns import errors
from campaigns.errors import CampaignDefinitionError, CampaignNotFound, ComposeError, IllegalTransition


def product_modules():
    """Every importable module of campaigns and tracking_service (not __main__ scripts or alembic's migrations)."""
    for package in (campaigns, tracking_service):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(".__main__") or info.name.startswith("campaigns.migrations"):
                continue
            yield importlib.import_module(info.name)


def defined_exceptions() -> dict[str, type]:
    """Exception classes found in the product's module namespaces, by `module.name` where they are defined."""
    found = {}
    for module in product_modules():
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) \
                    and value.__module__.split(".")[0] in ("campaigns", "tracking_service"):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_exception_class_of_campaigns_and_tracking_service_is_defined_in_campaigns_errors():
    found = defined_exceptions()
    elsewhere = {name for name, cls in found.items() if cls.__module__ != "campaigns.errors"}

    assert elsewhere == set(), "define these in campaigns.errors and draw them in its tree"


def test_every_exception_in_campaigns_errors_is_drawn_in_its_docstring_tree():
    tree = errors.__doc__ or ""
    defined = [name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__]

    assert defined
    assert [name for name in defined if f"── {name} " not in tree and f"    {name} " not in tree] == []


@pytest.mark.parametrize(("old_module", "name"), [
    ("campaigns.db", "ConnectionNotConfigured"),
    ("campaigns.feedback.tokens", "InvalidToken"),
    ("campaigns.feedback.sns", "SnsVerificationError"),
    ("campaigns.feedback.suppressions", "SuppressionRequestError"),
    ("campaigns.sending.compose", "TemplateProblem"),
    ("campaigns.sending.compose", "AddressProblem"),
    ("campaigns.sending.ratelimit", "LimiterUnavailable"),
    ("campaigns.sending.ratelimit", "RateUnavailable"),
    ("campaigns.lifecycle.stats", "CampaignNotFound"),
    ("campaigns.lifecycle.testsend", "TestSendRefused"),
])
def test_an_exception_that_moved_is_still_importable_from_its_old_module_as_the_same_class(old_module, name):
    assert getattr(importlib.import_module(old_module), name) is getattr(errors, name)


def test_compose_still_exports_its_problems():
    from campaigns.sending import compose

    assert {"TemplateProblem", "AddressProblem"} <= set(compose.__all__)


def test_template_and_address_problems_are_compose_errors_and_still_value_errors():
    problem = errors.TemplateProblem("html template, line 3: 'city' is undefined", part="html", line=3)

    assert isinstance(problem, ComposeError)
    assert isinstance(problem, ValueError)
    assert (problem.part, problem.line) == ("html", 3)
    assert issubclass(errors.AddressProblem, ComposeError)
    assert issubclass(errors.AddressProblem, ValueError)


@pytest.mark.parametrize("earlier_type", [IllegalTransition, CampaignDefinitionError, errors.TestSendRefused,
                                          ValueError, LookupError, errors.CampaignError])
def test_campaign_not_found_is_still_each_type_a_missing_campaign_raised_before(earlier_type):
    assert issubclass(CampaignNotFound, earlier_type)


def test_the_limiter_outages_stay_retryable_connection_errors_outside_campaign_error():
    assert issubclass(errors.LimiterUnavailable, ConnectionError)
    assert not issubclass(errors.LimiterUnavailable, errors.CampaignError)
    assert issubclass(errors.RateUnavailable, errors.LimiterUnavailable)


def _move(db):
    from campaigns import states

    states.move_campaign(db, 424242, states.PAUSED)


def _snapshot(db):
    from campaigns.audience.filters import Audience
    from campaigns.sending import ledger

    ledger.snapshot(db, 424242, Audience.parse({"lists": ["newsletter"]}), 10)


def _stats(db):
    from campaigns.lifecycle import stats

    stats.campaign_stats(db, 424242)


def _load(db):
    from campaigns.lifecycle import definitions

    definitions.load_campaign(db, 424242)


def _control(db):
    from campaigns.lifecycle import control

    control.apply_action(db, 424242, "pause")


def _test_send_by_key(db):
    from campaigns.lifecycle import testsend

    testsend.load_campaign(db, testsend.TestSendRequest.parse({"campaign_key": "nope",
                                                               "recipients": ["a@example.net"]}))


@pytest.mark.parametrize("look_up", [_move, _snapshot, _stats, _load, _control, _test_send_by_key])
def test_a_missing_campaign_raises_campaign_not_found_wherever_it_is_found(db, look_up):
    with pytest.raises(CampaignNotFound, match="does not exist"):
        look_up(db)
