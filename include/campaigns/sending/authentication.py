"""Sender authentication of a campaign's From domain: DKIM and MAIL FROM as SES reports them, SPF and DMARC in DNS.

Since 2024 Gmail, Yahoo and Outlook.com require of senders of more than about 5,000 messages a day that SPF and DKIM
pass and that a DMARC record (p=none or stricter) aligns with the From domain; Outlook.com rejects bulk mail that
does not (`550 5.7.515`). Preflight refuses such a campaign before its first email (BULK_SENDER_THRESHOLD) and
ses-doctor reports the same findings; both read the identities through ses_account.py and DNS through a `Resolver`.

DMARC passes when DKIM or SPF passes *aligned* with the From domain. SES signs with the domain identity's Easy DKIM
key (d=<identity>, aligned) and always adds its own amazonses.com signature (never aligned). Without a custom MAIL
FROM domain the envelope sender is a subdomain of amazonses.com: SPF passes but is not aligned, so alignment then
rests on DKIM alone.

The organizational domain (RFC 7489 3.2) is guessed without the Public Suffix List (no copy of it is installed,
and a stale one is no better): the last two labels, three under a two-letter country code whose second level is a
registry's generic one (example.co.uk, example.com.au). docs/operators.md says where that guess can be wrong.

Where DNS cannot answer (timeout, no nameserver, SERVFAIL, a resolver that says the root zone does not exist, as
sandboxed machines do), a check is `not checkable`: never a pass, never a refusal.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from campaigns.errors import DnsUnavailable
from campaigns.sending.ses_account import GUIDE, Identity

# Check outcomes, shared with ses_doctor (which adds its own "not checkable in a task").
PASS = "pass"  # noqa: S105 - a check status, not a password
WARN = "warn"
FAIL = "fail"
NOT_CHECKABLE = "not checkable"  # DNS could not answer
LOCAL = "not checkable locally"  # the local SES (moto) cannot answer truthfully

DKIM, MAIL_FROM, SPF, DMARC = "from domain dkim", "mail from domain", "spf", "dmarc"
# A bulk campaign (above BULK_SENDER_THRESHOLD) is refused when one of these fails; the others only warn.
REFUSES_BULK = frozenset({DKIM, DMARC})

SES_MAIL_FROM = "amazonses.com"
DMARC_POLICIES = ("none", "quarantine", "reject")
# Second-level labels under which country-code registries sell names (example.co.uk, example.com.au, example.or.jp).
CCTLD_GENERIC_SECOND_LEVELS = frozenset({"ac", "co", "com", "edu", "go", "gov", "ne", "net", "or", "org"})
_DMARC_RECORD = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")


class Resolver(Protocol):
    """TXT lookups: the strings of each record at `name` ([] when there is none); DnsUnavailable when DNS cannot
    answer. DnsResolver is the real one; tests pass a fake."""

    def txt(self, name: str) -> list[str]: ...


class DnsResolver:
    """dnspython with a short lifetime per lookup, so a check says `not checkable` quickly instead of hanging."""

    def __init__(self, timeout: float, resolver: Any = None) -> None:
        self.timeout = timeout
        self._resolver = resolver  # a dns.resolver.Resolver; None: the system's, built on first use
        self._working: DnsUnavailable | bool | None = None  # the root probe's verdict, once per instance

    def txt(self, name: str) -> list[str]:
        self._probe()
        return [b"".join(record.strings).decode("utf-8", "replace") for record in self._resolve(name, "TXT")]

    def _probe(self) -> None:
        """Ask once for the root zone's NS records, which every working resolver has: a resolver that says the root
        does not exist answers NXDOMAIN for everything, and its "no DMARC record" would be a false refusal."""
        if self._working is None:
            try:
                self._working = bool(self._resolve(".", "NS")) or DnsUnavailable(
                    "the resolver has no NS records for the root zone")
            except DnsUnavailable as exc:
                self._working = exc
        if isinstance(self._working, DnsUnavailable):
            raise self._working

    def _resolve(self, name: str, kind: str) -> list[Any]:
        import dns.exception
        import dns.resolver

        try:
            if self._resolver is None:
                self._resolver = dns.resolver.Resolver()
            return list(self._resolver.resolve(name, kind, lifetime=self.timeout, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            if name == ".":
                raise DnsUnavailable("the resolver says the root zone does not exist: it is not a working public "
                                     "resolver (a sandbox or captive DNS)") from None
            return []
        except (dns.exception.DNSException, OSError) as exc:
            # timeout, no nameserver configured, SERVFAIL from every nameserver, no route
            raise DnsUnavailable(f"DNS did not answer for {name} {kind}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Finding:
    """One check of the From domain: `status` is PASS, WARN, FAIL, NOT_CHECKABLE or LOCAL; `fix` when it is not a
    pass and something can be done."""

    name: str
    status: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def organizational_domain(domain: str) -> str:
    """The registrable domain, guessed without the Public Suffix List (see the module docstring)."""
    labels = domain.lower().rstrip(".").split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in CCTLD_GENERIC_SECOND_LEVELS else 2
    return ".".join(labels[-keep:])


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment: strict (`s`) needs the same domain, relaxed (`r`) the same organizational one."""
    if mode == "s":
        return identifier.lower() == from_domain.lower()
    return organizational_domain(identifier) == organizational_domain(from_domain)


def assess(address: str, own: Identity | None, domain: Identity | None, resolver: Resolver, *,
           local: bool) -> list[Finding]:
    """DKIM, MAIL FROM, SPF and DMARC of `address`'s domain, given its SES identities (from
    ses_account.sender_identities, the reads preflight and ses-doctor already make)."""
    from_domain = address.rpartition("@")[2].lower()
    mail_from = verified_mail_from(domain)
    # a local SES's "signing on" signs nothing, so no alignment may rest on it
    dkim_domains = [] if local else signing_domains(domain)
    return [dkim_finding(from_domain, domain, local=local), mail_from_finding(domain), spf_finding(mail_from, resolver),
            dmarc_finding(from_domain, dkim_domains, mail_from, resolver, dkim_local=local)]


def refusals(findings: list[Finding], expected: int, threshold: int) -> list[Finding]:
    """The findings that refuse a campaign of `expected` messages a day: none at or below the threshold."""
    if expected <= threshold:
        return []
    return [finding for finding in findings if finding.name in REFUSES_BULK and finding.status == FAIL]


def signing_domains(domain: Identity | None) -> list[str]:
    """The d= domains of SES's signatures that can align: the domain identity's, when Easy DKIM signs with it."""
    if domain is not None and domain.dkim_signing and domain.dkim_status == "SUCCESS":
        return [domain.name]
    return []


def verified_mail_from(domain: Identity | None) -> str | None:
    """The custom MAIL FROM domain SES really uses (None: SES's own amazonses.com, also while a custom one is not
    verified)."""
    if domain is not None and domain.mail_from_domain and domain.mail_from_status == "SUCCESS":
        return domain.mail_from_domain.lower()
    return None


def dkim_finding(from_domain: str, domain: Identity | None, *, local: bool) -> Finding:
    """Easy DKIM on the From domain's identity: signing enabled and status SUCCESS."""
    if local:
        state = "no identity" if domain is None else \
            f"signing {'on' if domain.dkim_signing else 'off'}, status {domain.dkim_status}"
        return Finding(DKIM, LOCAL, f"the local SES reports {state} for {from_domain} but signs nothing: not a real "
                                    "DKIM status")
    if domain is None:
        return Finding(DKIM, FAIL,
                       f"{from_domain} is not an SES domain identity: SES signs only with amazonses.com's key, which "
                       "does not align with your From domain, so DMARC fails",
                       f"`aws sesv2 create-email-identity --email-identity {from_domain}` and publish its DKIM "
                       f"records ({GUIDE}, 'Verify your domain')")
    if signing_domains(domain):
        return Finding(DKIM, PASS, f"{from_domain} signs with Easy DKIM (status SUCCESS): d={from_domain} aligns "
                                   "with the From domain")
    return Finding(DKIM, FAIL, f"DKIM for {from_domain}: signing {'on' if domain.dkim_signing else 'off'}, "
                               f"status {domain.dkim_status}",
                   f"publish the CNAMEs from `aws sesv2 get-email-identity --email-identity {from_domain} --query "
                   f"DkimAttributes.Tokens` and enable signing: `aws sesv2 put-email-identity-dkim-attributes "
                   f"--email-identity {from_domain} --signing-enabled`")


def mail_from_finding(domain: Identity | None) -> Finding:
    """The custom MAIL FROM domain's status in SES (MailFromAttributes)."""
    if domain is None or not domain.mail_from_domain:
        return Finding(MAIL_FROM, PASS, f"no custom MAIL FROM: SES's {SES_MAIL_FROM} is the envelope sender (SPF "
                                        "passes but does not align with the From domain, so DMARC rests on DKIM)")
    name, status = domain.mail_from_domain, domain.mail_from_status
    if status == "SUCCESS":
        return Finding(MAIL_FROM, PASS, f"custom MAIL FROM {name} is verified (SUCCESS): SPF can align")
    rejects = ("BehaviorOnMxFailure is REJECT_MESSAGE, so SES refuses every send" if domain.mail_from_rejects
               else f"SES falls back to {SES_MAIL_FROM} (SPF not aligned; DMARC rests on DKIM)")
    return Finding(MAIL_FROM, FAIL if domain.mail_from_rejects else WARN,
                   f"custom MAIL FROM {name} is {status}: {rejects}",
                   f"publish `{name} MX 10 feedback-smtp.<region>.amazonses.com` and `{name} TXT \"v=spf1 "
                   f"include:{SES_MAIL_FROM} ~all\"` ({GUIDE}, 'Custom MAIL FROM')")


def spf_finding(mail_from: str | None, resolver: Resolver) -> Finding:
    """SPF (`v=spf1` TXT) on the MAIL FROM domain SES uses; SES publishes amazonses.com's itself."""
    if mail_from is None:
        return Finding(SPF, PASS, f"the MAIL FROM domain is SES's {SES_MAIL_FROM}, whose SPF SES publishes: it "
                                  "passes, not aligned with the From domain")
    fix = f'add TXT {mail_from} "v=spf1 include:{SES_MAIL_FROM} ~all"'
    try:
        records = [text for text in resolver.txt(mail_from) if _is_spf(text)]
    except DnsUnavailable as exc:
        return Finding(SPF, NOT_CHECKABLE, f"SPF of {mail_from}: {exc}")
    if not records:
        return Finding(SPF, FAIL, f"{mail_from} (MAIL FROM) has no SPF record: SPF fails for every message", fix)
    if len(records) > 1:
        return Finding(SPF, FAIL, f"{mail_from} has {len(records)} SPF records: receivers treat that as an error "
                                  "(RFC 7208 4.5, permerror)", f"keep one record: {fix}")
    if f"include:{SES_MAIL_FROM}" not in records[0].lower():
        return Finding(SPF, WARN, f"the SPF record of {mail_from} does not include {SES_MAIL_FROM}, so SES's servers "
                                  f"may not pass it: {records[0]!r}",
                       f"add include:{SES_MAIL_FROM} to the record of {mail_from}")
    return Finding(SPF, PASS, f"{mail_from} (MAIL FROM) publishes SPF with include:{SES_MAIL_FROM}")


def _is_spf(text: str) -> bool:
    text = text.strip().lower()
    return text == "v=spf1" or text.startswith("v=spf1 ")


def dmarc_finding(from_domain: str, dkim_domains: list[str], mail_from: str | None, resolver: Resolver, *,
                  dkim_local: bool = False) -> Finding:
    """A DMARC record for the From domain (or, as RFC 7489 6.6.3 does, its organizational domain) with p=none or
    stricter whose adkim/aspf alignment covers the From domain through DKIM or SPF."""
    organization = organizational_domain(from_domain)
    suggestion = (f'add TXT _dmarc.{organization} "v=DMARC1; p=none; rua=mailto:dmarc-reports@{organization}" '
                  f"({GUIDE}, 'SPF and DMARC on the domain itself')")
    try:
        found = find_dmarc(from_domain, resolver)
    except DnsUnavailable as exc:
        return Finding(DMARC, NOT_CHECKABLE, f"DMARC of {from_domain}: {exc}")
    if found is None:
        return Finding(DMARC, FAIL, f"no DMARC record at _dmarc.{from_domain}"
                                    + ("" if organization == from_domain else f" or _dmarc.{organization}"),
                       suggestion)
    where, records = found
    if len(records) > 1:
        return Finding(DMARC, FAIL, f"_dmarc.{where} has {len(records)} DMARC records: receivers ignore them all "
                                    "(RFC 7489 6.6.3)", f"keep one: {suggestion}")
    tags = dmarc_tags(records[0])
    # sp= is the policy for subdomains, read when the record was found at the organizational domain
    policy = tags.get("sp", tags.get("p", "")) if where != from_domain else tags.get("p", "")
    if policy not in DMARC_POLICIES:
        return Finding(DMARC, FAIL, f"the DMARC record at _dmarc.{where} has no valid policy (p={tags.get('p')!r}): "
                                    f"{records[0]!r}", f"start it with v=DMARC1; p=none; at _dmarc.{where}")
    return _alignment(from_domain, where, policy, tags, dkim_domains, mail_from, dkim_local)


def _alignment(from_domain: str, where: str, policy: str, tags: dict[str, str], dkim_domains: list[str],
               mail_from: str | None, dkim_local: bool) -> Finding:
    """Whether DKIM or SPF passes aligned under the record's adkim/aspf, and what to change when neither does."""
    adkim, aspf = (_mode(tags.get(tag)) for tag in ("adkim", "aspf"))
    record = f"_dmarc.{where} p={policy} adkim={adkim} aspf={aspf}"
    through = [f"DKIM d={d}" for d in dkim_domains if aligned(d, from_domain, adkim)]
    if mail_from and aligned(mail_from, from_domain, aspf):
        through.append(f"SPF {mail_from}")
    monitoring = " (monitoring only: mail that fails is still delivered; Gmail and Yahoo accept it)" \
        if policy == "none" else ""
    if through:
        return Finding(DMARC, PASS, f"{record}{monitoring}: aligned with {from_domain} through {', '.join(through)}")
    if dkim_local:
        return Finding(DMARC, LOCAL, f"{record}: alignment rests on DKIM, which the local SES does not really sign")
    return Finding(DMARC, FAIL, f"{record}: neither DKIM ({', '.join(dkim_domains) or 'no aligned signature'}) nor "
                                f"SPF (MAIL FROM {mail_from or SES_MAIL_FROM}) aligns with {from_domain}, so DMARC "
                                "fails for every message",
                   _alignment_fix(from_domain, where, adkim, aspf, dkim_domains, mail_from))


def _alignment_fix(from_domain: str, where: str, adkim: str, aspf: str, dkim_domains: list[str],
                   mail_from: str | None) -> str:
    if adkim == "s" and any(aligned(d, from_domain, "r") for d in dkim_domains):
        return f"relax DKIM alignment: adkim=r in _dmarc.{where} (SES signs with d={dkim_domains[0]})"
    if aspf == "s" and mail_from and aligned(mail_from, from_domain, "r"):
        return f"relax SPF alignment: aspf=r in _dmarc.{where} (the MAIL FROM is {mail_from})"
    return (f"have SES sign with Easy DKIM for {from_domain}: the `{DKIM}` check names the command "
            f"({GUIDE}, 'Verify your domain')")


def _mode(value: str | None) -> str:
    """adkim/aspf: `s` strict, anything else the default `r` relaxed (RFC 7489 6.3)."""
    return "s" if (value or "").strip().lower() == "s" else "r"


def find_dmarc(from_domain: str, resolver: Resolver) -> tuple[str, list[str]] | None:
    """(domain the record is at, its DMARC records): _dmarc.<From domain>, else _dmarc.<organizational domain>."""
    candidates = dict.fromkeys([from_domain, organizational_domain(from_domain)])
    for name in candidates:
        records = [text.strip() for text in resolver.txt(f"_dmarc.{name}") if _DMARC_RECORD.match(text.strip())]
        if records:
            return name, records
    return None


def dmarc_tags(record: str) -> dict[str, str]:
    """`v=DMARC1; p=None; adkim=s` -> {"v": "dmarc1", "p": "none", "adkim": "s"}: names and values lowercased, the
    first of a repeated tag kept."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    return tags
