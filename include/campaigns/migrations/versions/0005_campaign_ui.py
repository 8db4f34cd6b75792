"""The analyst UI round: a campaign's preheader (the preview text inbox apps show after the subject).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        -- A Jinja2 template like the subject, rendered per recipient into a hidden block at the top of the html.
        ALTER TABLE campaigns ADD COLUMN preheader text
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE campaigns DROP COLUMN preheader")
