"""pages rendered in a browser: how a monitor's page is got, and a snapshot's screenshot

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("monitors") as table:
        table.add_column(sa.Column("fetch", sa.String(length=16), nullable=False, server_default="http"))
        table.add_column(sa.Column("wait_for", sa.String(length=512), nullable=True))
    with op.batch_alter_table("snapshots") as table:
        table.add_column(sa.Column("screenshot", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as table:
        table.drop_column("screenshot")
    with op.batch_alter_table("monitors") as table:
        table.drop_column("wait_for")
        table.drop_column("fetch")
