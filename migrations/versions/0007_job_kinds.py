"""job kinds: evaluations and batch predictions are jobs too; batch predictions' output in chunks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:50:00.000000

Every job before this revision trains (`kind` "train").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=20), nullable=False, server_default='train'))
        batch.add_column(sa.Column('input_model_id', sa.String(length=40), nullable=True))
        batch.create_index('ix_jobs_kind', ['kind'])
        batch.create_index('ix_jobs_input_model_id', ['input_model_id'])
    op.create_table('job_output_chunks',
                    sa.Column('job_id', sa.String(length=40), nullable=False),
                    sa.Column('seq', sa.Integer(), nullable=False),
                    sa.Column('data', sa.LargeBinary(), nullable=False),
                    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
                    sa.PrimaryKeyConstraint('job_id', 'seq'))


def downgrade() -> None:
    op.drop_table('job_output_chunks')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_input_model_id')
        batch.drop_index('ix_jobs_kind')
        batch.drop_column('input_model_id')
        batch.drop_column('kind')
