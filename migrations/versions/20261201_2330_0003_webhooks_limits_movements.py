"""webhooks, key limits, credit movements, paging indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED = sa.text("status IN ('queued', 'running')")
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_concurrency", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("credit_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("limit_reset", sa.String(length=8), nullable=True))
    op.create_table(
        "key_spend",
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_key_spend_credits_not_negative")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"],
                                name=op.f("fk_key_spend_api_key_id_api_keys"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("api_key_id", "period_start", name=op.f("pk_key_spend")),
    )
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("spend_period", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_events", sa.JSON(), nullable=True))
    op.create_index("ix_generations_user_page", "generations", ["user_id", "created_at", "id"])
    op.create_index("ix_generations_user_status_page", "generations",
                    ["user_id", "status", "created_at", "id"])
    op.create_index("ix_generations_key_unfinished", "generations", ["api_key_id"],
                    postgresql_where=UNFINISHED, sqlite_where=UNFINISHED)
    op.drop_index("ix_generations_user_created", table_name="generations")

    op.create_table(
        "credit_movements",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.String(length=32), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_credit_movements_user_id_users"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"],
                                name=op.f("fk_credit_movements_generation_id_generations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_movements")),
    )
    op.create_index("ix_credit_movements_user_page", "credit_movements", ["user_id", "id"])
    with op.batch_alter_table("credit_ledger") as batch:
        batch.add_column(sa.Column("movement_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                   nullable=True))
        batch.create_foreign_key(op.f("fk_credit_ledger_movement_id_credit_movements"),
                                 "credit_movements", ["movement_id"], ["id"])
        batch.create_index("ix_credit_ledger_movement_id", ["movement_id"])
    backfill_movements()

    op.create_table(
        "webhook_secrets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_webhook_secrets_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_secrets")),
    )
    op.create_index("ix_webhook_secrets_user", "webhook_secrets", ["user_id", "created_at"])
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("generation_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_webhook_events_user_id_users"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"],
                                name=op.f("fk_webhook_events_generation_id_generations"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("generation_id", "type",
                            name=op.f("uq_webhook_events_generation_id_type")),
    )
    op.create_index("ix_webhook_events_due", "webhook_events", ["next_attempt_at"],
                    postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_index("ix_webhook_events_user", "webhook_events", ["user_id", "created_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["webhook_events.id"],
                                name=op.f("fk_webhook_attempts_event_id_webhook_events"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_event_id", "webhook_attempts", ["event_id"])


def backfill_movements() -> None:
    """One movement per (user, kind, generation, moment) of the existing per-lot ledger rows,
    with the balance after it (the running sum of the user's ledger)."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT id, user_id, generation_id, kind, amount, note, created_at FROM credit_ledger "
        "ORDER BY user_id, id")).fetchall()
    totals: dict[tuple, int] = {}
    for row in rows:
        group = (row.user_id, row.generation_id, row.kind, row.created_at)
        totals[group] = totals.get(group, 0) + row.amount
    balances: dict[str, int] = {}
    current: tuple | None = None
    movement_id = None
    for row in rows:
        group = (row.user_id, row.generation_id, row.kind, row.created_at)
        if group != current:
            current = group
            total = totals[group]
            balances[row.user_id] = balances.get(row.user_id, 0) + total
            movement_id = bind.execute(sa.text(
                "INSERT INTO credit_movements (user_id, kind, credits, balance_after, "
                "generation_id, note, created_at) VALUES (:u, :k, :c, :b, :g, :n, :t) "
                "RETURNING id"), {"u": row.user_id, "k": row.kind, "c": total,
                                  "b": balances[row.user_id], "g": row.generation_id,
                                  "n": row.note, "t": row.created_at}).scalar_one()
        bind.execute(sa.text("UPDATE credit_ledger SET movement_id = :m WHERE id = :i"),
                     {"m": movement_id, "i": row.id})


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_events")
    op.drop_table("webhook_secrets")
    with op.batch_alter_table("credit_ledger") as batch:
        batch.drop_index("ix_credit_ledger_movement_id")
        batch.drop_constraint(op.f("fk_credit_ledger_movement_id_credit_movements"),
                              type_="foreignkey")
        batch.drop_column("movement_id")
    op.drop_table("credit_movements")
    op.create_index("ix_generations_user_created", "generations", ["user_id", "created_at"])
    op.drop_index("ix_generations_key_unfinished", table_name="generations")
    op.drop_index("ix_generations_user_status_page", table_name="generations")
    op.drop_index("ix_generations_user_page", table_name="generations")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("webhook_events")
        batch.drop_column("webhook_url")
        batch.drop_column("spend_period")
    op.drop_table("key_spend")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("limit_reset")
        batch.drop_column("credit_limit")
        batch.drop_column("max_concurrency")
        batch.drop_column("rate_limit")
