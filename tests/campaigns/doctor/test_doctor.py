"""ses_doctor: each fix message has a passing and a failing case (botocore Stubber where moto cannot answer, real
PostgreSQL, Redis and Airflow CLI for theirs), and the local stack (moto server) reports only pass or
`not checkable locally`."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from campaigns.config import Settings
from campaigns.doctor import checks as doctor
from campaigns.doctor import cli
from campaigns.doctor.checks import FAIL, LOCAL, PASS, WARN, AwsClients, Check
from tests.helpers import FakeResolver

TOPIC = "arn:aws:sns:us-east-1:111122223333:ses-events"
BASE = "https://track.example.test"
ENDPOINT = BASE + "/webhooks/ses"
SUBSCRIPTION = TOPIC + ":2f1e6c1a-0b5e-4d1e-9a57-0c3c0b9f4d11"
ALL_EVENTS = list(doctor.REQUIRED_EVENT_TYPES)


def aws_client(service: str):
    """A client for real AWS endpoints; the Stubber answers every call, nothing leaves the machine."""
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="secret")


@pytest.fixture
def stubs():
    ses, sts, sns = aws_client("sesv2"), aws_client("sts"), aws_client("sns")
    stubbers = {"ses": Stubber(ses), "sts": Stubber(sts), "sns": Stubber(sns)}
    for stub in stubbers.values():
        stub.activate()
    yield AwsClients(ses=ses, sts=sts, sns=lambda region: sns), stubbers
    for stub in stubbers.values():
        stub.assert_no_pending_responses()
        stub.deactivate()


@pytest.fixture
def base_settings():
    return replace(Settings.from_env({}), tracking_base_url=BASE, tracking_secret_keys=("k",),
                   from_email="news@example.com", configuration_set="campaign-events", sending_rate=14.0,
                   sns_topic_arns=(TOPIC,))


def by_name(checks) -> dict[str, Check]:
    return {check.name: check for check in checks}


# --- credentials ---------------------------------------------------------------------------------------------------


def test_credentials_pass_with_the_account_they_belong_to(stubs):
    aws, stub = stubs
    stub["sts"].add_response("get_caller_identity", {"Account": "111122223333", "UserId": "AIDA",
                                                     "Arn": "arn:aws:iam::111122223333:user/campaigns"})
    check = doctor.check_credentials(aws)
    assert check.status == PASS
    assert "111122223333" in check.detail
    assert "us-east-1" in check.detail


def test_wrong_credentials_fail_with_the_rotation_fix(stubs):
    aws, stub = stubs
    stub["sts"].add_client_error("get_caller_identity", "InvalidClientTokenId", "The security token is invalid.")
    check = doctor.check_credentials(aws)
    assert check.status == FAIL
    assert "InvalidClientTokenId" in check.detail
    assert "rotate the access key" in check.fix


def test_endpoint_url_pointing_every_service_at_ses_fails_with_the_per_service_fix():
    def client(service):
        return boto3.client(service, region_name="eu-west-1", endpoint_url="https://email.eu-west-1.amazonaws.com",
                            aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")

    check = doctor.check_credentials(AwsClients(ses=client("sesv2"), sts=client("sts"), sns=client))
    assert check.status == FAIL
    assert "remove endpoint_url from aws_default" in check.fix


# --- account -------------------------------------------------------------------------------------------------------


def account_answer(**changes):
    answer = {"SendQuota": {"Max24HourSend": 50_000.0, "MaxSendRate": 14.0, "SentLast24Hours": 100.0},
              "SendingEnabled": True, "ProductionAccessEnabled": True, "EnforcementStatus": "HEALTHY",
              "DedicatedIpAutoWarmupEnabled": False}
    quota = changes.pop("quota", {})
    answer["SendQuota"].update(quota)
    answer.update(changes)
    return answer


ACCOUNT_CHECKS = ("ses sending enabled", "ses production access", "ses enforcement status", "ses send rate",
                  "ses daily quota")


def test_healthy_production_account_passes_every_account_check(stubs, base_settings):
    aws, stub = stubs
    stub["ses"].add_response("get_account", account_answer())
    checks = by_name(doctor.check_account(aws.ses, base_settings))
    assert tuple(checks) == ACCOUNT_CHECKS
    assert {check.status for check in checks.values()} == {PASS}
    assert "49,900 of 50,000" in checks["ses daily quota"].detail


@pytest.mark.parametrize(("changes", "name", "detail", "fix"), [
    ({"SendingEnabled": False}, "ses sending enabled", "disabled", "put-account-sending-attributes --sending-enabled"),
    ({"ProductionAccessEnabled": False}, "ses production access", "sandbox: it sends only to verified",
     "request production access"),
    ({"EnforcementStatus": "PROBATION"}, "ses enforcement status", "reviewing the account", "Reputation metrics"),
    ({"EnforcementStatus": "SHUTDOWN"}, "ses enforcement status", "paused sending", "Reputation metrics"),
    ({"quota": {"MaxSendRate": 1.0}}, "ses send rate", "14/s is above MaxSendRate 1/s",
     "set SES_SENDING_RATE to at most 1"),
    ({"quota": {"SentLast24Hours": 50_000.0}}, "ses daily quota", "used up", "higher quota"),
])
def test_each_account_problem_fails_with_its_fix(stubs, base_settings, changes, name, detail, fix):
    aws, stub = stubs
    stub["ses"].add_response("get_account", account_answer(**changes))
    checks = by_name(doctor.check_account(aws.ses, base_settings))
    assert checks[name].status == FAIL
    assert detail in checks[name].detail
    assert fix in checks[name].fix
    assert [c.name for c in checks.values() if c.status == FAIL] == [name]


def test_auto_rate_passes_at_max_send_rate_times_the_safety_factor(stubs, base_settings):
    aws, stub = stubs
    stub["ses"].add_response("get_account", account_answer(quota={"MaxSendRate": 50.0}))
    checks = by_name(doctor.check_account(aws.ses, replace(base_settings, sending_rate=None)))
    assert checks["ses send rate"].status == PASS
    assert "50/s" in checks["ses send rate"].detail
    assert "= 45/s" in checks["ses send rate"].detail


def test_get_account_denied_names_the_missing_permission(stubs, base_settings):
    aws, stub = stubs
    stub["ses"].add_client_error("get_account", "AccessDeniedException", "not authorized to perform ses:GetAccount",
                                 http_status_code=403)
    [check] = doctor.check_account(aws.ses, base_settings)
    assert check.status == FAIL
    assert "ses:GetAccount" in check.fix
    assert "Least-privilege IAM policy" in check.fix


# --- sender identity ---------------------------------------------------------------------------------------------


def identity(kind="DOMAIN", status="SUCCESS", dkim="SUCCESS", signing=True, mail_from=None):
    answer = {"IdentityType": kind, "FeedbackForwardingStatus": True, "VerifiedForSendingStatus": status == "SUCCESS",
              "VerificationStatus": status, "DkimAttributes": {"SigningEnabled": signing, "Status": dkim}}
    if mail_from:
        answer["MailFromAttributes"] = mail_from
    return answer


def not_found(stub, name):
    stub.add_client_error("get_email_identity", "NotFoundException", f"{name} not found", http_status_code=404,
                          expected_params={"EmailIdentity": name})


def test_verified_dkim_signed_domain_passes_both_sender_checks(stubs):
    aws, stub = stubs
    not_found(stub["ses"], "news@example.com")
    stub["ses"].add_response("get_email_identity", identity(), {"EmailIdentity": "example.com"})
    checks = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))
    assert checks["from identity"].status == PASS
    assert "example.com" in checks["from identity"].detail
    assert checks["from domain dkim"].status == PASS


def test_unknown_sender_fails_with_the_create_identity_command(stubs):
    aws, stub = stubs
    not_found(stub["ses"], "news@example.com")
    not_found(stub["ses"], "example.com")
    checks = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))
    assert checks["from identity"].status == FAIL
    assert "aws sesv2 create-email-identity --email-identity example.com" in checks["from identity"].fix
    assert checks["from domain dkim"].status == FAIL
    assert "not an SES domain identity" in checks["from domain dkim"].detail


def test_pending_domain_fails_with_the_dkim_records_to_publish(stubs):
    aws, stub = stubs
    not_found(stub["ses"], "news@example.com")
    stub["ses"].add_response("get_email_identity", identity(status="PENDING", dkim="PENDING"),
                             {"EmailIdentity": "example.com"})
    checks = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))
    assert checks["from identity"].status == FAIL
    assert "status PENDING" in checks["from identity"].detail
    assert "--query DkimAttributes.Tokens" in checks["from identity"].fix


def test_unconfirmed_address_fails_with_the_verification_email_fix(stubs):
    aws, stub = stubs
    stub["ses"].add_response("get_email_identity", identity(kind="EMAIL_ADDRESS", status="PENDING"),
                             {"EmailIdentity": "news@example.com"})
    not_found(stub["ses"], "example.com")
    check = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))["from identity"]
    assert check.status == FAIL
    assert "verification email" in check.fix


def test_verified_address_passes_without_a_domain_identity_but_dkim_fails(stubs):
    aws, stub = stubs
    stub["ses"].add_response("get_email_identity", identity(kind="EMAIL_ADDRESS"),
                             {"EmailIdentity": "news@example.com"})
    not_found(stub["ses"], "example.com")
    checks = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))
    assert checks["from identity"].status == PASS
    assert checks["from domain dkim"].status == FAIL
    assert "DMARC fails" in checks["from domain dkim"].detail


def test_failed_custom_mail_from_that_rejects_fails_with_the_dns_records_fix(stubs):
    aws, stub = stubs
    not_found(stub["ses"], "news@example.com")
    stub["ses"].add_response("get_email_identity", identity(mail_from={
        "MailFromDomain": "bounce.example.com", "MailFromDomainStatus": "FAILED",
        "BehaviorOnMxFailure": "REJECT_MESSAGE"}), {"EmailIdentity": "example.com"})
    check = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))["from identity"]
    assert check.status == FAIL
    assert "MailFromDomainNotVerified" in check.detail
    assert "MX and SPF records for bounce.example.com" in check.fix


def test_dkim_signing_off_fails_with_the_enable_command(stubs):
    aws, stub = stubs
    not_found(stub["ses"], "news@example.com")
    stub["ses"].add_response("get_email_identity", identity(signing=False), {"EmailIdentity": "example.com"})
    check = by_name(doctor.check_sender(aws.ses, "news@example.com", local=False))["from domain dkim"]
    assert check.status == FAIL
    assert "put-email-identity-dkim-attributes --email-identity example.com --signing-enabled" in check.fix


def report_lines(checks) -> dict[str, list[str]]:
    """The rendered report's lines by check name: the check's own line, then its fix line when it has one."""
    lines: dict[str, list[str]] = {}
    rendered = doctor.Report(checks).render().splitlines()
    for check in checks:
        at = next(i for i, line in enumerate(rendered) if f" {check.name} " in line and line.startswith("["))
        lines[check.name] = rendered[at:at + (2 if check.fix else 1)]
    return lines


def sender_report(stubs, resolver, **domain_identity) -> tuple[list[Check], dict[str, list[str]]]:
    """check_sender for news@example.com (no address identity, example.com answering `identity(**domain_identity)`)
    and the lines its findings render as."""
    aws, stub = stubs
    not_found(stub["ses"], "news@example.com")
    stub["ses"].add_response("get_email_identity", identity(**domain_identity), {"EmailIdentity": "example.com"})
    checks = doctor.check_sender(aws.ses, "news@example.com", local=False, resolver=resolver)
    return checks, report_lines(checks)


def test_missing_dmarc_and_dkim_off_are_failures_with_their_fixes_in_the_output(stubs):
    checks, lines = sender_report(stubs, FakeResolver(), signing=False, dkim="NOT_STARTED")
    assert lines["dmarc"][0].startswith("[fail]")
    assert "no DMARC record at _dmarc.example.com" in lines["dmarc"][0]
    assert 'fix: add TXT _dmarc.example.com "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"' in lines[
        "dmarc"][1]
    assert lines["from domain dkim"][0].startswith("[fail]")
    assert "--signing-enabled" in lines["from domain dkim"][1]
    assert lines["spf"][0].startswith("[pass]")
    assert "amazonses.com" in lines["spf"][0]
    assert doctor.Report(checks).render().endswith("2 failed")


def test_unreachable_dns_is_not_checkable_in_the_output_and_fails_nothing(stubs):
    checks, lines = sender_report(stubs, FakeResolver(unreachable=True))
    assert lines["dmarc"][0].startswith("[not checkable]")
    assert "DNS did not answer for _dmarc.example.com TXT" in lines["dmarc"][0]
    assert doctor.Report(checks).ok
    assert doctor.Report(checks).render().endswith("0 failed: ready to send")


def test_custom_mail_from_pending_is_a_warning_counted_in_the_output(stubs):
    resolver = FakeResolver({"_dmarc.example.com": ["v=DMARC1; p=quarantine; adkim=s"]})
    checks, lines = sender_report(stubs, resolver, mail_from={
        "MailFromDomain": "bounce.example.com", "MailFromDomainStatus": "PENDING",
        "BehaviorOnMxFailure": "USE_DEFAULT_VALUE"})
    assert lines["mail from domain"][0].startswith("[warn]")
    assert "feedback-smtp.<region>.amazonses.com" in lines["mail from domain"][1]
    assert lines["dmarc"][0].startswith("[pass]")
    assert "through DKIM d=example.com" in lines["dmarc"][0]
    assert doctor.Report(checks).render().endswith("0 failed, 1 to look at: ready to send")


def test_no_sender_configured_fails_with_the_setting_to_set(stubs):
    aws, _ = stubs
    check = by_name(doctor.check_sender(aws.ses, None, local=False))["from identity"]
    assert check.status == FAIL
    assert "SES_FROM_EMAIL" in check.fix


# --- configuration set, event destination, SNS subscription -------------------------------------------------------


def destination(types=ALL_EVENTS, topic=TOPIC, enabled=True):
    return {"Name": "sns-events", "Enabled": enabled, "MatchingEventTypes": list(types),
            "SnsDestination": {"TopicArn": topic}}


def stub_events(stub, *, config_set=True, sending=True, destinations=None, subscriptions=None, raw="false",
                version="2"):
    """Answer the event checks' calls in order, up to where the check under test stops."""
    if config_set is False:
        stub["ses"].add_client_error("get_configuration_set", "NotFoundException", "no such set",
                                     http_status_code=404)
        return
    stub["ses"].add_response("get_configuration_set", {"ConfigurationSetName": "campaign-events",
                                                       "SendingOptions": {"SendingEnabled": sending}},
                             {"ConfigurationSetName": "campaign-events"})
    if not sending:
        return
    stub["ses"].add_response("get_configuration_set_event_destinations",
                             {"EventDestinations": [destination()] if destinations is None else destinations})
    if destinations is not None:
        return
    if subscriptions is None:
        subscriptions = [{"SubscriptionArn": SUBSCRIPTION, "Owner": "111122223333", "Protocol": "https",
                          "Endpoint": ENDPOINT, "TopicArn": TOPIC}]
    stub["sns"].add_response("list_subscriptions_by_topic", {"Subscriptions": subscriptions}, {"TopicArn": TOPIC})
    if not any(s["SubscriptionArn"].startswith("arn:") and s["Endpoint"] == ENDPOINT for s in subscriptions):
        return
    stub["sns"].add_response("get_subscription_attributes", {"Attributes": {"RawMessageDelivery": raw}},
                             {"SubscriptionArn": SUBSCRIPTION})
    if raw == "true":
        return
    stub["sns"].add_response("get_topic_attributes", {"Attributes": {"SignatureVersion": version}},
                             {"TopicArn": TOPIC})


def test_configuration_set_publishing_every_event_to_a_confirmed_subscription_passes(stubs, base_settings):
    aws, stub = stubs
    stub_events(stub)
    checks = by_name(doctor.check_events(aws, base_settings))
    assert {c.status for c in checks.values()} == {PASS}, checks
    assert ENDPOINT in checks["sns subscription"].detail


@pytest.mark.parametrize(("events", "name", "detail", "fix"), [
    ({"config_set": False}, "configuration set", "does not exist", "create-configuration-set"),
    ({"sending": False}, "configuration set", "sending is disabled", "put-configuration-set-sending-options"),
    ({"destinations": []}, "event destination", "no enabled SNS event destination",
     "create-configuration-set-event-destination"),
    ({"destinations": [destination(enabled=False)]}, "event destination", "no enabled SNS event destination",
     '"MatchingEventTypes":["SEND","DELIVERY","BOUNCE","COMPLAINT","REJECT","DELIVERY_DELAY","RENDERING_FAILURE"]'),
    ({"destinations": [destination(types=["SEND", "DELIVERY", "BOUNCE", "COMPLAINT", "REJECT"])]},
     "event destination", "does not publish DELIVERY_DELAY, RENDERING_FAILURE", "update-configuration-set-event"),
    ({"destinations": [destination(topic=TOPIC + "-old")]}, "event destination", "not in SNS_TOPIC_ARNS",
     "add it to SNS_TOPIC_ARNS"),
    ({"subscriptions": []}, "sns subscription", "no HTTPS subscription", f"--notification-endpoint {ENDPOINT}"),
    ({"subscriptions": [{"SubscriptionArn": "PendingConfirmation", "Owner": "111122223333", "Protocol": "https",
                         "Endpoint": ENDPOINT, "TopicArn": TOPIC}]}, "sns subscription", "pending confirmation",
     "SNS_TOPIC_ARNS"),
    ({"raw": "true"}, "sns subscription", "raw message delivery is ON",
     "--attribute-name RawMessageDelivery --attribute-value false"),
    ({"version": "1"}, "sns subscription", "SignatureVersion 1",
     "--attribute-name SignatureVersion --attribute-value 2"),
])
def test_each_event_setup_problem_fails_with_its_fix(stubs, base_settings, events, name, detail, fix):
    aws, stub = stubs
    stub_events(stub, **events)
    checks = by_name(doctor.check_events(aws, base_settings))
    assert checks[name].status == FAIL
    assert detail in checks[name].detail
    assert fix in checks[name].fix


def test_no_configuration_set_configured_fails_every_event_check(stubs, base_settings):
    aws, _ = stubs
    checks = by_name(doctor.check_events(aws, replace(base_settings, configuration_set=None)))
    assert {c.status for c in checks.values()} == {FAIL}
    assert "SES_CONFIGURATION_SET" in checks["configuration set"].fix


# --- tracking service ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """The real tracking service over https (self-signed, like the local stack) on a free loopback port."""
    from werkzeug.serving import make_server

    from devstack.settings import StackSettings
    from devstack.stack import self_signed_certificate
    from tracking_service import create_app

    cert, key = self_signed_certificate(StackSettings(state_dir=tmp_path_factory.mktemp("tls")))
    app = create_app({"TRACKING_DRAINER": False, "TRACKING_SPOOL_DIR": tmp_path_factory.mktemp("spool")})
    server = make_server("127.0.0.1", 0, app, threaded=True,
                         ssl_context=(str(cert), str(key)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_local_tracking_service_answering_healthz_is_not_checkable_locally(base_settings, tracking_server):
    check = doctor.check_tracking(replace(base_settings, tracking_base_url=tracking_server))
    assert check.status == LOCAL
    assert "answers 200" in check.detail


def test_tracking_service_whose_database_is_down_fails_with_where_to_look(base_settings, tracking_server,
                                                                        monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DB", "postgresql://nobody@127.0.0.1:1/none")
    check = doctor.check_tracking(replace(base_settings, tracking_base_url=tracking_server))
    assert check.status == FAIL
    assert "answered 503" in check.detail
    assert '"postgres":"error: ' in check.detail.replace(" ", "").replace('error:', 'error: ')
    assert "tracking service's log" in check.fix


def test_public_tracking_url_passes_only_with_a_verified_certificate(base_settings):
    calls = []

    def get(url, *, verify):
        calls.append((url, verify))
        return 200, '{"status": "ok"}'

    assert doctor.check_tracking(base_settings, get).status == PASS
    assert calls == [(BASE + "/healthz", True)]


def test_untrusted_certificate_fails_with_the_public_ca_fix(base_settings, tracking_server):
    # 127.0.0.1 over a public-looking name would need DNS; the certificate check itself is what is tested here.
    def get(url, *, verify):
        return doctor.http_get(tracking_server + "/healthz", verify=verify)

    check = doctor.check_tracking(base_settings, get)
    assert check.status == FAIL
    assert "not trusted" in check.detail
    assert "trusted public CA" in check.fix


def test_http_tracking_url_and_unreachable_service_fail(base_settings):
    check = doctor.check_tracking(replace(base_settings, tracking_base_url="http://track.example.test"))
    assert check.status == FAIL
    assert "is not https" in check.detail
    check = doctor.check_tracking(replace(base_settings, tracking_base_url="https://127.0.0.1:1"))
    assert check.status == FAIL
    assert "does not answer" in check.detail
    assert "start the tracking service" in check.fix


# --- Airflow pool (CLI), Redis, PostgreSQL -------------------------------------------------------------------------


def airflow(*args):
    return subprocess.run([doctor.airflow_cli(), *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture
def ses_pool():
    """The pool `ses` in the test AIRFLOW_HOME, removed afterwards."""
    airflow("pools", "set", "ses", "3", "send tasks")
    yield
    airflow("pools", "delete", "ses")


def test_pool_check_reads_the_pool_through_the_airflow_cli(ses_pool):
    check = doctor.check_pool()
    assert check.status == PASS
    assert "3 slot(s)" in check.detail


def test_pool_of_another_size_than_ses_pool_slots_warns_with_both_numbers(ses_pool):
    check = doctor.check_pool(expected_slots=4)
    assert check.status == WARN
    assert "has 3 slot(s), but send tasks are planned for SES_POOL_SLOTS = 4" in check.detail
    assert "SES_POOL_SLOTS=3" in check.fix
    assert doctor.check_pool(expected_slots=3).status == PASS


def test_missing_pool_fails_with_the_command_that_creates_it():
    check = doctor.check_pool()  # the test AIRFLOW_HOME has only default_pool unless ses_pool made one
    assert check.status == FAIL
    assert "no pool 'ses'" in check.detail
    assert "airflow pools set ses" in check.fix


def test_pool_check_without_the_airflow_cli_says_where_to_run(tmp_path):
    check = doctor.check_pool(str(tmp_path / "airflow"))
    assert check.status == FAIL
    assert "where Airflow is installed" in check.fix


def test_redis_and_postgresql_pass_when_they_answer(settings, db, redis_client):
    assert doctor.check_redis(settings).status == PASS
    check = doctor.check_postgres(settings)
    assert check.status == PASS
    assert "schema at" in check.detail


def test_redis_down_fails_with_the_connection_to_fix(settings, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_DEFAULT", "redis://127.0.0.1:1")
    check = doctor.check_redis(settings)
    assert check.status == FAIL
    assert "redis_default" in check.fix


def test_postgresql_down_or_unmigrated_fails_with_the_fix(settings, monkeypatch, dsn):
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DB", "postgresql://campaigns:campaigns@127.0.0.1:1/campaigns")
    check = doctor.check_postgres(settings)
    assert check.status == FAIL
    assert "campaign_db" in check.fix
    assert "campaigns@" not in check.detail  # never the DSN: it carries the password
    # The maintenance database answers but has no campaign schema.
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DB", dsn.rsplit("/", 1)[0] + "/postgres")
    check = doctor.check_postgres(settings)
    assert check.status == FAIL
    assert "schema is at nothing" in check.detail
    assert "migrations" in check.fix


def test_redis_url_configures_redis_default_when_no_connection_is_set(monkeypatch, settings, redis_client):
    from campaigns import db as campaign_db
    from devstack.settings import SETTINGS

    monkeypatch.delenv("AIRFLOW_CONN_REDIS_DEFAULT")
    monkeypatch.setenv("REDIS_URL", SETTINGS.redis_url(SETTINGS.test_redis_db))
    client = campaign_db.resolve_redis()
    client.set("doctor-probe", "via REDIS_URL")
    client.close()
    assert redis_client.get("doctor-probe") == b"via REDIS_URL"
    assert doctor.check_redis(settings).status == PASS


def test_airflow_connection_wins_over_redis_url(monkeypatch, settings, redis_client):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert doctor.check_redis(settings).status == PASS  # AIRFLOW_CONN_REDIS_DEFAULT (the test Redis) is used
    monkeypatch.delenv("AIRFLOW_CONN_REDIS_DEFAULT")
    assert doctor.check_redis(settings).status == FAIL


def test_unusable_redis_url_is_refused_naming_the_setting_not_the_password():
    from campaigns.config import ConfigError

    with pytest.raises(ConfigError, match="REDIS_URL must be a redis://") as failure:
        Settings.from_env({"REDIS_URL": "http://user:s3cret@cache.example.com:6379"})
    assert "s3cret" not in str(failure.value)
    assert Settings.from_env({"REDIS_URL": "rediss://default:pw@cache.example.com:6380"}).redis_url.startswith(
        "rediss://")


# --- the local stack: pass or `not checkable locally`, never a false pass ---------------------------------------


@pytest.fixture
def local_ses():
    """moto server on a free port with example.com verified, as `make up` runs it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"

    def client(service, region="us-east-1"):
        return boto3.client(service, endpoint_url=url, region_name=region, aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    aws = AwsClients(ses=client("sesv2"), sts=client("sts"), sns=lambda region: client("sns", region))
    aws.ses.create_email_identity(EmailIdentity="example.com",
                                  DkimSigningAttributes={"NextSigningKeyLength": "RSA_2048_BIT"})
    yield aws
    server.stop()


def test_local_stack_reports_only_pass_or_not_checkable_locally(local_ses, settings, db, redis_client,
                                                                 tracking_server, ses_pool):
    local = replace(settings, tracking_base_url=tracking_server, sending_rate=10.0, ses_local_max_send_rate=14.0,
                    ses_pool_slots=3)  # the ses_pool fixture's size
    # example.com's real DMARC record, as a resolver that reaches DNS would answer
    resolver = FakeResolver({"_dmarc.example.com": ["v=DMARC1;p=reject;sp=reject;adkim=s;aspf=s"]})
    report = doctor.run_checks(local, local_ses, resolver=resolver)
    statuses = {check.name: check.status for check in report.checks}
    assert report.ok, report.render()
    assert set(statuses.values()) == {PASS, LOCAL}
    # what moto cannot answer truthfully is never a pass, nor is DMARC alignment resting on moto's DKIM
    for name in ("ses sending enabled", "ses production access", "ses enforcement status", "from domain dkim",
                 "dmarc", "configuration set", "event destination", "sns subscription"):
        assert statuses[name] == LOCAL, name
    # the account limits come from the documented local settings
    assert statuses["ses send rate"] == PASS
    assert "SES_LOCAL_MAX_SEND_RATE" in by_name(report.checks)[
        "ses send rate"].detail
    assert statuses["from identity"] == PASS
    assert statuses["ses pool"] == PASS


def test_local_rate_above_the_local_setting_fails(local_ses, settings):
    checks = by_name(doctor.check_account(local_ses.ses, replace(settings, sending_rate=20.0,
                                                                 ses_local_max_send_rate=14.0)))
    assert checks["ses send rate"].status == FAIL
    assert "SES_LOCAL_MAX_SEND_RATE" in checks["ses send rate"].detail


def test_local_ses_down_fails_the_credentials_check_with_make_up(settings):
    def client(service):
        return boto3.client(service, endpoint_url="http://127.0.0.1:1", region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=doctor.Config(retries={"total_max_attempts": 1}, connect_timeout=2))

    check = doctor.check_credentials(AwsClients(ses=client("sesv2"), sts=client("sts"), sns=lambda r: None))
    assert check.status == FAIL
    assert "make up" in check.fix


def test_command_prints_the_report_and_exits_1_when_a_check_fails(monkeypatch, capsys, settings):
    failing = doctor.Report([Check("from identity", FAIL, "not verified", "verify it"),
                             Check("tracking url", LOCAL, "loopback")])
    monkeypatch.setattr(doctor.AwsClients, "from_airflow", classmethod(lambda cls, conn_id: None))
    monkeypatch.setattr(cli, "run_checks", lambda *args, **kwargs: failing)
    assert cli.main(["--json"]) == 1
    assert json.loads(capsys.readouterr().out)["checks"][0]["fix"] == "verify it"
    failing.checks.pop(0)
    assert cli.main([]) == 0
    assert "ready to send" in capsys.readouterr().out


def test_module_is_runnable_as_python_dash_m():
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([str(Path(doctor.airflow_cli()).with_name("python")), "-m", "campaigns.doctor", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0
    assert "ses-doctor" in result.stdout
