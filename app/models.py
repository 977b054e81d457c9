"""The ORM tables (the schema the migrations build), and the StrEnums of their state columns.

Credits are integers and move only through `app.credits.service` (the ledger).
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, BigId, UTCDateTime, utcnow


class GenerationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({GenerationStatus.SUCCEEDED, GenerationStatus.FAILED,
                            GenerationStatus.CANCELED})
UNFINISHED_STATUSES = (GenerationStatus.QUEUED, GenerationStatus.RUNNING)


class LimitReset(StrEnum):
    """How often a key's credit limit starts afresh (periods begin at 00:00 UTC; weeks on
    Monday, months on the 1st)."""

    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    NEVER = "never"


class WebhookStatus(StrEnum):
    PENDING = "pending"  # to be (re)tried at next_attempt_at
    DELIVERED = "delivered"
    FAILED = "failed"  # retries ran out
    GONE = "gone"  # the receiver answered 410: never again


class ReferenceRole(StrEnum):
    IMAGE = "image"  # a reference image (an `image` of /v1/images/edits)
    MASK = "mask"  # the edit's mask


class LedgerKind(StrEnum):
    GRANT = "grant"
    CHARGE = "charge"
    REFUND = "refund"
    EXPIRE = "expire"


class UserRole(StrEnum):
    USER = "user"
    ADMIN = "admin"  # also sees the console's Users and Usage pages and may call /api/v1/admin


def _stored_as_text(enum: type[StrEnum], length: int) -> Enum:
    """A StrEnum column stored as its value in a VARCHAR (no database enum type)."""
    return Enum(enum, native_enum=False, create_constraint=False, length=length,
                values_callable=lambda members: [m.value for m in members])



class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    account_type: Mapped[str] = mapped_column(String(32), default="FREE")
    # Cached balance, moved in the same transaction as every ledger row (audit checks it).
    credits: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # argon2id (pwdlib); None: no console sign-in until an operator sets a password.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[UserRole] = mapped_column(_stored_as_text(UserRole, 8),
                                           default=UserRole.USER,
                                           server_default=UserRole.USER.value)
    # Set: the user's keys and console sessions stop working at once.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("credits >= 0", name="credits_not_negative"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Limits of this key (None: the server's default, or none); see app/limits/.
    rate_limit: Mapped[int | None] = mapped_column(Integer)  # generation requests a minute
    max_concurrency: Mapped[int | None] = mapped_column(Integer)  # queued or running at once
    credit_limit: Mapped[int | None] = mapped_column(Integer)  # credits per limit_reset period
    limit_reset: Mapped[LimitReset | None] = mapped_column(_stored_as_text(LimitReset, 8))


class KeySpend(Base):
    """What a key with a credit limit has spent in one period (moved with its charges and
    refunds, in their transactions)."""

    __tablename__ = "key_spend"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"),
                                            primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    credits: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (CheckConstraint("credits >= 0", name="credits_not_negative"),)


class CreditLot(Base):
    """A grant of credits, with its own optional expiry; spending drains soonest-expiring first."""

    __tablename__ = "credit_lots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    granted: Mapped[int] = mapped_column(Integer)
    remaining: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(32), default="grant")
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("granted > 0", name="granted_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= granted", name="remaining_in_range"),
        Index("ix_credit_lots_user_open", "user_id", "expires_at",
              postgresql_where=text("remaining > 0"), sqlite_where=text("remaining > 0")),
    )


class Generation(Base):
    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    status: Mapped[GenerationStatus] = mapped_column(_stored_as_text(GenerationStatus, 16),
                                                     default=GenerationStatus.QUEUED)
    model: Mapped[str] = mapped_column(String(64))
    provider_model: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    size: Mapped[str] = mapped_column(String(16))
    aspect_ratio: Mapped[str] = mapped_column(String(16))
    quality: Mapped[str] = mapped_column(String(8))
    render_quality: Mapped[str] = mapped_column(String(16))
    output_format: Mapped[str] = mapped_column(String(8))
    n: Mapped[int] = mapped_column(Integer)
    is_async: Mapped[bool] = mapped_column(Boolean, default=False)
    reference_count: Mapped[int] = mapped_column(Integer, default=0)
    credits_requested: Mapped[int] = mapped_column(Integer)
    credits_refunded: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    provider_usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the OpenAI-compatible API passes through to the provider (background, moderation,
    # output_compression, input_fidelity, user, partial_images); None from /api/v1.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    input_tokens: Mapped[int | None] = mapped_column(Integer)  # the provider's token counts
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    # A failure a new attempt could get past (an upstream outage), not one it would repeat.
    retryable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The start of the key's credit-limit period this generation's charge counts in (None:
    # no credit limit applied); its refunds give that period's allowance back.
    spend_period: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)  # None: every event
    error_message: Mapped[str | None] = mapped_column(Text)
    # Each (re-)enqueue bumps `attempts`; a job only acts if it carries the current attempt.
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Refreshed while a job works on it (and at each enqueue); the sweep acts when it goes stale.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        # Listing newest first, with a cursor on (created_at, id); with a status filter.
        Index("ix_generations_user_page", "user_id", "created_at", "id"),
        Index("ix_generations_user_status_page", "user_id", "status", "created_at", "id"),
        Index("ix_generations_key_unfinished", "api_key_id",
              postgresql_where=text("status IN ('queued', 'running')"),
              sqlite_where=text("status IN ('queued', 'running')")),
        Index("ix_generations_created", "created_at"),  # usage by period
        Index("ix_generations_unfinished", "status", "created_at",
              postgresql_where=text("status IN ('queued', 'running')"),
              sqlite_where=text("status IN ('queued', 'running')")),
        CheckConstraint("n >= 1", name="n_positive"),
        CheckConstraint("credits_refunded >= 0 AND credits_refunded <= credits_requested",
                        name="refund_in_range"),
    )


class CreditMovement(Base):
    """Append-only: one row per movement of credits as the user sees it (GET /credits/ledger),
    however many lots it touched, with the balance right after it."""

    __tablename__ = "credit_movements"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[LedgerKind] = mapped_column(_stored_as_text(LedgerKind, 16))
    credits: Mapped[int] = mapped_column(Integer)
    balance_after: Mapped[int] = mapped_column(Integer)
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_credit_movements_user_page", "user_id", "id"),)


class CreditLedgerEntry(Base):
    """Append-only: every movement of credits is one row per lot it touches."""

    __tablename__ = "credit_ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("credit_lots.id"), index=True)
    movement_id: Mapped[int | None] = mapped_column(ForeignKey("credit_movements.id"),
                                                    index=True)
    movement: Mapped[CreditMovement | None] = relationship()
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"))
    kind: Mapped[LedgerKind] = mapped_column(_stored_as_text(LedgerKind, 16))
    amount: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # 'adjust' is allowed by the first migration but never written.
        CheckConstraint(
            "kind IN ('grant', 'charge', 'refund', 'expire', 'adjust')", name="kind_known"),
        CheckConstraint(
            "(kind = 'grant' AND amount > 0) OR (kind = 'refund' AND amount > 0)"
            " OR (kind IN ('charge', 'expire') AND amount < 0) OR kind = 'adjust'",
            name="amount_sign"),
        # A lot is charged, and refunded, at most once per generation: a second refund of the
        # same generation is rejected by the database itself.
        Index("uq_credit_ledger_generation_movement", "generation_id", "kind", "lot_id",
              unique=True,
              postgresql_where=text("generation_id IS NOT NULL"),
              sqlite_where=text("generation_id IS NOT NULL")),
    )


class GenerationImage(Base):
    __tablename__ = "generation_images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation_id: Mapped[str] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(32))
    byte_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("generation_id", "index"),)


class ReferenceImage(Base):
    __tablename__ = "reference_images"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    generation_id: Mapped[str] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(32))
    byte_size: Mapped[int] = mapped_column(BigId)
    role: Mapped[ReferenceRole] = mapped_column(_stored_as_text(ReferenceRole, 8),
                                                default=ReferenceRole.IMAGE,
                                                server_default=ReferenceRole.IMAGE.value)

    __table_args__ = (UniqueConstraint("generation_id", "index"),)


class WebhookSecret(Base):
    """A user's signing secret, stored as a salt only: the secret is HMAC(GIH_SECRET_KEY,
    user and salt), so a database dump holds none. A rotated one stays valid 24 h."""

    __tablename__ = "webhook_secrets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_webhook_secrets_user", "user_id", "created_at"),)


class WebhookEvent(Base):
    """One event of a generation's end, written in the transaction that ends it; delivered at
    least once by the worker."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # msg_...: webhook-id
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))  # generation.succeeded | failed | canceled
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[WebhookStatus] = mapped_column(_stored_as_text(WebhookStatus, 16),
                                                  default=WebhookStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("generation_id", "type"),
        Index("ix_webhook_events_due", "next_attempt_at",
              postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
        Index("ix_webhook_events_user", "user_id", "created_at"),
    )


class WebhookAttempt(Base):
    """Every delivery attempt, kept (gih webhooks deliveries)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"),
                                          index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


class Session(Base):
    """A console sign-in. Only HMAC-SHA256(server secret, session id) is stored: the id itself
    lives in the browser's cookie alone. Ended by sign-out, a password change or disabling the
    user (the rows are deleted); idle for 30 days, it is refused (and deleted)."""

    __tablename__ = "sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SignInFailure(Base):
    """A wrong password, counted per subject (a hash of the email, or of the client address)
    over the last minute to throttle guessing."""

    __tablename__ = "sign_in_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_sign_in_failures_subject", "subject", "failed_at"),)


class CreditGrant(Base):
    """A grant made by an admin (the admin API or the console's Users page). With an
    Idempotency-Key, unique per user, so a payment webhook retried (even many times at once)
    grants once: the second insert fails on the constraint and answers the first grant."""

    __tablename__ = "credit_grants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("credit_lots.id"))
    granted_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    credits: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),
                      CheckConstraint("credits > 0", name="credits_positive"))
