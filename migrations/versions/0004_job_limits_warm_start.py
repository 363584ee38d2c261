"""job limits and warm start: a per-job time limit and the model a job starts from

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 02:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot ALTER much in place; on PostgreSQL it is plain ALTER TABLE.
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('time_limit_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('init_from_model', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('init_from_model')
        batch_op.drop_column('time_limit_s')
