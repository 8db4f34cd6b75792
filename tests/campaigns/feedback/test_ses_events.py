"""How SES's address strings become the addresses the product stores and suppresses."""

from __future__ import annotations

import pytest

from campaigns.audience.addresses import suppression_address
from campaigns.feedback.ses_events import parse_addresses


@pytest.mark.parametrize(("reported", "expected"), [
    (["ann@example.com"], ["ann@example.com"]),
    (["Ann@EXAMPLE.com"], ["ann@example.com"]),
    (["John <test123@gmail.com>"], ["test123@gmail.com"]),
    (['"Doe, John" <John@Example.com>'], ["john@example.com"]),
    (["=?UTF-8?B?w4RubmE=?= <anna@example.com>"], ["anna@example.com"]),
    (["<ann@example.com>"], ["ann@example.com"]),
    (["Jane Doe <jane@example.com>, Mary Doe <mary@example.com>"], ["jane@example.com", "mary@example.com"]),
    (["ann@xn--bcher-kva.de", "Ann <ANN@BÜCHER.de>"], ["ann@bücher.de"]),
    (["undisclosed-recipients:;", "not an address", '"a b"@example.com', "", None, 7], []),
], ids=["bare", "case", "display-name", "quoted-comma", "encoded-word", "angle-only", "several", "idn-once",
        "no-address"])
def test_reported_addresses_become_suppression_addresses(reported, expected):
    assert parse_addresses(reported) == expected


def test_parsed_address_is_the_form_an_imported_contact_is_matched_in():
    assert parse_addresses(["Jonas <JONAS@xn--bcher-kva.example>"]) == [suppression_address("Jonas@Bücher.example")]
