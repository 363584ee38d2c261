"""dataset payload chunks: payloads stored in pieces of a few MB instead of one value

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 02:50:00.000000

Payloads stored before this revision keep their single `npz` value and stay
readable (service.core.db.store reads both forms); new ones hold b"" there. Empty rather
than NULL: making the column nullable would rebuild dataset_payloads on SQLite,
which its foreign keys (datasets, the chunks) forbid while they hold rows.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

from service.core.db.store import payload_matches

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dataset_payload_chunks',
                    sa.Column('sha256', sa.String(length=64), nullable=False),
                    sa.Column('seq', sa.Integer(), nullable=False),
                    sa.Column('data', sa.LargeBinary(), nullable=False),
                    sa.ForeignKeyConstraint(['sha256'], ['dataset_payloads.sha256'], ),
                    sa.PrimaryKeyConstraint('sha256', 'seq'))


def downgrade() -> None:
    # Join each chunked payload back into one value, one payload at a time, checking its sha256.
    bind = op.get_bind()
    chunks = sa.table('dataset_payload_chunks', sa.column('sha256', sa.String), sa.column('seq', sa.Integer),
                      sa.column('data', sa.LargeBinary))
    payloads = sa.table('dataset_payloads', sa.column('sha256', sa.String), sa.column('npz', sa.LargeBinary))
    datasets = sa.table('datasets', sa.column('payload_sha256', sa.String), sa.column('tenant_id', sa.String))
    digests = bind.execute(sa.select(payloads.c.sha256).where(sa.func.length(payloads.c.npz) == 0)).scalars().all()
    for digest in digests:
        parts = bind.execute(sa.select(chunks.c.data).where(chunks.c.sha256 == digest)
                             .order_by(chunks.c.seq)).scalars().all()
        npz = b"".join(parts)
        # Named by its sha256, or (stored later) per tenant: by that of a tenant whose dataset uses it.
        content = hashlib.sha256(npz).hexdigest()
        tenants = bind.execute(sa.select(datasets.c.tenant_id).where(datasets.c.payload_sha256 == digest)
                               .distinct()).scalars().all()
        if not any(payload_matches(digest, tenant, content) for tenant in [None, *tenants]):
            raise RuntimeError(f"payload {digest}: its chunks do not hash to its name; not downgrading")
        bind.execute(payloads.update().where(payloads.c.sha256 == digest).values(npz=npz))
    op.drop_table('dataset_payload_chunks')
