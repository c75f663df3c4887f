"""snapshots remember the bytes their text came from

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``input_hash``: SHA-256 over what scrape read (the selector, the content type
and the body).  Fetch compares a new body's with the latest snapshot's and
stops an unchanged page there, without handing its body to scrape.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as table:
        table.add_column(sa.Column("input_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as table:
        table.drop_column("input_hash")
