"""Initial campaign schema: contacts, lists, suppressions, campaigns, the ledger, links and events.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE contacts (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            email       text NOT NULL CHECK (email = btrim(email) AND email <> ''),
            first_name  text,
            last_name   text,
            attributes  jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        -- Addresses are unique case-insensitively: Ann@X.com and ann@x.com are one contact.
        CREATE UNIQUE INDEX contacts_email_key ON contacts (lower(email));

        CREATE TABLE lists (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name        text NOT NULL UNIQUE CHECK (name <> ''),
            created_at  timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE list_members (
            list_id          bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
            contact_id       bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
            status           text NOT NULL DEFAULT 'subscribed' CHECK (status IN ('subscribed', 'unsubscribed')),
            created_at       timestamptz NOT NULL DEFAULT now(),
            unsubscribed_at  timestamptz,
            PRIMARY KEY (list_id, contact_id)
        );
        CREATE INDEX list_members_contact_idx ON list_members (contact_id);

        -- Global: checked when the ledger is snapshotted and again right before each send.
        CREATE TABLE suppressions (
            email       text PRIMARY KEY CHECK (email = lower(email)),
            reason      text NOT NULL CHECK (reason IN
                          ('hard_bounce', 'complaint', 'unsubscribe', 'soft_bounce_limit', 'manual')),
            source      text NOT NULL,
            detail      text,
            created_at  timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE campaigns (
            id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key            text NOT NULL UNIQUE CHECK (key <> ''),
            name           text NOT NULL,
            subject        text NOT NULL,
            from_email     text NOT NULL,
            from_name      text,
            reply_to       text,
            html           text NOT NULL,
            text           text,
            audience       jsonb NOT NULL,
            settings       jsonb NOT NULL DEFAULT '{}'::jsonb,
            status         text NOT NULL DEFAULT 'draft' CHECK (status IN
                             ('draft', 'scheduled', 'held', 'running', 'paused', 'sent', 'cancelled', 'failed')),
            status_reason  text,
            run_id         text,          -- the DAG run currently driving the campaign
            send_at        timestamptz,
            recurrence     text,
            preflight      jsonb,
            snapshot       jsonb,
            summary        jsonb,
            created_at     timestamptz NOT NULL DEFAULT now(),
            updated_at     timestamptz NOT NULL DEFAULT now(),
            started_at     timestamptz,
            finished_at    timestamptz
        );
        CREATE INDEX campaigns_status_idx ON campaigns (status);

        -- THE LEDGER: one row per (campaign, address). A row is `sending` (committed, with the attempt id)
        -- immediately before its own SES call, so a crash leaves at most the in-flight sends unresolved.
        CREATE TABLE campaign_recipients (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            -- No foreign keys on purpose: per-row checks cost about 40 percent of a 1,000,000-row snapshot
            -- (benchmarks/snapshot.py). Only the snapshot inserts ledger rows, with its campaign row locked; deleting
            -- a campaign deletes its ledger (trigger below); the ledger is a frozen copy of the contacts.
            campaign_id     bigint NOT NULL,
            contact_id      bigint,
            email           text NOT NULL,
            first_name      text,
            last_name       text,
            -- The contact's attributes as they were at the snapshot; with email and the names, the merge data.
            merge_data      jsonb NOT NULL DEFAULT '{}'::jsonb,
            page_no         integer,
            status          text NOT NULL DEFAULT 'pending' CHECK (status IN
                              ('pending', 'sending', 'sent', 'failed', 'skipped', 'cancelled', 'unknown')),
            skip_reason     text,
            attempt         text,
            claimed_at      timestamptz,
            sent_at         timestamptz,
            ses_message_id  text,
            error           text,
            updated_at      timestamptz NOT NULL DEFAULT now(),
            CHECK (status <> 'skipped' OR skip_reason IS NOT NULL),
            CHECK (status <> 'sent' OR ses_message_id IS NOT NULL)
        );
        CREATE UNIQUE INDEX campaign_recipients_email_key ON campaign_recipients (campaign_id, lower(email));
        -- Only rows with work left: the send loop and the planner read these, and the index shrinks as a
        -- campaign progresses. Counting by status scans the campaign's rows through the unique key above.
        CREATE INDEX campaign_recipients_open_idx ON campaign_recipients (campaign_id, page_no, id)
            WHERE status IN ('pending', 'sending');
        CREATE UNIQUE INDEX campaign_recipients_message_key ON campaign_recipients (ses_message_id)
            WHERE ses_message_id IS NOT NULL;

        CREATE FUNCTION delete_campaign_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM campaign_recipients WHERE campaign_id = OLD.id;
            RETURN OLD;
        END $$;
        CREATE TRIGGER campaigns_delete_ledger AFTER DELETE ON campaigns
            FOR EACH ROW EXECUTE FUNCTION delete_campaign_ledger();

        -- Click tracking resolves link ids, never a URL from the request: no open redirect.
        CREATE TABLE campaign_links (
            campaign_id  bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            link_id      integer NOT NULL,
            url          text NOT NULL CHECK (url ~* '^https?://'),
            PRIMARY KEY (campaign_id, link_id)
        );

        CREATE TABLE email_events (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            campaign_id     bigint REFERENCES campaigns (id) ON DELETE CASCADE,
            recipient_id    bigint REFERENCES campaign_recipients (id) ON DELETE CASCADE,
            email           text,
            type            text NOT NULL,
            subtype         text,
            link_id         integer,
            ip              inet,
            user_agent      text,
            is_machine      boolean NOT NULL DEFAULT false,
            sns_message_id  text UNIQUE,
            ses_message_id  text,
            payload         jsonb,
            occurred_at     timestamptz NOT NULL DEFAULT now(),
            created_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX email_events_campaign_idx ON email_events (campaign_id, type, occurred_at);
        CREATE INDEX email_events_recipient_idx ON email_events (recipient_id);
        CREATE INDEX email_events_created_idx ON email_events (created_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE email_events;
        DROP TABLE campaign_links;
        DROP TABLE campaign_recipients;
        DROP TRIGGER campaigns_delete_ledger ON campaigns;
        DROP FUNCTION delete_campaign_ledger();
        DROP TABLE campaigns;
        DROP TABLE suppressions;
        DROP TABLE list_members;
        DROP TABLE lists;
        DROP TABLE contacts;
        """
    )
