"""The local SES's account-level suppression list (moto has none of its calls), through boto3 as the product calls
it: the answers and errors of SES, on the REST paths of botocore's sesv2 model."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.local_ses.server import create_app, serving

DAY = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def local_ses():
    app, _ = create_app()
    with serving(app) as endpoint:
        yield app, endpoint, boto3.client("sesv2", endpoint_url=endpoint, region_name="us-east-1",
                                          aws_access_key_id="testing", aws_secret_access_key="testing")


def error_of(call) -> tuple[str, int]:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_delete_answer_as_ses(local_ses):
    _, _, ses = local_ses
    ses.put_suppressed_destination(EmailAddress="Ann@Example.com", Reason="COMPLAINT")

    entry = ses.get_suppressed_destination(EmailAddress="ann@example.com")["SuppressedDestination"]

    assert (entry["EmailAddress"], entry["Reason"]) == ("Ann@Example.com", "COMPLAINT")
    assert isinstance(entry["LastUpdateTime"], datetime)
    assert entry["Attributes"]["FeedbackId"]
    ses.delete_suppressed_destination(EmailAddress="ANN@example.com")
    assert error_of(lambda: ses.get_suppressed_destination(EmailAddress="ann@example.com")) == (
        "NotFoundException", 404)
    assert error_of(lambda: ses.delete_suppressed_destination(EmailAddress="ann@example.com")) == (
        "NotFoundException", 404)


def test_a_bad_reason_or_token_is_a_bad_request(local_ses):
    _, _, ses = local_ses
    assert error_of(lambda: ses.put_suppressed_destination(EmailAddress="a@example.com", Reason="SPAM")) == (
        "BadRequestException", 400)
    assert error_of(lambda: ses.list_suppressed_destinations(Reasons=["SPAM"])) == ("BadRequestException", 400)
    assert error_of(lambda: ses.list_suppressed_destinations(PageSize=1001)) == ("BadRequestException", 400)
    assert error_of(lambda: ses.list_suppressed_destinations(NextToken="not-a-token")) == (
        "InvalidNextTokenException", 400)


def test_list_pages_with_next_token_and_filters_by_date_and_reason(local_ses):
    app, _, ses = local_ses
    for i in range(5):
        app.suppressions.seed(f"u{i}@example.com", "BOUNCE" if i % 2 else "COMPLAINT", DAY + timedelta(days=i))

    first = ses.list_suppressed_destinations(PageSize=2)
    second = ses.list_suppressed_destinations(PageSize=2, NextToken=first["NextToken"])
    last = ses.list_suppressed_destinations(PageSize=2, NextToken=second["NextToken"])

    pages = [[s["EmailAddress"] for s in page["SuppressedDestinationSummaries"]] for page in (first, second, last)]
    assert pages == [["u0@example.com", "u1@example.com"], ["u2@example.com", "u3@example.com"], ["u4@example.com"]]
    assert "NextToken" not in last
    between = ses.list_suppressed_destinations(StartDate=DAY + timedelta(days=1), EndDate=DAY + timedelta(days=3),
                                               Reasons=["BOUNCE"])
    assert [s["EmailAddress"] for s in between["SuppressedDestinationSummaries"]] == [
        "u1@example.com", "u3@example.com"]


def test_moto_reset_empties_the_list_and_moto_still_answers_everything_else(local_ses):
    app, endpoint, ses = local_ses
    app.suppressions.seed("a@example.com", "BOUNCE")
    ses.create_email_identity(EmailIdentity="example.com")

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()

    assert ses.list_suppressed_destinations()["SuppressedDestinationSummaries"] == []
    assert ses.list_email_identities()["EmailIdentities"] == []
