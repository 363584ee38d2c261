"""real data: datasets say how many rows lack a target and what was left out; jobs record their features

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:30:00.000000

Datasets stored before this revision had no missing cells (they were refused), so
`n_rows_without_target` is 0 and `warnings` empty for them. A job's `features` is
NULL for jobs created before it: those use their dataset's features.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('n_rows_without_target', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('warnings', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('features', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('features')
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('warnings')
        batch.drop_column('n_rows_without_target')
