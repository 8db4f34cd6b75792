"""The SES account and identity reads the send path shares with the doctor (sending/ses_account.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from campaigns.sending import preflight
from campaigns.sending.ses_account import Identity, sender_problem


def identity(name: str, *, verified: bool = True, kind: str = "DOMAIN", **mail_from) -> Identity:
    return Identity(name=name, kind=kind, verified=verified, status="SUCCESS" if verified else "PENDING",
                    dkim_signing=True, dkim_status="SUCCESS", **mail_from)


def test_a_sender_verified_through_its_domain_has_no_problem():
    assert sender_problem("news@example.com", None, identity("example.com")) is None


def test_an_unknown_sender_is_a_problem_whose_fix_verifies_the_domain():
    problem = sender_problem("news@example.com", None, None)
    assert "neither news@example.com nor example.com" in problem.detail
    assert "create-email-identity --email-identity example.com" in problem.fix


def test_an_unverified_mail_from_is_a_problem_only_when_ses_rejects_the_sends():
    pending = {"mail_from_domain": "bounce.example.com", "mail_from_status": "PENDING"}
    assert sender_problem("news@example.com", None, identity("example.com", **pending)) is None
    rejecting = sender_problem("news@example.com", None,
                               identity("example.com", **pending, mail_from_rejects=True))
    assert "REJECT_MESSAGE" in rejecting.detail


def test_preflight_imports_no_part_of_the_doctor():
    tree = ast.parse(Path(preflight.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and name.startswith("campaigns.doctor")}
