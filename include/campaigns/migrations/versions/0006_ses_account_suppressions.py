"""The SES account-level suppression list, synced both ways: where each sync left off, and which suppressions SES
already has.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        -- Set when the address is known to be on the SES account list (imported from it or pushed to it), so the
        -- push sends each hard bounce and complaint once; NULL: not known to be there.
        ALTER TABLE suppressions ADD COLUMN ses_account_listed_at timestamptz;

        -- One row: the high-water mark of the last successful import (the newest LastUpdateTime SES reported), so
        -- each run asks SES only for what changed since, and when and by which run it was reached.
        CREATE TABLE ses_suppression_sync (
            id              boolean PRIMARY KEY DEFAULT true CHECK (id),
            high_water      timestamptz,
            synced_at       timestamptz NOT NULL DEFAULT now(),
            run_id          text
        );
    """)


def downgrade() -> None:
    op.execute("""
        DROP TABLE ses_suppression_sync;
        ALTER TABLE suppressions DROP COLUMN ses_account_listed_at;
    """)
