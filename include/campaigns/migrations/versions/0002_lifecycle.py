"""Campaign lifecycle: recurring instances, an audit log of state actions, test sends, suppression changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- A recurring campaign is a template (status stays `scheduled`, `recurrence` set); each occurrence is its
        -- own campaign whose parent is the template. One instance per (template, occurrence), whatever races.
        ALTER TABLE campaigns
            ADD COLUMN parent_id      bigint REFERENCES campaigns (id) ON DELETE SET NULL,
            ADD COLUMN occurrence_at  timestamptz;
        CREATE UNIQUE INDEX campaigns_occurrence_key ON campaigns (parent_id, occurrence_at)
            WHERE parent_id IS NOT NULL;
        -- The dispatcher's question every minute: which scheduled campaigns are due?
        CREATE INDEX campaigns_due_idx ON campaigns (send_at) WHERE status = 'scheduled';

        -- Every state action on a campaign, by a person (campaign_control), the dispatcher, the reputation guard
        -- or the send path: what was asked, when, and what it did. `requested_at` is the clock the "stops within
        -- 5 seconds" promises are measured from.
        CREATE TABLE campaign_actions (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            campaign_id   bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            action        text NOT NULL CHECK (action <> ''),
            actor         text NOT NULL,          -- e.g. 'campaign_control', 'reputation_guard', 'dispatcher'
            run_id        text,                   -- the Airflow run that asked, when one did
            old_status    text,
            new_status    text,
            reason        text,
            detail        jsonb NOT NULL DEFAULT '{}'::jsonb,
            requested_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX campaign_actions_campaign_idx ON campaign_actions (campaign_id, requested_at);

        -- Test sends never touch the ledger and never count in stats.
        CREATE TABLE test_sends (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            campaign_id     bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            email           text NOT NULL,
            contact_id      bigint,               -- whose data rendered it; NULL: sample values
            status          text NOT NULL CHECK (status IN ('sent', 'failed')),
            ses_message_id  text,
            error           text,
            run_id          text,
            sent_at         timestamptz NOT NULL DEFAULT now(),
            CHECK (status <> 'sent' OR ses_message_id IS NOT NULL)
        );
        CREATE INDEX test_sends_campaign_idx ON test_sends (campaign_id, sent_at);

        -- Who added or removed which suppression, and why (removals must give a reason).
        CREATE TABLE suppression_changes (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            email       text NOT NULL CHECK (email = lower(email)),
            action      text NOT NULL CHECK (action IN ('add', 'remove')),
            reason      text NOT NULL CHECK (reason <> ''),
            old_reason  text,                     -- the suppression's reason before the change
            actor       text NOT NULL,
            run_id      text,
            changed_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX suppression_changes_email_idx ON suppression_changes (email, changed_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE suppression_changes;
        DROP TABLE test_sends;
        DROP TABLE campaign_actions;
        DROP INDEX campaigns_due_idx;
        DROP INDEX campaigns_occurrence_key;
        ALTER TABLE campaigns DROP COLUMN occurrence_at, DROP COLUMN parent_id;
        """
    )
