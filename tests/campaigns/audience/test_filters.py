"""Audience definitions: lists, attribute filters and exclude lists, validated with errors that name the field."""

from __future__ import annotations

import pytest

from campaigns.audience.filters import Audience
from campaigns.errors import CampaignDefinitionError


def test_exclude_lists_round_trip_through_the_stored_form():
    audience = Audience.parse({"lists": ["newsletter", "promo"], "where": {"country": ["DE", "AT"]},
                               "exclude_lists": ["customers", " vip ", "customers"]})
    assert audience.exclude_lists == ("customers", "vip")
    stored = audience.as_dict()
    assert stored == {"lists": ["newsletter", "promo"], "where": {"country": ["DE", "AT"]},
                      "exclude_lists": ["customers", "vip"]}
    assert Audience.parse(stored) == audience


@pytest.mark.parametrize("raw", [None, []])
def test_no_exclude_lists_stores_the_audience_as_before(raw):
    audience = Audience.parse({"lists": ["newsletter"], "exclude_lists": raw})
    assert audience.exclude_lists == ()
    # campaigns stored before exclude lists existed keep comparing equal to the same definition
    assert audience.as_dict() == {"lists": ["newsletter"], "where": {}}
    assert Audience.parse(audience.as_dict()) == audience


def test_a_single_exclude_list_name_is_accepted_like_lists():
    assert Audience.parse({"lists": "newsletter", "exclude_lists": "customers"}).exclude_lists == ("customers",)


@pytest.mark.parametrize("bad", [{"name": "x"}, [""], ["ok", 3], ["  "], 5])
def test_bad_exclude_lists_are_refused_naming_the_field(bad):
    with pytest.raises(CampaignDefinitionError, match=r"audience\.exclude_lists"):
        Audience.parse({"lists": ["newsletter"], "exclude_lists": bad})


def test_a_list_both_sent_to_and_excluded_is_refused_naming_it():
    with pytest.raises(CampaignDefinitionError, match=r"audience\.exclude_lists names 'newsletter'"):
        Audience.parse({"lists": ["newsletter", "promo"], "exclude_lists": ["newsletter"]})


def test_unknown_audience_keys_are_still_refused():
    with pytest.raises(CampaignDefinitionError, match="unknown keys: exclude"):
        Audience.parse({"lists": ["newsletter"], "exclude": ["customers"]})
