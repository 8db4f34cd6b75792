"""Helpers shared by the tests: seed contacts, a valid inline campaign, what moto's SES accepted."""

from __future__ import annotations


def parse_dag(dag_id: str):
    """A freshly parsed DAG from dags/<dag_id>.py: dag.test() runs in-process and would carry one run's params and
    state to the next test if a DAG object were shared."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def sent_messages():
    """Every message moto's SES accepted (count messages, not `destinations`: moto lists raw recipients twice)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return list(ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages)


def add_contacts(conn, emails, list_name="newsletter", *, status="subscribed", attributes=None):
    """Insert contacts (or reuse existing ones) and put them on `list_name`; returns their ids in order."""
    from psycopg.types.json import Jsonb

    list_id = conn.execute(
        "INSERT INTO lists (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        [list_name]).fetchone()["id"]
    ids = []
    for i, email in enumerate(emails):
        attrs = attributes(i) if callable(attributes) else (attributes or {})
        contact_id = conn.execute(
            """INSERT INTO contacts (email, first_name, last_name, attributes) VALUES (%s, %s, %s, %s)
               ON CONFLICT ((lower(email))) DO UPDATE SET email = contacts.email RETURNING id""",
            [email, f"First{i}", f"Last{i}", Jsonb(attrs)]).fetchone()["id"]
        conn.execute(
            "INSERT INTO list_members (list_id, contact_id, status) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [list_id, contact_id, status])
        ids.append(contact_id)
    return ids


def inline_campaign(key="nov-news", lists=("newsletter",), **overrides):
    """A valid inline campaign definition for a run's conf."""
    campaign = {
        "key": key,
        "name": "November news",
        "subject": "Hi {{ first_name | default('there') }}",
        "from_email": "news@example.com",
        "from_name": "Example News",
        "html": "<html><body><p>Hello {{ first_name }}!</p>"
                "<p><a href=\"https://example.com/offer\">See the offer</a></p></body></html>",
        "audience": {"lists": list(lists)},
    }
    campaign.update(overrides)
    return campaign


def insert_campaign(conn, key="c1"):
    """A minimal draft campaign row (no audience needed); returns its id."""
    return conn.execute(
        "INSERT INTO campaigns (key, name, subject, from_email, html, audience)"
        " VALUES (%s, 'n', 's', 'news@example.com', '<p>x</p>', '{}') RETURNING id", [key]).fetchone()["id"]


def downgrade_schema(dsn: str, revision: str = "base") -> None:
    """Undo the campaign database's migrations down to `revision` (only the migration test goes down)."""
    from alembic import command

    from campaigns.schema import alembic_config

    command.downgrade(alembic_config(dsn), revision)


def sent_ledger(conn, key: str, count: int) -> tuple[int, list[int]]:
    """A running campaign with `count` ledger rows sent an hour ago: (campaign id, [recipient ids])."""
    campaign_id = conn.execute(
        "INSERT INTO campaigns (key, name, subject, from_email, html, audience, status)"
        " VALUES (%s, %s, 'Hi', 'news@example.com', '<p>x</p>', '{\"lists\": []}', 'running') RETURNING id",
        [key, key]).fetchone()["id"]
    ids = [r["id"] for r in conn.execute(
        """INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at)
           SELECT %s, 'r' || g || '@example.com', 'sent', 'ses-' || g, now() - interval '1 hour'
             FROM generate_series(1, %s) g RETURNING id""", [campaign_id, count]).fetchall()]
    return campaign_id, ids


class FakeResolver:
    """DNS for tests, injected where campaigns.sending.authentication takes a Resolver: TXT records by name, or
    `unreachable` to answer every lookup with DnsUnavailable as a machine without DNS does. `asked` lists the names
    looked up, in order."""

    def __init__(self, records: dict[str, list[str]] | None = None, *, unreachable: bool = False) -> None:
        self.records = {name.lower(): list(texts) for name, texts in (records or {}).items()}
        self.unreachable = unreachable
        self.asked: list[str] = []

    def txt(self, name: str) -> list[str]:
        from campaigns.errors import DnsUnavailable

        self.asked.append(name)
        if self.unreachable:
            raise DnsUnavailable(f"DNS did not answer for {name} TXT: LifetimeTimeout: timed out")
        return self.records.get(name.lower(), [])
