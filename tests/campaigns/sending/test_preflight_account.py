"""Preflight's account checks (the cheap part of ses_doctor): a campaign SES would not send is refused before
anything is sent; real PostgreSQL for the audience, botocore's Stubber for the SES answers moto cannot give (moto
for DKIM off, which it reports for an identity created without DKIM). DNS is a FakeResolver: unreachable unless a
test gives records."""

from __future__ import annotations

from dataclasses import replace

import boto3
import pytest
from botocore.stub import Stubber

from campaigns.audience.filters import Audience
from campaigns.errors import PreflightFailed
from campaigns.lifecycle import definitions
from campaigns.sending import ledger, preflight
from campaigns.sending.messages import composer_for
from tests.helpers import FakeResolver, add_contacts, inline_campaign

RECIPIENTS = [f"user{i}@example.org" for i in range(5)]


@pytest.fixture
def campaign(db):
    add_contacts(db, RECIPIENTS)
    definition = definitions.CampaignDefinition.parse(inline_campaign())
    return definitions.load_campaign(db, definitions.upsert_campaign(db, definition)["id"])


@pytest.fixture
def account_settings(settings):
    return replace(settings, sending_rate=10.0, configuration_set="campaign-events")


def stubbed_ses(endpoint_url: str | None = None):
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=endpoint_url)
    return client, Stubber(client)


def account(**changes):
    answer = {"SendQuota": {"Max24HourSend": 50_000.0, "MaxSendRate": 14.0, "SentLast24Hours": 0.0},
              "SendingEnabled": True, "ProductionAccessEnabled": True, "EnforcementStatus": "HEALTHY",
              "DedicatedIpAutoWarmupEnabled": False}
    answer["SendQuota"].update(changes.pop("quota", {}))
    answer.update(changes)
    return answer


def verified_sender(stub, *, config_set=True, dkim=False):
    answer = {"IdentityType": "DOMAIN", "VerifiedForSendingStatus": True, "VerificationStatus": "SUCCESS"}
    if dkim:
        answer["DkimAttributes"] = {"SigningEnabled": True, "Status": "SUCCESS"}
    domain_sender(stub, answer, config_set=config_set)


def domain_sender(stub, answer, *, config_set=True):
    """news@example.com is no identity of its own; example.com answers `answer`; then the configuration set."""
    stub.add_client_error("get_email_identity", "NotFoundException", "not found", http_status_code=404,
                          expected_params={"EmailIdentity": "news@example.com"})
    stub.add_response("get_email_identity", answer, {"EmailIdentity": "example.com"})
    if config_set:
        stub.add_response("get_configuration_set", {"ConfigurationSetName": "campaign-events"},
                          {"ConfigurationSetName": "campaign-events"})


def run(db, campaign, settings, client, account_max_rate=None, resolver=None):
    return preflight.run(db, campaign, composer_factory=lambda c: composer_for(c, settings), settings=settings,
                         account_max_rate=account_max_rate, ses_client=client,
                         resolver=resolver or FakeResolver(unreachable=True))


def refused(db, campaign, settings, client, resolver=None) -> str:
    with pytest.raises(PreflightFailed) as failure:
        run(db, campaign, settings, client, resolver=resolver)
    return str(failure.value)


def test_healthy_production_account_with_a_verified_sender_passes(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account())
    verified_sender(stub)
    with stub:
        report = run(db, campaign, account_settings, client)
    stub.assert_no_pending_responses()
    assert report["ok"]
    assert report["account"]["checked"]
    assert report["account"]["max_send_rate"] == 14.0
    assert report["to_send"] == len(RECIPIENTS)


def test_sending_disabled_for_the_account_is_refused(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account(SendingEnabled=False, EnforcementStatus="SHUTDOWN"))
    verified_sender(stub)
    with stub:
        message = refused(db, campaign, account_settings, client)
    assert "SES sending is disabled for the account" in message
    assert "SHUTDOWN" in message


def test_rate_above_the_accounts_max_send_rate_is_refused(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account(quota={"MaxSendRate": 5.0}))
    verified_sender(stub)
    with stub:
        message = refused(db, campaign, account_settings, client)
    assert "SES_SENDING_RATE 10.0/s is above the account's maximum send rate 5.0/s" in message


def test_sandbox_account_refuses_unverified_recipients_and_names_them(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account(ProductionAccessEnabled=False))
    stub.add_response("list_email_identities", {"EmailIdentities": [
        {"IdentityType": "DOMAIN", "IdentityName": "example.com", "SendingEnabled": True,
         "VerificationStatus": "SUCCESS"},
        {"IdentityType": "EMAIL_ADDRESS", "IdentityName": "User0@example.org", "SendingEnabled": True,
         "VerificationStatus": "SUCCESS"},
        {"IdentityType": "EMAIL_ADDRESS", "IdentityName": "user1@example.org", "SendingEnabled": False,
         "VerificationStatus": "PENDING"}]})
    verified_sender(stub)
    with stub:
        message = refused(db, campaign, account_settings, client)
    assert "in the sandbox" in message
    assert "4 of 5 checked recipient(s) are not verified" in message
    assert "user1@example.org" in message
    assert "user0@example.org" not in message
    assert "request production access" in message


def test_sandbox_account_sends_to_a_verified_recipient_domain(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account(ProductionAccessEnabled=False))
    stub.add_response("list_email_identities", {"EmailIdentities": [
        {"IdentityType": "DOMAIN", "IdentityName": "example.org", "SendingEnabled": True,
         "VerificationStatus": "SUCCESS"}]})
    verified_sender(stub)
    with stub:
        report = run(db, campaign, account_settings, client)
    assert report["ok"]
    assert report["sandbox_unverified"] == 0


def test_campaign_larger_than_the_quota_left_is_refused(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account(quota={"Max24HourSend": 200.0, "SentLast24Hours": 197.0}))
    verified_sender(stub)
    with stub:
        message = refused(db, campaign, account_settings, client)
    assert "5 recipient(s) to send but only 3 sends left in the 24-hour quota" in message


def test_resumed_campaign_counts_only_its_pending_recipients_against_the_quota(db, campaign, account_settings):
    ledger.snapshot(db, campaign["id"], Audience.parse(campaign["audience"]), 500)
    db.execute("UPDATE campaign_recipients SET status = 'sent', ses_message_id = 'm-' || id, sent_at = now()"
               " WHERE campaign_id = %s AND email <> ALL(%s)", [campaign["id"], RECIPIENTS[:3]])
    resumed = definitions.load_campaign(db, campaign["id"])
    client, stub = stubbed_ses()
    stub.add_response("get_account", account(quota={"Max24HourSend": 200.0, "SentLast24Hours": 197.0}))
    verified_sender(stub)
    with stub:
        report = run(db, resumed, account_settings, client)
    assert report["ok"]
    assert report["to_send"] == 3


def test_unverified_sender_is_refused_with_the_fix(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account())
    for name in ("news@example.com", "example.com"):
        stub.add_client_error("get_email_identity", "NotFoundException", "not found", http_status_code=404,
                              expected_params={"EmailIdentity": name})
    stub.add_response("get_configuration_set", {"ConfigurationSetName": "campaign-events"})
    with stub:
        message = refused(db, campaign, account_settings, client)
    assert "neither news@example.com nor example.com is an SES identity" in message
    assert "aws sesv2 create-email-identity --email-identity example.com" in message


def test_missing_configuration_set_is_refused(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_response("get_account", account())
    verified_sender(stub, config_set=False)
    stub.add_client_error("get_configuration_set", "NotFoundException", "no such set", http_status_code=404)
    with stub:
        message = refused(db, campaign, account_settings, client)
    assert "configuration set 'campaign-events' (SES_CONFIGURATION_SET) does not exist" in message


def test_unreadable_account_is_reported_not_refused(db, campaign, account_settings):
    client, stub = stubbed_ses()
    stub.add_client_error("get_account", "AccessDeniedException", "not authorized", http_status_code=403)
    verified_sender(stub)
    with stub:
        report = run(db, campaign, account_settings, client)
    assert report["ok"]
    assert report["account"]["checked"] is False
    assert "AccessDeniedException" in report["account"]["reason"]


def test_local_ses_quota_comes_from_the_documented_local_setting(db, campaign, account_settings):
    # A local endpoint: no GetAccount call and no configuration set lookup (moto accepts any name).
    client, stub = stubbed_ses("http://127.0.0.1:25500")
    verified_sender(stub, config_set=False)
    with stub:
        message = refused(db, campaign, replace(account_settings, ses_local_max_24h_send=3.0), client)
    stub.assert_no_pending_responses()
    assert "only 3 sends left" in message
    assert "SES_LOCAL_MAX_24H_SEND" in message


def test_moto_in_process_ses_passes_as_in_the_dag_tests(db, campaign, account_settings, ses):
    # The send_campaign DAG tests run against this mock: no GetAccount, identities and the configuration set exist.
    report = run(db, campaign, account_settings, ses)
    assert report["ok"]
    assert report["account"]["checked"] is False


# --- sender authentication (authentication.py): bulk campaigns refused, smaller ones warned --------------------------

DMARC_NONE = {"_dmarc.example.com": ["v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"]}
SIGNING = {"IdentityType": "DOMAIN", "VerifiedForSendingStatus": True, "VerificationStatus": "SUCCESS",
           "DkimAttributes": {"SigningEnabled": True, "Status": "SUCCESS"}}


def bulk(settings, threshold):
    """The bulk-sender line moved to the 5-recipient test audience (its default is 5,000)."""
    return replace(settings, bulk_sender_threshold=threshold)


def authenticated(db, campaign, settings, resolver, *, threshold=4, answer=SIGNING):
    """Preflight against a healthy account whose example.com identity answers `answer`, with the bulk-sender line at
    `threshold`: the report, or the refusal's message."""
    client, stub = stubbed_ses()
    stub.add_response("get_account", account())
    domain_sender(stub, answer)
    with stub:
        try:
            return run(db, campaign, bulk(settings, threshold), client, resolver=resolver)
        except PreflightFailed as failure:
            return str(failure)


def test_bulk_campaign_without_dmarc_is_refused_with_the_record_to_add(db, campaign, account_settings):
    message = authenticated(db, campaign, account_settings, FakeResolver())
    assert "sender authentication (dmarc): no DMARC record at _dmarc.example.com" in message
    assert "5 recipients is above BULK_SENDER_THRESHOLD (4)" in message
    assert 'fix: add TXT _dmarc.example.com "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"' in message
    assert "from domain dkim" not in message


def test_campaign_at_the_threshold_without_dmarc_is_warned_not_refused(db, campaign, account_settings, caplog):
    with caplog.at_level("WARNING", logger=preflight.__name__):
        report = authenticated(db, campaign, account_settings, FakeResolver(), threshold=5)
    assert report["ok"]
    authentication = report["sender_authentication"]
    assert authentication["refused"] == []
    assert authentication["expected"] == 5
    assert [w.split(":")[0] for w in authentication["warnings"]] == ["dmarc"]
    assert "sender authentication, dmarc: fail: no DMARC record at _dmarc.example.com" in caplog.text


def test_bulk_campaign_with_dkim_off_in_moto_is_refused_with_the_enable_command(db, campaign, account_settings, ses):
    # the conftest's moto identity is created without DKIM: GetEmailIdentity says SigningEnabled false, NOT_STARTED
    message = refused(db, campaign, bulk(account_settings, 4), ses, FakeResolver(DMARC_NONE))
    assert "sender authentication (from domain dkim): DKIM for example.com: signing off, status NOT_STARTED" in message
    assert "put-email-identity-dkim-attributes --email-identity example.com --signing-enabled" in message
    # without DKIM nothing aligns (no custom MAIL FROM): the DMARC record does not help
    assert "sender authentication (dmarc): _dmarc.example.com p=none adkim=r aspf=r: neither DKIM" in message


def test_bulk_campaign_with_an_unverified_sender_is_refused(db, campaign, account_settings):
    pending = {"IdentityType": "DOMAIN", "VerifiedForSendingStatus": False, "VerificationStatus": "PENDING",
               "DkimAttributes": {"SigningEnabled": True, "Status": "PENDING"}}
    message = authenticated(db, campaign, account_settings, FakeResolver(DMARC_NONE), answer=pending)
    assert "sender: identity example.com is not verified (status PENDING)" in message
    assert "sender authentication (from domain dkim): DKIM for example.com: signing on, status PENDING" in message


def test_bulk_campaign_is_not_refused_when_dns_cannot_be_reached(db, campaign, account_settings):
    report = authenticated(db, campaign, account_settings, FakeResolver(unreachable=True))
    assert report["ok"]
    statuses = {c["name"]: c["status"] for c in report["sender_authentication"]["checks"]}
    assert statuses == {"from domain dkim": "pass", "mail from domain": "pass", "spf": "pass",
                        "dmarc": "not checkable"}
    assert report["sender_authentication"]["warnings"][0].startswith("dmarc: not checkable: DMARC of example.com")


def test_bulk_campaign_of_an_authenticated_domain_passes_without_warnings(db, campaign, account_settings):
    report = authenticated(db, campaign, account_settings, FakeResolver(DMARC_NONE))
    assert report["ok"]
    assert report["sender_authentication"]["warnings"] == []
    assert report["sender_authentication"]["refused"] == []


def test_local_ses_never_refuses_on_dkim_it_cannot_really_report(db, campaign, account_settings):
    # the local stack (`make up`) with DNS unreachable, as the e2e campaigns of 5,000+ recipients send through it
    client, stub = stubbed_ses("http://127.0.0.1:25500")
    verified_sender(stub, config_set=False)
    with stub:
        report = run(db, campaign, bulk(account_settings, 4), client)
    assert report["ok"]
    statuses = {c["name"]: c["status"] for c in report["sender_authentication"]["checks"]}
    assert statuses["from domain dkim"] == "not checkable locally"
    assert statuses["dmarc"] == "not checkable"
