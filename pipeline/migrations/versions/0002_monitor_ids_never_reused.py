"""monitor ids are never reused

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

SQLite gives a new row the highest rowid plus one, so removing the newest
monitor handed its id, and with it its history (``monitor:<id>``), to the next
one.  AUTOINCREMENT never gives an id twice; the sequence starts above every
id that any history names.  PostgreSQL's sequences never went back: nothing to do.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HISTORY = ("snapshots", "checks", "findings")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    with op.batch_alter_table("monitors", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass
    highest = bind.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM monitors")).scalar() or 0
    for table in _HISTORY:
        named = bind.execute(
            sa.text(
                f"SELECT COALESCE(MAX(CAST(SUBSTR(source, 9) AS INTEGER)), 0) FROM {table} "
                "WHERE source LIKE 'monitor:%'"
            )
        ).scalar()
        highest = max(highest, named or 0)
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'monitors'"))
    bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('monitors', :seq)"), {"seq": highest})


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("monitors", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
