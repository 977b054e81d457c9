"""the submit's charge as one function call on PostgreSQL (app/credits/one_statement.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What app.credits.service.charge writes (the movement, one ledger row per lot, the lots, the
# cached balance), with the generation it pays for, or nothing. A volatile function: each of
# its statements sees what was committed before it (after the user's lock, every lot).
# Outcomes: charged; short (the balance); expired (lots to write off first) and inconsistent
# (lots short of the cached balance), which the caller leaves to the transaction's path;
# no_user.
CHARGE_FUNCTION = """
CREATE FUNCTION gih_charge_generation(
    generation json, amount integer, note text, at timestamptz,
    OUT outcome text, OUT credits_before integer, OUT account_type text,
    OUT lots_left integer[], OUT lots_expire timestamptz[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    g generations := json_populate_record(NULL::generations, generation);
    lot record;
    wanted integer := amount;
    take integer;
    lot_ids bigint[] := '{}';
    takes integer[] := '{}';
    movement bigint;
BEGIN
    SELECT u.credits, u.account_type INTO credits_before, account_type
    FROM users u WHERE u.id = g.user_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        outcome := 'no_user';
        RETURN;
    END IF;
    lots_left := '{}';
    lots_expire := '{}';
    FOR lot IN SELECT l.id, l.remaining, l.expires_at FROM credit_lots l
               WHERE l.user_id = g.user_id AND l.remaining > 0
               ORDER BY l.expires_at ASC NULLS LAST, l.id FOR UPDATE LOOP
        IF lot.expires_at IS NOT NULL AND lot.expires_at <= at THEN
            outcome := 'expired';
            RETURN;
        END IF;
        take := least(lot.remaining, wanted);
        IF take > 0 THEN
            lot_ids := lot_ids || lot.id;
            takes := takes || take;
            wanted := wanted - take;
        END IF;
        lots_left := lots_left || (lot.remaining - take);
        lots_expire := lots_expire || lot.expires_at;
    END LOOP;
    IF credits_before < amount THEN
        outcome := 'short';
        RETURN;
    END IF;
    IF wanted > 0 THEN
        outcome := 'inconsistent';
        RETURN;
    END IF;
    INSERT INTO generations VALUES (g.*);
    INSERT INTO credit_movements (user_id, kind, credits, balance_after, generation_id, note,
                                  created_at)
    VALUES (g.user_id, 'charge', -amount, credits_before - amount, g.id, note, at)
    RETURNING id INTO movement;
    INSERT INTO credit_ledger (user_id, lot_id, generation_id, kind, amount, note, created_at,
                               movement_id)
    SELECT g.user_id, t.lot_id, g.id, 'charge', -t.take, note, at, movement
    FROM unnest(lot_ids, takes) AS t(lot_id, take);
    UPDATE credit_lots l SET remaining = l.remaining - t.take
    FROM unnest(lot_ids, takes) AS t(lot_id, take) WHERE l.id = t.lot_id;
    UPDATE users SET credits = credits_before - amount WHERE id = g.user_id;
    outcome := 'charged';
END
$$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CHARGE_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION gih_charge_generation(json, integer, text, timestamptz)")
