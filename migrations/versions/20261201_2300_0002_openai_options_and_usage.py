"""generation options, provider token counts, retryable failures, reference roles

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("input_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("output_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("retryable", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("reference_images") as batch:
        batch.add_column(sa.Column("role", sa.String(length=8), nullable=False,
                                   server_default="image"))
    op.create_index("ix_generations_created", "generations", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_generations_created", table_name="generations")
    with op.batch_alter_table("reference_images") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("retryable")
        batch.drop_column("output_tokens")
        batch.drop_column("input_tokens")
        batch.drop_column("options")
