"""What the end-to-end tests share: https calls to the tracking service, the local SES's messages, signed SNS
notifications with the dev stack's local test key, and waiting on a condition with a deadline."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import email.utils
import json
import urllib.error
import urllib.request
import uuid

import psycopg
from cryptography.hazmat.primitives import serialization
from psycopg.rows import dict_row

from devstack.settings import TEST_STACK
from devstack.stack import local_ses_messages
from tests.sns_signing import signed_message


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 302 is the answer under test: do not follow it


def https(url: str, tls, *, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request to the tracking service, redirects not followed."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls), NoRedirect)
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:  # 3xx/4xx arrive here when not followed
        return exc.code, dict(exc.headers), exc.read()



def connect(stack, database: str | None = None) -> psycopg.Connection:
    """A connection (autocommit, rows as dicts) to a stack instance's campaign database, or to `database` on its
    PostgreSQL (its Airflow metadata database: stack.airflow_db)."""
    return psycopg.connect(stack.pg_dsn(database), autocommit=True, row_factory=dict_row)


def import_list(api, stack, name: str, addresses: list[str]) -> None:
    """List `name` of `addresses` (first names Reader0, Reader1, ...), imported through the import_contacts DAG."""
    path = stack.state_dir / "e2e" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name"])
        writer.writerows([address, f"Reader{i}"] for i, address in enumerate(addresses))
    assert api.run("import_contacts", {"path": str(path), "list": name}, timeout=300)["state"] == "success"


def messages_to(stack, addresses: set[str]) -> dict[str, list[email.message.EmailMessage]]:
    """Parsed messages the local SES accepted for `addresses`, by address (one parse per message, not per
    listed destination: moto lists raw recipients twice)."""
    by_address: dict[str, list] = {}
    for message in local_ses_messages(stack):
        raw = message.get("raw_data")
        if raw is None:
            continue
        parsed = email.message_from_string(raw, policy=email.policy.default)
        to = email.utils.parseaddr(str(parsed["To"]))[1].lower()
        if to in addresses:
            by_address.setdefault(to, []).append(parsed)
    return by_address



def signed_ses_event(event: dict) -> bytes:
    """An SNS Notification carrying `event`, signed with the dev stack's local SNS test key."""
    key_path = TEST_STACK.state_dir / "tls" / "sns-test.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    envelope = signed_message(key, kind="Notification", version="2", message_id=f"e2e-{uuid.uuid4()}",
                              body=json.dumps(event))
    return json.dumps(envelope).encode()


def ses_event(event_type: str, row: dict, **detail) -> dict:
    mail = {"timestamp": dt.datetime.now(dt.UTC).isoformat(), "source": "news@example.com",
            "messageId": row["ses_message_id"], "destination": [row["email"]], "tags": {}}
    return {"eventType": event_type, "mail": mail, **detail}


def post_ses_event(event: dict, tls) -> tuple[int, bytes]:
    """POST `event`, signed as SNS would send it, to the stack's /webhooks/ses; (status, body)."""
    status, _, body = https(f"{TEST_STACK.tracking_base_url}/webhooks/ses", tls, method="POST",
                            body=signed_ses_event(event),
                            headers={"x-amz-sns-message-type": "Notification",
                                     "Content-Type": "text/plain; charset=UTF-8"})
    return status, body
