"""What SES says about the account and the sender: GetAccount, GetEmailIdentity, GetConfigurationSet.

Read by send_campaign's preflight (a campaign SES would not send is refused before it starts) and by ses_doctor's
checks (which add the fixes); next to the transport (ses.py), so the send path never imports the doctor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from campaigns.config import Settings
from campaigns.sending.ses import endpoint_is_local

# SES's mailbox simulator may be sent to from the sandbox without verifying it.
SIMULATOR_DOMAIN = "simulator.amazonses.com"
GUIDE = "docs/aws-setup.md"


@dataclass(frozen=True)
class Account:
    """What SES GetAccount says (or, for a local SES, the documented local settings)."""

    local: bool
    max_send_rate: float | None  # None: unlimited (SES reports -1)
    max_24h_send: float | None  # None: unlimited
    sent_last_24h: float = 0.0
    sending_enabled: bool | None = None  # None: not known (local SES)
    production_access: bool | None = None
    enforcement_status: str | None = None

    @property
    def remaining_24h(self) -> float | None:
        return None if self.max_24h_send is None else max(self.max_24h_send - self.sent_last_24h, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit(value: Any) -> float | None:
    number = float(value)
    return None if number < 0 else number


def read_account(ses: Any, settings: Settings) -> Account:
    """SES GetAccount, or the local settings when the endpoint is local (moto does not implement GetAccount).

    Raises botocore's errors: the caller decides whether an unreadable account is a failure.
    """
    if endpoint_is_local(ses):
        return Account(local=True, max_send_rate=settings.ses_local_max_send_rate,
                       max_24h_send=settings.ses_local_max_24h_send)
    answer = ses.get_account()
    quota = answer.get("SendQuota") or {}
    return Account(
        local=False,
        max_send_rate=_limit(quota.get("MaxSendRate", -1)),
        max_24h_send=_limit(quota.get("Max24HourSend", -1)),
        sent_last_24h=float(quota.get("SentLast24Hours", 0) or 0),
        sending_enabled=answer.get("SendingEnabled"),
        production_access=answer.get("ProductionAccessEnabled"),
        enforcement_status=answer.get("EnforcementStatus"),
    )


@dataclass(frozen=True)
class Identity:
    """An SES identity (address or domain) as GetEmailIdentity describes it."""

    name: str
    kind: str
    verified: bool
    status: str | None
    dkim_signing: bool
    dkim_status: str | None
    mail_from_domain: str | None = None
    mail_from_status: str | None = None
    mail_from_rejects: bool = False

    @property
    def mail_from_unverified(self) -> bool:
        """A custom MAIL FROM domain is set but not verified: SES falls back to amazonses.com, or with
        BehaviorOnMxFailure REJECT_MESSAGE refuses every send."""
        return bool(self.mail_from_domain) and self.mail_from_status != "SUCCESS"


def lookup_identity(ses: Any, name: str) -> Identity | None:
    """GetEmailIdentity, or None when SES does not know the identity. Raises botocore's other errors."""
    try:
        answer = ses.get_email_identity(EmailIdentity=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NotFoundException", "NotFound"):
            return None
        raise
    dkim = answer.get("DkimAttributes") or {}
    mail_from = answer.get("MailFromAttributes") or {}
    status = answer.get("VerificationStatus")
    return Identity(
        name=name,
        kind=answer.get("IdentityType", ""),
        verified=bool(answer.get("VerifiedForSendingStatus")) or status == "SUCCESS",
        status=status,
        dkim_signing=bool(dkim.get("SigningEnabled")),
        dkim_status=dkim.get("Status"),
        mail_from_domain=mail_from.get("MailFromDomain") or None,
        mail_from_status=mail_from.get("MailFromDomainStatus"),
        mail_from_rejects=mail_from.get("BehaviorOnMxFailure") == "REJECT_MESSAGE",
    )


def sender_identities(ses: Any, address: str) -> tuple[Identity | None, Identity | None]:
    """The address's own identity and its domain's identity (either may be missing)."""
    domain = address.rpartition("@")[2].lower()
    own = lookup_identity(ses, address) if "@" in address else None
    return own, lookup_identity(ses, domain)


@dataclass(frozen=True)
class Problem:
    """Why SES would refuse the sends, and what fixes it."""

    detail: str
    fix: str


def sending_identity(own: Identity | None, domain: Identity | None) -> Identity | None:
    """The verified identity SES sends through: the address's own, else its domain's (None: neither is verified)."""
    return next((i for i in (own, domain) if i is not None and i.verified), None)


def sender_problem(address: str, own: Identity | None, domain: Identity | None) -> Problem | None:
    """Why SES would not send from `address` (not verified as an address nor through its domain, or a custom MAIL
    FROM that makes SES reject every send); None when it sends."""
    domain_name = address.rpartition("@")[2].lower()
    if sending_identity(own, domain) is None:
        known = next((i for i in (own, domain) if i is not None), None)
        if known is None:
            return Problem(f"neither {address} nor {domain_name} is an SES identity in this region",
                           f"verify the domain: `aws sesv2 create-email-identity --email-identity {domain_name}` and "
                           f"publish its DKIM records ({GUIDE}, 'Verify your domain')")
        if known.kind == "EMAIL_ADDRESS":
            fix = (f"click the link in the verification email SES sent to {known.name} (to resend it: "
                   f"`aws sesv2 delete-email-identity --email-identity {known.name}` then create it again)")
        else:
            fix = (f"publish the three DKIM CNAME records: `aws sesv2 get-email-identity --email-identity "
                   f"{known.name} --query DkimAttributes.Tokens` ({GUIDE}, 'Verify your domain')")
        return Problem(f"identity {known.name} is not verified (status {known.status})", fix)
    if domain is not None and domain.mail_from_unverified and domain.mail_from_rejects:
        return Problem(f"custom MAIL FROM domain {domain.mail_from_domain} is {domain.mail_from_status} and "
                       "BehaviorOnMxFailure is REJECT_MESSAGE: SES refuses every send (MailFromDomainNotVerified)",
                       f"publish the MX and SPF records for {domain.mail_from_domain} ({GUIDE}, 'Custom MAIL FROM')")
    return None


def read_configuration_set(ses: Any, name: str) -> dict[str, Any] | None:
    """GetConfigurationSet, or None when it does not exist (then every send with it fails). Raises other errors."""
    try:
        return ses.get_configuration_set(ConfigurationSetName=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NotFoundException":
            raise
        return None
