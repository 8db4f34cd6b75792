"""Unknown sends reconciled: an index of the ledger's `unknown` rows, so the hourly reconcile_unknown report reads
only them instead of scanning every campaign's ledger.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        -- Few rows ever become unknown (at most the sends in flight when a task died), so the index stays tiny and
        -- the report costs the same for ten campaigns as for ten thousand.
        CREATE INDEX campaign_recipients_unknown_idx ON campaign_recipients (campaign_id, id)
            WHERE status = 'unknown'
    """)


def downgrade() -> None:
    op.execute("DROP INDEX campaign_recipients_unknown_idx")
