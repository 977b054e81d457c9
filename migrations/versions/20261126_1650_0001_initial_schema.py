"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 16:50:01.078449
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("account_type", sa.String(length=32), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_users_credits_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_user_id"), ["user_id"], unique=False)

    op.create_table(
        "credit_lots",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("granted > 0", name=op.f("ck_credit_lots_granted_positive")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= granted",
            name=op.f("ck_credit_lots_remaining_in_range"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credit_lots_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_lots")),
    )
    with op.batch_alter_table("credit_lots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_lots_user_open",
            ["user_id", "expires_at"],
            unique=False,
            postgresql_where=sa.text("remaining > 0"),
            sqlite_where=sa.text("remaining > 0"),
        )

    op.create_table(
        "generations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("provider_model", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("size", sa.String(length=16), nullable=False),
        sa.Column("aspect_ratio", sa.String(length=16), nullable=False),
        sa.Column("quality", sa.String(length=8), nullable=False),
        sa.Column("render_quality", sa.String(length=16), nullable=False),
        sa.Column("output_format", sa.String(length=8), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("is_async", sa.Boolean(), nullable=False),
        sa.Column("reference_count", sa.Integer(), nullable=False),
        sa.Column("credits_requested", sa.Integer(), nullable=False),
        sa.Column("credits_refunded", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("provider_usage", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "credits_refunded >= 0 AND credits_refunded <= credits_requested",
            name=op.f("ck_generations_refund_in_range"),
        ),
        sa.CheckConstraint("n >= 1", name=op.f("ck_generations_n_positive")),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_generations_api_key_id_api_keys"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_generations_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
        sa.UniqueConstraint(
            "user_id", "idempotency_key", name=op.f("uq_generations_user_id_idempotency_key")
        ),
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_generations_unfinished",
            ["status", "created_at"],
            unique=False,
            postgresql_where=sa.text("status IN ('queued', 'running')"),
            sqlite_where=sa.text("status IN ('queued', 'running')"),
        )
        batch_op.create_index(
            "ix_generations_user_created", ["user_id", "created_at"], unique=False
        )

    op.create_table(
        "credit_ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("lot_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("generation_id", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(kind = 'grant' AND amount > 0) OR (kind = 'refund' AND amount > 0) OR (kind IN ('charge', 'expire') AND amount < 0) OR kind = 'adjust'",
            name=op.f("ck_credit_ledger_amount_sign"),
        ),
        sa.CheckConstraint(
            "kind IN ('grant', 'charge', 'refund', 'expire', 'adjust')",
            name=op.f("ck_credit_ledger_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_credit_ledger_generation_id_generations"),
        ),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["credit_lots.id"], name=op.f("fk_credit_ledger_lot_id_credit_lots")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_credit_ledger_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_ledger")),
    )
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credit_ledger_lot_id"), ["lot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_credit_ledger_user_id"), ["user_id"], unique=False)
        batch_op.create_index(
            "uq_credit_ledger_generation_movement",
            ["generation_id", "kind", "lot_id"],
            unique=True,
            postgresql_where=sa.text("generation_id IS NOT NULL"),
            sqlite_where=sa.text("generation_id IS NOT NULL"),
        )

    op.create_table(
        "generation_images",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("generation_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_generation_images_generation_id_generations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_images")),
        sa.UniqueConstraint(
            "generation_id", "index", name=op.f("uq_generation_images_generation_id_index")
        ),
    )
    op.create_table(
        "reference_images",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("generation_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column(
            "byte_size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_reference_images_generation_id_generations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_images")),
        sa.UniqueConstraint(
            "generation_id", "index", name=op.f("uq_reference_images_generation_id_index")
        ),
    )


def downgrade() -> None:
    op.drop_table("reference_images")
    op.drop_table("generation_images")
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_credit_ledger_generation_movement",
            postgresql_where=sa.text("generation_id IS NOT NULL"),
            sqlite_where=sa.text("generation_id IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_credit_ledger_user_id"))
        batch_op.drop_index(batch_op.f("ix_credit_ledger_lot_id"))

    op.drop_table("credit_ledger")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index("ix_generations_user_created")
        batch_op.drop_index(
            "ix_generations_unfinished",
            postgresql_where=sa.text("status IN ('queued', 'running')"),
            sqlite_where=sa.text("status IN ('queued', 'running')"),
        )

    op.drop_table("generations")
    with op.batch_alter_table("credit_lots", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_credit_lots_user_open",
            postgresql_where=sa.text("remaining > 0"),
            sqlite_where=sa.text("remaining > 0"),
        )

    op.drop_table("credit_lots")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_user_id"))

    op.drop_table("api_keys")
    op.drop_table("users")
