"""Tracking spool: how far each spool segment of the tracking service has been drained, and the lines refused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per spool segment file (tracking_service.events_buffer). drained_bytes advances in the same
        -- transaction as the INSERT of the events it covers, so a drainer crash can neither lose nor repeat one.
        -- The row outlives its file: a re-listed file that was already drained reads nothing.
        CREATE TABLE tracking_spool_segments (
            segment         text PRIMARY KEY,
            drained_bytes   bigint NOT NULL DEFAULT 0 CHECK (drained_bytes >= 0),
            drained_events  bigint NOT NULL DEFAULT 0,
            rejected_lines  bigint NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            finished_at     timestamptz  -- the writer was gone and every byte was drained: the file is deleted
        );

        -- A spool line PostgreSQL refused or that could not be parsed: kept with the reason, never silently dropped.
        CREATE TABLE tracking_spool_rejects (
            id          bigserial PRIMARY KEY,
            segment     text NOT NULL,
            byte_offset bigint NOT NULL,
            line        text NOT NULL,
            error       text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (segment, byte_offset)
        );

        -- One implied open per ledger row, whatever drainers race: two drainers storing clicks of one recipient at
        -- the same time do not see each other's uncommitted open. Existing duplicates are removed first, keeping the
        -- earliest.
        DELETE FROM email_events e USING email_events k
         WHERE e.subtype = 'implied_by_click' AND k.subtype = 'implied_by_click'
           AND e.recipient_id = k.recipient_id AND e.id > k.id;
        CREATE UNIQUE INDEX email_events_one_implied_open ON email_events (recipient_id)
         WHERE subtype = 'implied_by_click';
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS email_events_one_implied_open; DROP TABLE tracking_spool_rejects; "
               "DROP TABLE tracking_spool_segments;")
