"""ses_doctor: what is missing in AWS (and around it) before the first real campaign, with the fix for each.

Every check reports `pass`, `warn` or `fail` (with the fix), or says it could not judge: `not checkable locally`,
`not checkable` (DNS did not answer). Against a local SES endpoint (moto), a check moto cannot answer truthfully
(GetAccount, DKIM status, configuration set event destinations, SNS subscriptions) is `not checkable locally`,
never `pass`; the account limits come from SES_LOCAL_MAX_SEND_RATE and SES_LOCAL_MAX_24H_SEND. The From domain's
authentication (Easy DKIM, MAIL FROM, SPF, DMARC) is sending/authentication.py's, the same findings preflight
judges; here a finding that refuses bulk campaigns is a failure whatever the campaign's size.

    ses-doctor                     # or: python -m campaigns.doctor [--json] [--from-email ADDRESS]

The command form also checks the Airflow pool `ses` through the `airflow` CLI (run it where that CLI reaches the
metadata database: the scheduler's host, or a shell that sourced .local/stack.env). The `ses_doctor` DAG runs the
same checks inside a task, which cannot read pools in Airflow 3, so there the pool check says so.

send_campaign's preflight reuses the cheap part (account, sender identity and authentication, configuration set):
the reads both use live in sending/ses_account.py and sending/authentication.py (the doctor adds the fixes), the
command line in cli.py.
docs/aws-setup.md explains every fix; the IAM policy there covers exactly the calls made here.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from campaigns.config import Settings
from campaigns.sending import authentication
from campaigns.sending.authentication import FAIL, LOCAL, PASS, WARN, DnsResolver, Resolver
from campaigns.sending.ses import endpoint_is_local
from campaigns.sending.ses_account import (
    GUIDE,
    Account,
    Identity,
    read_account,
    read_configuration_set,
    sender_identities,
    sender_problem,
    sending_identity,
)

NOT_IN_TASK = "not checkable in a task"

# The configuration set must publish these to SNS: Send/Delivery settle `unknown` ledger rows, Bounce/Complaint
# suppress addresses, Reject/DeliveryDelay/Rendering Failure explain what never arrived.
REQUIRED_EVENT_TYPES = ("SEND", "DELIVERY", "BOUNCE", "COMPLAINT", "REJECT", "DELIVERY_DELAY", "RENDERING_FAILURE")
WEBHOOK_PATH = "/webhooks/ses"
POOL = "ses"
ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}
BAD_CREDENTIALS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                   "UnrecognizedClientException", "InvalidAccessKeyId"}


@dataclass(frozen=True)
class Check:
    """One finding: `status` is PASS, WARN, FAIL, NOT_CHECKABLE, LOCAL or NOT_IN_TASK; `fix` says what to do when it
    is not a pass."""

    name: str
    status: str
    detail: str
    fix: str | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (`not checkable locally` is not a failure)."""
        return all(check.status != FAIL for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}

    def render(self) -> str:
        """A plain-text report: one line per check, the fix indented under it."""
        width = max((len(check.name) for check in self.checks), default=0)
        lines = []
        for check in self.checks:
            lines.append(f"{'[' + check.status + ']':<26} {check.name:<{width}}  {check.detail}")
            if check.fix:
                lines.append(f"{'':<26} {'':<{width}}  fix: {check.fix}")
        failed = sum(check.status == FAIL for check in self.checks)
        warned = sum(check.status == WARN for check in self.checks)
        lines.append(f"\n{len(self.checks)} checks, {failed} failed" + (f", {warned} to look at" if warned else "")
                     + ("" if failed else ": ready to send"))
        return "\n".join(lines)


def aws_failure(name: str, action: str, exc: Exception) -> Check:
    """A failed AWS call as a finding: the error code and the fix (IAM permission, credentials, endpoint)."""
    if isinstance(exc, NoCredentialsError):
        return Check(name, FAIL, f"{action}: no AWS credentials found",
                     "give the Airflow connection aws_default credentials, or better run on an IAM role "
                     f"({GUIDE}, 'The Airflow connection aws_default')")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        detail = f"{action} failed: {code}: {error.get('Message', '')}".strip()
        if code in ACCESS_DENIED:
            return Check(name, FAIL, detail,
                         f"allow {action_permission(action)} in the IAM policy of aws_default's identity "
                         f"({GUIDE}, 'Least-privilege IAM policy')")
        if code in BAD_CREDENTIALS:
            return Check(name, FAIL, detail, "aws_default's credentials are wrong or expired: rotate the access key "
                                             "or use an IAM role")
        return Check(name, FAIL, detail, f"see the error; {GUIDE} explains the setup this check expects")
    return Check(name, FAIL, f"{action} failed: {type(exc).__name__}: {exc}",
                 "check that aws_default's region and endpoint_url reach SES (no endpoint_url for real AWS)")


def action_permission(action: str) -> str:
    """The IAM action for an API call name such as `sesv2:GetAccount` -> `ses:GetAccount`."""
    service, _, operation = action.partition(":")
    return f"{'ses' if service == 'sesv2' else service}:{operation}"


# --- AWS clients -------------------------------------------------------------------------------------------------


@dataclass
class AwsClients:
    """The clients the checks use; tests pass stubbed ones. `sns(region)` gives an SNS client for a topic's region."""

    ses: Any
    sts: Any
    sns: Callable[[str], Any]

    @property
    def local(self) -> bool:
        return endpoint_is_local(self.ses)

    @classmethod
    def from_airflow(cls, aws_conn_id: str = "aws_default") -> AwsClients:
        """Clients from the Amazon provider's AwsBaseHook, like the send path (an endpoint_url in the connection's
        extras points every client at a local SES)."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        # A doctor answers quickly or says it could not: short timeouts, one retry.
        config = Config(retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=15)

        def hook(client_type: str) -> AwsBaseHook:
            return AwsBaseHook(aws_conn_id=aws_conn_id, client_type=client_type, config=config)

        return cls(ses=hook("sesv2").conn, sts=hook("sts").conn,
                   sns=lambda region: hook("sns").get_client_type(region_name=region))


def check_credentials(aws: AwsClients) -> Check:
    name = "aws credentials"
    sts_host = urlsplit(aws.sts.meta.endpoint_url).hostname or ""
    if not aws.local and "sts" not in sts_host:
        # AwsBaseHook applies a connection's endpoint_url to every service: pointed at SES, STS calls (the limiter's
        # account id, this check) go to SES and fail.
        return Check(name, FAIL, f"aws_default's endpoint_url ({aws.sts.meta.endpoint_url}) is used for every AWS "
                                 "service, so STS and SNS calls go to SES",
                     "remove endpoint_url from aws_default for real AWS (or set it per service: extra "
                     '{"service_config": {"sesv2": {"endpoint_url": "..."}}})')
    try:
        who = aws.sts.get_caller_identity()
    except (ClientError, BotoCoreError) as exc:
        failure = aws_failure(name, "sts:GetCallerIdentity", exc)
        if aws.local:
            return Check(name, FAIL, f"the local SES at {aws.ses.meta.endpoint_url} does not answer: {failure.detail}",
                         "start the local stack (`make up`) or fix endpoint_url in aws_default")
        return failure
    region = aws.ses.meta.region_name
    if aws.local:
        return Check(name, LOCAL, f"the local SES at {aws.ses.meta.endpoint_url} answers (region {region}); "
                                  "it accepts any credentials, so they are not checked")
    return Check(name, PASS, f"account {who.get('Account')} as {who.get('Arn')}, SES region {region}")


# --- SES account ---------------------------------------------------------------------------------------------------


def check_account(ses: Any, settings: Settings) -> list[Check]:
    try:
        account = read_account(ses, settings)
    except (ClientError, BotoCoreError) as exc:
        return [aws_failure("ses account", "sesv2:GetAccount", exc)]
    return account_checks(account, settings)


def account_checks(account: Account, settings: Settings) -> list[Check]:
    """Sending enabled, production access, enforcement status, send rate and daily quota."""
    region_note = "the local SES"
    checks: list[Check] = []
    if account.local:
        checks += [
            Check("ses sending enabled", LOCAL, f"{region_note} cannot be paused; real SES can (GetAccount)"),
            Check("ses production access", LOCAL, f"{region_note} has no sandbox; real SES starts in one"),
            Check("ses enforcement status", LOCAL, f"{region_note} has no reputation review"),
        ]
    else:
        if account.sending_enabled:
            checks.append(Check("ses sending enabled", PASS, "SES sends for this account in this region"))
        else:
            checks.append(Check(
                "ses sending enabled", FAIL, "sending is disabled for the account in this region",
                "if you paused it: `aws sesv2 put-account-sending-attributes --sending-enabled`; if AWS paused it "
                "(enforcement status SHUTDOWN), answer the case AWS opened and fix bounces/complaints first"))
        if account.production_access:
            checks.append(Check("ses production access", PASS, "production access: SES sends to any address"))
        else:
            checks.append(Check(
                "ses production access", FAIL,
                f"the account is in the SES sandbox: it sends only to verified addresses and domains (and the "
                f"mailbox simulator), at most {_fmt(account.max_24h_send)} per 24 h at {_fmt(account.max_send_rate)}"
                "/s; preflight refuses a campaign with an unverified recipient",
                f"request production access: `aws sesv2 put-account-details ...` ({GUIDE}, 'Leave the sandbox')"))
        status = account.enforcement_status
        if status == "HEALTHY":
            checks.append(Check("ses enforcement status", PASS, "HEALTHY: no reputation issue"))
        else:
            checks.append(Check(
                "ses enforcement status", FAIL,
                f"{status or 'not reported'}: " + {
                    "PROBATION": "AWS is reviewing the account because of its bounce or complaint rate",
                    "SHUTDOWN": "AWS paused sending because of the mail the account sent",
                }.get(status or "", "not a healthy account"),
                "open the SES console's Reputation metrics, fix the cause (docs/troubleshooting.md, 'High bounce "
                "rate') and answer AWS's case; do not send campaigns until it is HEALTHY"))
    checks.append(_rate_check(account, settings))
    checks.append(_quota_check(account, settings))
    return checks


def _fmt(value: float | None) -> str:
    if value is None:
        return "unlimited"
    return f"{value:g}"


def _source(account: Account) -> str:
    return "SES_LOCAL_MAX_SEND_RATE (local SES)" if account.local else "SES GetAccount"


def _rate_check(account: Account, settings: Settings) -> Check:
    name = "ses send rate"
    maximum = account.max_send_rate
    if settings.sending_rate is None:
        if maximum is None:
            return Check(name, PASS, "SES_SENDING_RATE=auto and the account has no rate limit")
        return Check(name, PASS, f"SES_SENDING_RATE=auto: {maximum:g}/s ({_source(account)}) x "
                                 f"{settings.rate_safety_factor:g} = {maximum * settings.rate_safety_factor:g}/s")
    rate = settings.sending_rate
    if maximum is None or rate <= maximum:
        return Check(name, PASS, f"SES_SENDING_RATE {rate:g}/s is within MaxSendRate {_fmt(maximum)}/s "
                                 f"({_source(account)})")
    return Check(name, FAIL, f"SES_SENDING_RATE {rate:g}/s is above MaxSendRate {maximum:g}/s ({_source(account)}): "
                             "SES would throttle every campaign",
                 f"set SES_SENDING_RATE to at most {maximum:g} (or `auto`), or ask AWS for a higher sending quota "
                 "(Service Quotas, 'Sending rate')")


def _quota_check(account: Account, settings: Settings) -> Check:
    name = "ses daily quota"
    remaining = account.remaining_24h
    source = "SES_LOCAL_MAX_24H_SEND (local SES)" if account.local else "SES GetAccount"
    if remaining is None:
        return Check(name, PASS, "the account has no 24-hour sending quota")
    if remaining <= 0:
        return Check(name, FAIL, f"the 24-hour quota of {account.max_24h_send:,.0f} is used up "
                                 f"({account.sent_last_24h:,.0f} sent in the last 24 h)",
                     "wait until sends age out of the 24-hour window, or ask AWS for a higher quota "
                     "(Service Quotas, 'Sending quota')")
    rate = settings.sending_rate or (account.max_send_rate or 0) * settings.rate_safety_factor
    hours = f"; at {rate:g}/s a campaign uses it up in {remaining / rate / 3600:.1f} h" if rate else ""
    return Check(name, PASS, f"{remaining:,.0f} of {account.max_24h_send:,.0f} sends left in the last 24 h "
                             f"({source}){hours}; preflight refuses a campaign larger than what is left")


# --- sender identity ---------------------------------------------------------------------------------------------


def sender_check(address: str, own: Identity | None, domain: Identity | None) -> Check:
    """Whether SES sends from `address`: verified as an address or through its domain, MAIL FROM usable."""
    name = "from identity"
    problem = sender_problem(address, own, domain)
    if problem is not None:
        return Check(name, FAIL, problem.detail, problem.fix)
    covering = sending_identity(own, domain)
    if domain is not None and domain.mail_from_unverified:
        return Check(name, PASS, f"{address} sends through verified identity {covering.name}; its custom MAIL FROM "
                                 f"{domain.mail_from_domain} is {domain.mail_from_status}, so SES falls back to "
                                 "amazonses.com (SPF then does not align for DMARC)")
    return Check(name, PASS, f"{address} sends through verified identity {covering.name}")


SENDER_CHECKS = ("from identity", authentication.DKIM, authentication.MAIL_FROM, authentication.SPF,
                 authentication.DMARC)


def check_sender(ses: Any, address: str | None, *, local: bool, resolver: Resolver | None = None) -> list[Check]:
    """The sender's identity, then its domain's authentication (DKIM, MAIL FROM, SPF, DMARC) through `resolver`
    (default: the system's DNS)."""
    if not address:
        missing = Check("from identity", FAIL, "SES_FROM_EMAIL is not set, so there is no sender to check",
                        "set SES_FROM_EMAIL to the address campaigns send from (or run with --from-email)")
        return [missing, *(Check(name, FAIL, "no sender to check", missing.fix) for name in SENDER_CHECKS[1:])]
    try:
        own, domain = sender_identities(ses, address)
    except (ClientError, BotoCoreError) as exc:
        failure = aws_failure("from identity", "sesv2:GetEmailIdentity", exc)
        return [failure, *(Check(name, FAIL, failure.detail, failure.fix) for name in SENDER_CHECKS[1:])]
    resolver = resolver or DnsResolver(Settings().sender_dns_timeout_seconds)
    findings = authentication.assess(address, own, domain, resolver, local=local)
    return [sender_check(address, own, domain), *(Check(**finding.as_dict()) for finding in findings)]


# --- configuration set, event destinations, SNS ---------------------------------------------------------------------


def configuration_set_problem(ses: Any, name: str | None) -> Check:
    """Does the configuration set exist with sending enabled? Raises botocore errors other than NotFound."""
    check = "configuration set"
    if not name:
        return Check(check, FAIL, "SES_CONFIGURATION_SET is not set: SES publishes no events, so bounces and "
                                  "complaints never reach /webhooks/ses and nothing is suppressed",
                     f"create one and set SES_CONFIGURATION_SET ({GUIDE}, 'Configuration set and events')")
    answer = read_configuration_set(ses, name)
    if answer is None:
        return Check(check, FAIL, f"configuration set {name!r} does not exist: every send would fail",
                     f"`aws sesv2 create-configuration-set --configuration-set-name {name}` ({GUIDE})")
    if (answer.get("SendingOptions") or {}).get("SendingEnabled") is False:
        return Check(check, FAIL, f"sending is disabled for configuration set {name!r}",
                     f"`aws sesv2 put-configuration-set-sending-options --configuration-set-name {name} "
                     "--sending-enabled`")
    return Check(check, PASS, f"{name!r} exists and sends")


def check_events(aws: AwsClients, settings: Settings) -> list[Check]:
    """Configuration set, its SNS event destination, and the HTTPS subscription of this deployment's webhook."""
    names = ("configuration set", "event destination", "sns subscription")
    if aws.local:
        return [Check(names[0], LOCAL, "the local SES accepts any configuration set name and publishes no events"),
                Check(names[1], LOCAL, "the local SES does not implement event destinations"),
                Check(names[2], LOCAL, "no SNS topic receives events from the local SES")]
    try:
        config_set = configuration_set_problem(aws.ses, settings.configuration_set)
    except (ClientError, BotoCoreError) as exc:
        config_set = aws_failure(names[0], "sesv2:GetConfigurationSet", exc)
    if config_set.status != PASS:
        return [config_set, Check(names[1], FAIL, "needs the configuration set first", config_set.fix),
                Check(names[2], FAIL, "needs the configuration set first", config_set.fix)]
    destination, topics = _event_destination(aws.ses, settings)
    if not topics:
        return [config_set, destination, Check(names[2], FAIL, "needs an SNS event destination first", destination.fix)]
    return [config_set, destination, _subscriptions(aws, topics, settings)]


def _event_destination(ses: Any, settings: Settings) -> tuple[Check, list[str]]:
    name = "event destination"
    config_set = settings.configuration_set
    try:
        answer = ses.get_configuration_set_event_destinations(ConfigurationSetName=config_set)
        destinations = answer["EventDestinations"]
    except (ClientError, BotoCoreError) as exc:
        return aws_failure(name, "sesv2:GetConfigurationSetEventDestinations", exc), []
    sns = [d for d in destinations if d.get("Enabled") and (d.get("SnsDestination") or {}).get("TopicArn")]
    def destination_json(topic: str) -> str:
        return json.dumps({"Enabled": True, "MatchingEventTypes": list(REQUIRED_EVENT_TYPES),
                           "SnsDestination": {"TopicArn": topic}}, separators=(",", ":"))

    create = (f"`aws sesv2 create-configuration-set-event-destination --configuration-set-name {config_set} "
              f"--event-destination-name sns-events --event-destination '{destination_json('TOPIC_ARN')}'` "
              f"({GUIDE}, 'Configuration set and events')")
    if not sns:
        return Check(name, FAIL, f"configuration set {config_set!r} has no enabled SNS event destination", create), []
    topics = sorted({d["SnsDestination"]["TopicArn"] for d in sns})
    published = {event for d in sns for event in d.get("MatchingEventTypes", [])}
    missing = [event for event in REQUIRED_EVENT_TYPES if event not in published]
    if missing:
        first = sns[0]
        return Check(name, FAIL, f"the SNS destination does not publish {', '.join(missing)}",
                     f"`aws sesv2 update-configuration-set-event-destination --configuration-set-name {config_set} "
                     f"--event-destination-name {first['Name']} --event-destination "
                     f"'{destination_json(first['SnsDestination']['TopicArn'])}'`"), topics
    refused = [topic for topic in topics if topic not in settings.sns_topic_arns]
    if refused:
        return Check(name, FAIL, f"topic {', '.join(refused)} is not in SNS_TOPIC_ARNS: /webhooks/ses refuses its "
                                 "messages (and its subscription confirmation)",
                     "add it to SNS_TOPIC_ARNS (comma-separated) for the tracking service and restart it"), topics
    return Check(name, PASS, f"publishes {', '.join(REQUIRED_EVENT_TYPES)} to {', '.join(topics)}"), topics


def _subscriptions(aws: AwsClients, topics: Iterable[str], settings: Settings) -> Check:
    name = "sns subscription"
    endpoint = settings.tracking_base_url + WEBHOOK_PATH
    for topic in topics:
        sns = aws.sns(topic.split(":")[3])
        try:
            subscriptions = _all_subscriptions(sns, topic)
            mine = [s for s in subscriptions if s.get("Protocol") == "https" and s.get("Endpoint") == endpoint]
            if not mine:
                others = ", ".join(sorted(s.get("Endpoint", "?") for s in subscriptions)) or "none"
                return Check(name, FAIL, f"{topic} has no HTTPS subscription to {endpoint} (subscriptions: {others})",
                             f"`aws sns subscribe --topic-arn {topic} --protocol https --notification-endpoint "
                             f"{endpoint}`; the tracking service confirms it by itself")
            confirmed = [s for s in mine if s.get("SubscriptionArn", "").startswith("arn:")]
            if not confirmed:
                return Check(name, FAIL, f"the subscription of {endpoint} to {topic} is pending confirmation",
                             "the tracking service confirms it when SNS's SubscriptionConfirmation arrives with an "
                             "allowed TopicArn: check SNS_TOPIC_ARNS and the service's log, then subscribe again")
            arn = confirmed[0]["SubscriptionArn"]
            attributes = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
            if str(attributes.get("RawMessageDelivery", "false")).lower() == "true":
                return Check(name, FAIL, f"raw message delivery is ON for {arn}: SNS would post the bare SES event "
                                         "without the signed envelope, and the webhook refuses unsigned messages",
                             f"`aws sns set-subscription-attributes --subscription-arn {arn} --attribute-name "
                             "RawMessageDelivery --attribute-value false`")
            version = sns.get_topic_attributes(TopicArn=topic)["Attributes"].get("SignatureVersion", "1")
            if version != "2":
                return Check(name, FAIL, f"{topic} signs with SignatureVersion {version} (SHA1)",
                             f"`aws sns set-topic-attributes --topic-arn {topic} --attribute-name SignatureVersion "
                             "--attribute-value 2` (SHA256)")
        except (ClientError, BotoCoreError) as exc:
            return aws_failure(name, "sns:ListSubscriptionsByTopic / GetSubscriptionAttributes / GetTopicAttributes",
                               exc)
    return Check(name, PASS, f"{endpoint} is a confirmed HTTPS subscriber (raw delivery off, SignatureVersion 2) "
                             f"of {', '.join(topics)}")


def _all_subscriptions(sns: Any, topic: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = None
    while True:
        page = sns.list_subscriptions_by_topic(TopicArn=topic, **({"NextToken": token} if token else {}))
        found += page.get("Subscriptions", [])
        token = page.get("NextToken")
        if not token:
            return found


# --- tracking service, pool, Redis, PostgreSQL -------------------------------------------------------------------


def http_get(url: str, *, verify: bool) -> tuple[int, str]:
    """GET `url` (no redirects followed); returns (status, start of the body). Raises OSError when unreachable."""
    context = ssl.create_default_context() if verify else ssl._create_unverified_context()  # noqa: S323
    request = urllib.request.Request(url, headers={"User-Agent": "ses-doctor"})  # noqa: S310 - https checked before
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
            return response.status, response.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode("utf-8", "replace")


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tracking(settings: Settings, get: Callable[..., tuple[int, str]] = http_get) -> Check:
    name = "tracking url"
    base = settings.tracking_base_url
    parts = urlsplit(base)
    if parts.scheme != "https":
        return Check(name, FAIL, f"TRACKING_BASE_URL {base!r} is not https: SNS, RFC 8058 one-click unsubscribe and "
                                 "preflight all need https",
                     "serve the tracking service over https (a certificate from a public CA) and set "
                     "TRACKING_BASE_URL to that https URL")
    local = _loopback(parts.hostname or "")
    url = base + "/healthz"
    try:
        status, body = get(url, verify=not local)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return Check(name, FAIL, f"{url}: the certificate is not trusted ({reason.verify_message})",
                         "SNS delivers only to endpoints with a certificate from a trusted public CA: install one")
        return Check(name, FAIL, f"{url} does not answer: {type(reason).__name__}: {reason}",
                     "start the tracking service and make TRACKING_BASE_URL its public address")
    if status != 200:
        return Check(name, FAIL, f"{url} answered {status}: {body[:300]}",
                     "/healthz names what failed (PostgreSQL, or the spool folder TRACKING_SPOOL_DIR): see the "
                     "tracking service's log")
    if local:
        return Check(name, LOCAL, f"{url} answers 200; a loopback address is not reachable by SNS and its "
                                  "self-signed certificate is not checked")
    return Check(name, PASS, f"{url} answers 200 over https with a trusted certificate")


def airflow_cli() -> str | None:
    """The `airflow` next to this Python (the project's venv), else the one on PATH."""
    sibling = Path(sys.executable).with_name("airflow")
    return str(sibling) if sibling.exists() else shutil.which("airflow")


def check_pool(cli: str | None = None, run: Callable[..., Any] = subprocess.run,
               expected_slots: int | None = None) -> Check:
    """The Airflow pool `ses` through the CLI (tasks cannot read pools in Airflow 3); with `expected_slots`
    (SES_POOL_SLOTS, what send tasks are planned for), also that the pool has that many slots."""
    name = "ses pool"
    fix = (f"`airflow pools set {POOL} 4 'Concurrent send_batch tasks across all campaigns'` (without it send "
           "tasks wait forever in state scheduled)")
    cli = cli or airflow_cli()
    if cli is None or (not Path(cli).exists() and shutil.which(cli) is None):
        return Check(name, FAIL, "the `airflow` CLI is not installed here, so the pool cannot be read",
                     "run ses-doctor where Airflow is installed and reaches its metadata database")
    try:
        result = run([cli, "pools", "get", POOL, "-o", "json"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, "`airflow pools get` did not answer within 120 s", "check the metadata database")
    output = (result.stdout or "") + (result.stderr or "")
    if result.returncode != 0:
        if "does not exist" in output:
            return Check(name, FAIL, f"Airflow has no pool {POOL!r}", fix)
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return Check(name, FAIL, f"`airflow pools get {POOL}` failed: {last[0][:300]}",
                     "run ses-doctor where the `airflow` CLI reaches the metadata database (the scheduler's host, "
                     "or after `source .local/stack.env`)")
    try:
        # Airflow may print log lines before the JSON (on stdout too): the answer is the line that is a JSON list.
        answer = next(line for line in reversed((result.stdout or "").splitlines()) if line.startswith("[{"))
        slots = int(next(p for p in json.loads(answer) if p.get("pool") == POOL)["slots"])
    except (ValueError, StopIteration, KeyError, TypeError):
        return Check(name, FAIL, f"could not read the answer of `airflow pools get {POOL}`: {output[-300:]}", fix)
    if slots <= 0:
        return Check(name, FAIL, f"pool {POOL!r} has {slots} slots: no send task can run", fix)
    if expected_slots is not None and slots != expected_slots:
        return Check(name, WARN, f"pool {POOL!r} has {slots} slot(s), but send tasks are planned for SES_POOL_SLOTS "
                                 f"= {expected_slots} at once (fewer slots: planned tasks wait for one; more: unused)",
                     f"set SES_POOL_SLOTS={slots} for every worker, or `airflow pools set {POOL} {expected_slots} "
                     "'Concurrent send_batch tasks across all campaigns'`")
    return Check(name, PASS, f"pool {POOL!r} has {slots} slot(s) for send tasks")


def check_redis(settings: Settings) -> Check:
    from campaigns import db

    try:
        client = db.resolve_redis(settings.redis_conn_id)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - whatever stops Redis answering is the finding
        return Check("redis", FAIL, f"{settings.redis_conn_id} does not answer: {type(exc).__name__}: {exc}",
                     "start Redis or fix the connection redis_default (or REDIS_URL); without it nothing is sent")
    return Check("redis", PASS, f"{settings.redis_conn_id} answers PING")


def check_postgres(settings: Settings) -> Check:
    from alembic.script import ScriptDirectory

    from campaigns import db, queries, schema

    name = "postgresql"
    try:
        dsn = db.resolve_postgres_dsn(settings.db_conn_id)
        with db.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            named = queries.load("doctor")
            table = conn.execute(named["migrations-table"]).fetchone()["t"]
            current = (conn.execute(named["schema-version"]).fetchone() or {}).get("version_num") if table else None
    except Exception as exc:  # noqa: BLE001 - the error type and message, never the DSN (it holds the password)
        return Check(name, FAIL, f"{settings.db_conn_id} does not answer: {type(exc).__name__}",
                     "start PostgreSQL or fix the connection campaign_db")
    heads = ScriptDirectory.from_config(schema.alembic_config(dsn)).get_heads()
    if current not in heads:
        return Check(name, FAIL, f"{settings.db_conn_id} answers but its schema is at {current or 'nothing'}, "
                                 f"not {', '.join(heads)}",
                     "apply the migrations (`make up` locally; docker-compose's airflow-init; or "
                     "`python -c 'from campaigns import schema; schema.upgrade(DSN)'`)")
    return Check(name, PASS, f"{settings.db_conn_id} answers; schema at {current}")


# --- running it ------------------------------------------------------------------------------------------------------


def _guarded(names: tuple[str, ...], check: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one group of checks; an error nobody expected becomes a failure of that group, never a lost report."""
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - a doctor reports what went wrong instead of dying half way
        return [Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {str(exc)[:300]}",
                      "see the error; rerun with the same settings to reproduce it") for name in names]
    return result if isinstance(result, list) else [result]


def run_checks(settings: Settings, aws: AwsClients, *, from_email: str | None = None, in_task: bool = False,
               pool: Callable[..., Check] = check_pool, get: Callable[..., tuple[int, str]] = http_get,
               resolver: Resolver | None = None) -> Report:
    """Every check, in the order an operator fixes them; `resolver` answers the sender's DNS lookups (default: the
    system's, with SENDER_DNS_TIMEOUT_SECONDS)."""
    sender = from_email or settings.from_email
    resolver = resolver or DnsResolver(settings.sender_dns_timeout_seconds)
    groups: list[tuple[tuple[str, ...], Callable[[], Check | list[Check]]]] = [
        (("aws credentials",), lambda: check_credentials(aws)),
        (("ses account",), lambda: check_account(aws.ses, settings)),
        (SENDER_CHECKS, lambda: check_sender(aws.ses, sender, local=aws.local, resolver=resolver)),
        (("configuration set", "event destination", "sns subscription"), lambda: check_events(aws, settings)),
        (("tracking url",), lambda: check_tracking(settings, get)),
        (("ses pool",), (lambda: Check("ses pool", NOT_IN_TASK, "tasks cannot read pools in Airflow 3: run "
                                                               "`ses-doctor` on the Airflow host, or `airflow pools "
                                                               "get ses`")) if in_task
                       else lambda: pool(expected_slots=settings.ses_pool_slots)),
        (("redis",), lambda: check_redis(settings)),
        (("postgresql",), lambda: check_postgres(settings)),
    ]
    return Report([check for names, group in groups for check in _guarded(names, group)])

