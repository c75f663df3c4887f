"""a snapshot extends its source's history once: two checks racing on one source cannot both store a change

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``follows``: the snapshot this one was compared with (``before_id``), or 0 for a
source's first; unique together with ``source``.  Two checks of one source that
read the same latest snapshot and both found a change (the same event published
twice, say) used to store two snapshots and alert twice; now the second insert
fails, and its check compares with the first's snapshot instead.  Snapshots
stored before this revision keep ``follows`` NULL, which the index does not
constrain, so a history that already has such twins migrates as it is.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as table:
        table.add_column(sa.Column("follows", sa.Integer(), nullable=True))
        table.create_index("uq_snapshots_source_follows", ["source", "follows"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as table:
        table.drop_index("uq_snapshots_source_follows")
        table.drop_column("follows")
