"""Sender authentication of the From domain with DNS stubbed (a FakeResolver injected, or a fake dnspython resolver
behind DnsResolver): DMARC aligned, misaligned, missing, p=none, SPF, unreachable DNS, and the bulk threshold."""

from __future__ import annotations

from types import SimpleNamespace

import dns.resolver
import pytest

from campaigns.config import Settings
from campaigns.errors import DnsUnavailable
from campaigns.sending import authentication as auth
from campaigns.sending.authentication import FAIL, LOCAL, NOT_CHECKABLE, PASS, WARN
from campaigns.sending.ses_account import Identity
from tests.helpers import FakeResolver

FROM = "news@example.com"


def domain(name="example.com", *, signing=True, dkim="SUCCESS", mail_from=None, mail_from_status="SUCCESS",
           rejects=False) -> Identity:
    return Identity(name=name, kind="DOMAIN", verified=True, status="SUCCESS", dkim_signing=signing,
                    dkim_status=dkim, mail_from_domain=mail_from, mail_from_status=mail_from_status if mail_from
                    else None, mail_from_rejects=rejects)


def findings(identity: Identity | None, records: dict[str, list[str]], address: str = FROM, *, local=False):
    return {f.name: f for f in auth.assess(address, None, identity, FakeResolver(records), local=local)}


def test_dkim_signed_domain_with_p_none_dmarc_passes_aligned_through_dkim():
    found = findings(domain(), {"_dmarc.example.com": ["v=DMARC1; p=none; rua=mailto:d@example.com"]})
    assert {f.status for f in found.values()} == {PASS}
    dmarc = found[auth.DMARC].detail
    assert "p=none" in dmarc
    assert "monitoring only" in dmarc
    assert "aligned with example.com through DKIM d=example.com" in dmarc
    # without a custom MAIL FROM, SPF passes on amazonses.com but does not align: DMARC rests on DKIM
    assert "not aligned" in found[auth.SPF].detail
    assert "DMARC rests on DKIM" in found[auth.MAIL_FROM].detail


def test_strict_alignment_passes_when_dkim_signs_for_the_from_domain_itself():
    found = findings(domain(), {"_dmarc.example.com": ["v=DMARC1; p=reject; adkim=s; aspf=s"]})
    assert found[auth.DMARC].status == PASS
    assert "adkim=s aspf=s" in found[auth.DMARC].detail


def test_relaxed_spf_alignment_covers_a_custom_mail_from_subdomain_without_dkim():
    identity = domain(signing=False, dkim="NOT_STARTED", mail_from="bounce.example.com")
    records = {"_dmarc.example.com": ["v=DMARC1; p=quarantine"],
               "bounce.example.com": ['v=spf1 include:amazonses.com ~all']}
    found = findings(identity, records)
    assert found[auth.SPF].status == PASS
    assert found[auth.DMARC].status == PASS
    assert "through SPF bounce.example.com" in found[auth.DMARC].detail
    assert found[auth.DKIM].status == FAIL


def test_strict_spf_alignment_refuses_the_subdomain_and_names_the_relaxing_fix():
    identity = domain(signing=False, dkim="NOT_STARTED", mail_from="bounce.example.com")
    records = {"_dmarc.example.com": ["v=DMARC1; p=quarantine; aspf=s"],
               "bounce.example.com": ['v=spf1 include:amazonses.com ~all']}
    dmarc = findings(identity, records)[auth.DMARC]
    assert dmarc.status == FAIL
    assert "neither DKIM" in dmarc.detail
    assert "aspf=r in _dmarc.example.com" in dmarc.fix


def test_dmarc_misaligned_without_dkim_or_custom_mail_from_fails_with_the_dkim_fix():
    dmarc = findings(domain(signing=False, dkim="NOT_STARTED"), {"_dmarc.example.com": ["v=DMARC1; p=reject"]})[
        auth.DMARC]
    assert dmarc.status == FAIL
    assert "SPF (MAIL FROM amazonses.com)" in dmarc.detail
    assert "Easy DKIM for example.com" in dmarc.fix


def test_subdomain_signed_by_its_parent_is_misaligned_under_strict_dkim_and_told_to_relax():
    # From news@mail.example.com; the domain identity looked up is mail.example.com's, signing as mail.example.com
    # would align; here the only signature is the parent's (example.com), as when only the parent is verified.
    dmarc = auth.dmarc_finding("mail.example.com", ["example.com"], None,
                               FakeResolver({"_dmarc.example.com": ["v=DMARC1; p=reject; adkim=s"]}))
    assert dmarc.status == FAIL
    assert "adkim=r in _dmarc.example.com" in dmarc.fix
    relaxed = auth.dmarc_finding("mail.example.com", ["example.com"], None,
                                 FakeResolver({"_dmarc.example.com": ["v=DMARC1; p=reject"]}))
    assert relaxed.status == PASS


def test_missing_dmarc_fails_with_the_record_to_add_after_asking_the_organizational_domain():
    resolver = FakeResolver({"_dmarc.example.com": ["some-other-verification=abc"]})
    dmarc = auth.dmarc_finding("mail.example.com", ["mail.example.com"], None, resolver)
    assert resolver.asked == ["_dmarc.mail.example.com", "_dmarc.example.com"]
    assert dmarc.status == FAIL
    assert "no DMARC record at _dmarc.mail.example.com or _dmarc.example.com" in dmarc.detail
    assert dmarc.fix.startswith('add TXT _dmarc.example.com "v=DMARC1; p=none; ')


def test_organizational_domain_record_applies_its_subdomain_policy():
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; sp=none"]}
    dmarc = auth.dmarc_finding("mail.example.com", ["mail.example.com"], None, FakeResolver(records))
    assert dmarc.status == PASS
    assert "_dmarc.example.com p=none" in dmarc.detail


@pytest.mark.parametrize(("records", "expected"), [
    (["v=DMARC1; rua=mailto:d@example.com"], "no valid policy"),
    (["v=DMARC1; p=maybe"], "no valid policy"),
    (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "2 DMARC records"),
])
def test_dmarc_record_without_a_usable_policy_fails(records, expected):
    dmarc = findings(domain(), {"_dmarc.example.com": records})[auth.DMARC]
    assert dmarc.status == FAIL
    assert expected in dmarc.detail


def test_spf_missing_on_the_custom_mail_from_domain_fails_with_the_record_to_add():
    spf = findings(domain(mail_from="bounce.example.com"), {"_dmarc.example.com": ["v=DMARC1; p=none"]})[auth.SPF]
    assert spf.status == FAIL
    assert "bounce.example.com (MAIL FROM) has no SPF record" in spf.detail
    assert spf.fix == 'add TXT bounce.example.com "v=spf1 include:amazonses.com ~all"'


@pytest.mark.parametrize(("records", "status", "expected"), [
    (["v=spf1 include:_spf.example.net -all"], WARN, "does not include amazonses.com"),
    (["v=spf1 include:amazonses.com ~all", "v=spf1 -all"], FAIL, "2 SPF records"),
])
def test_spf_record_that_does_not_cover_ses_is_reported(records, status, expected):
    spf = findings(domain(mail_from="bounce.example.com"), {"bounce.example.com": records})[auth.SPF]
    assert spf.status == status
    assert expected in spf.detail


def test_custom_mail_from_not_verified_warns_that_ses_falls_back():
    found = findings(domain(mail_from="bounce.example.com", mail_from_status="PENDING"),
                     {"_dmarc.example.com": ["v=DMARC1; p=none"]})
    assert found[auth.MAIL_FROM].status == WARN
    assert "falls back to amazonses.com" in found[auth.MAIL_FROM].detail
    # SES uses amazonses.com meanwhile, so SPF is judged there and DMARC rests on DKIM
    assert found[auth.SPF].status == PASS
    assert found[auth.DMARC].status == PASS
    rejecting = findings(domain(mail_from="bounce.example.com", mail_from_status="FAILED", rejects=True), {})
    assert rejecting[auth.MAIL_FROM].status == FAIL


def test_unreachable_dns_is_not_checkable_and_never_refuses():
    resolver = FakeResolver(unreachable=True)
    found = {f.name: f for f in auth.assess(FROM, None, domain(mail_from="bounce.example.com"), resolver,
                                            local=False)}
    assert found[auth.SPF].status == NOT_CHECKABLE
    assert found[auth.DMARC].status == NOT_CHECKABLE
    assert "DNS did not answer" in found[auth.DMARC].detail
    assert auth.refusals(list(found.values()), expected=1_000_000, threshold=5_000) == []


@pytest.mark.parametrize(("signing", "status"), [(False, "NOT_STARTED"), (True, "PENDING"), (True, "FAILED")])
def test_dkim_off_or_not_successful_fails_with_the_enable_command(signing, status):
    dkim = auth.dkim_finding("example.com", domain(signing=signing, dkim=status), local=False)
    assert dkim.status == FAIL
    assert f"status {status}" in dkim.detail
    assert "put-email-identity-dkim-attributes --email-identity example.com --signing-enabled" in dkim.fix


def test_no_domain_identity_means_no_aligned_dkim():
    dkim = auth.dkim_finding("example.com", None, local=False)
    assert dkim.status == FAIL
    assert "create-email-identity --email-identity example.com" in dkim.fix


def test_local_ses_dkim_is_not_checkable_locally_and_so_is_alignment_resting_on_it():
    found = findings(domain(), {"_dmarc.example.com": ["v=DMARC1; p=reject"]}, local=True)
    assert found[auth.DKIM].status == LOCAL
    assert "signs nothing" in found[auth.DKIM].detail
    # moto's word that it signs does not make DMARC pass; a record that is missing is still missing
    missing = findings(domain(signing=False, dkim="NOT_STARTED"), {}, local=True)
    assert missing[auth.DMARC].status == FAIL
    assert findings(domain(signing=False, dkim="NOT_STARTED"), {"_dmarc.example.com": ["v=DMARC1; p=reject"]},
                    local=True)[auth.DMARC].status == LOCAL


def test_refusal_threshold_both_sides_of_the_default():
    threshold = Settings().bulk_sender_threshold
    assert threshold == 5_000
    found = auth.assess(FROM, None, domain(signing=False, dkim="NOT_STARTED"), FakeResolver(), local=False)
    assert auth.refusals(found, expected=threshold, threshold=threshold) == []
    refused = auth.refusals(found, expected=threshold + 1, threshold=threshold)
    assert [f.name for f in refused] == [auth.DKIM, auth.DMARC]


@pytest.mark.parametrize(("name", "organization"), [
    ("example.com", "example.com"), ("a.b.example.com", "example.com"), ("news.example.co.uk", "example.co.uk"),
    ("example.com.au", "example.com.au"), ("mail.example.de", "example.de"), ("EXAMPLE.com.", "example.com"),
])
def test_organizational_domain_guess(name, organization):
    assert auth.organizational_domain(name) == organization


# --- DnsResolver over a fake dnspython resolver ---------------------------------------------------------------------


class FakeDnspython:
    """Stands in for dns.resolver.Resolver: `answers` maps (name, type) to TXT chunks or an exception to raise."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def resolve(self, name, kind, *, lifetime, search):
        self.calls.append((name, kind, lifetime))
        answer = self.answers.get((name, kind), dns.resolver.NXDOMAIN())
        if isinstance(answer, Exception):
            raise answer
        return [SimpleNamespace(strings=chunks) for chunks in answer]


ROOT = {(".", "NS"): [(b"a.root-servers.net.",)]}


def test_dns_resolver_joins_txt_chunks_and_probes_the_root_once():
    fake = FakeDnspython({**ROOT, ("_dmarc.example.com", "TXT"): [(b"v=DMARC1; ", b"p=none")]})
    resolver = auth.DnsResolver(1.5, fake)
    assert resolver.txt("_dmarc.example.com") == ["v=DMARC1; p=none"]
    assert resolver.txt("example.com") == []  # NXDOMAIN: no record, not an outage
    assert fake.calls == [(".", "NS", 1.5), ("_dmarc.example.com", "TXT", 1.5), ("example.com", "TXT", 1.5)]


@pytest.mark.parametrize("failure", [
    dns.resolver.LifetimeTimeout(timeout=1.5, errors=[]),
    dns.resolver.NoNameservers(),  # every nameserver answered SERVFAIL
    dns.resolver.NoResolverConfiguration(),
])
def test_dns_resolver_that_cannot_answer_raises_dns_unavailable(failure):
    resolver = auth.DnsResolver(1.5, FakeDnspython({**ROOT, ("_dmarc.example.com", "TXT"): failure}))
    with pytest.raises(DnsUnavailable, match=r"DNS did not answer for _dmarc\.example\.com TXT"):
        resolver.txt("_dmarc.example.com")


def test_dns_resolver_that_denies_the_root_zone_is_unavailable_for_every_name():
    # what these sandboxed machines' resolver does: NXDOMAIN for everything, which must not read as "no DMARC"
    fake = FakeDnspython({})
    resolver = auth.DnsResolver(1.5, fake)
    for name in ("_dmarc.example.com", "bounce.example.com"):
        with pytest.raises(DnsUnavailable, match="root zone does not exist"):
            resolver.txt(name)
    assert fake.calls == [(".", "NS", 1.5)]
    dmarc = auth.dmarc_finding("example.com", ["example.com"], None, resolver)
    assert dmarc.status == NOT_CHECKABLE
