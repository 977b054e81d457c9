"""Seed history with SQL (not through the API): succeeded generations, each with its charge.

Each seeded user gets one exhausted lot (granted 8 × n, remaining 0), its grant row and n charge
rows of -8, one per seeded generation, so the audit stays clean (balance = Σ ledger = Σ lots,
and every lot = Σ its rows) and the seeded lots are out of the way of new charges (the open-lot
index only holds lots with credits left). Generations are spread over the last 30 days.
"""

import time

import asyncpg

PLAN = "CREATE TEMP TABLE seed_plan (user_id text PRIMARY KEY, n int NOT NULL)"

SEED_USERS = """
INSERT INTO users (id, email, account_type, credits, created_at)
SELECT 'usr_seed' || $1 || '_' || i, 'seed-' || $1 || '-' || i || '@bench.invalid', 'PRO', 0,
       now() - interval '60 days'
FROM generate_series(1, $2) AS i
"""

LOTS = """
INSERT INTO credit_lots (user_id, granted, remaining, expires_at, source, note, created_at)
SELECT user_id, n * 8, 0, NULL, 'grant', 'bench seed ' || $1, now() - interval '31 days'
FROM seed_plan
"""

GRANT_ROWS = """
INSERT INTO credit_ledger (user_id, lot_id, generation_id, kind, amount, note, created_at)
SELECT user_id, id, NULL, 'grant', granted, note, created_at
FROM credit_lots WHERE note = 'bench seed ' || $1
"""

GENERATIONS_AND_CHARGES = """
WITH made AS (
  INSERT INTO generations (id, user_id, api_key_id, status, model, provider_model, prompt, size,
                           aspect_ratio, quality, render_quality, output_format, n, is_async,
                           reference_count, credits_requested, credits_refunded, attempts,
                           created_at, started_at, heartbeat_at, completed_at)
  SELECT 'gen_' || substr(md5($1 || s.user_id || '/' || s.g), 1, 24), s.user_id, NULL,
         'succeeded', 'gpt-image-2', 'gpt-image-2', 'a seeded prompt for the benchmark',
         '1024x1024', '1:1', '1K', 'high', 'png', 1, true, 0, 8, 0, 1, s.t, s.t, s.t, s.t
  FROM (SELECT p.user_id, g, now() - interval '30 days' * random() - interval '1 minute' AS t
        FROM seed_plan AS p, generate_series(1, p.n) AS g) AS s
  RETURNING id, user_id, created_at
)
INSERT INTO credit_ledger (user_id, lot_id, generation_id, kind, amount, note, created_at)
SELECT made.user_id, lot.id, made.id, 'charge', -8, NULL, made.created_at
FROM made JOIN credit_lots AS lot
  ON lot.user_id = made.user_id AND lot.note = 'bench seed ' || $1
"""


async def seed(db_url: str, tag: str, measured_user: str, measured_rows: int,
               other_users: int = 0, other_rows: int = 0) -> float:
    """Give `measured_user` `measured_rows` generations (and as many charges), and spread
    `other_rows` more over `other_users` new users. Returns the seconds it took."""
    began = time.monotonic()
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute(PLAN)
            await conn.execute("INSERT INTO seed_plan VALUES ($1, $2)", measured_user,
                               measured_rows)
            if other_users and other_rows:
                await conn.execute(SEED_USERS, tag, other_users)
                per_user, extra = divmod(other_rows, other_users)
                await conn.execute(
                    "INSERT INTO seed_plan SELECT 'usr_seed' || $1 || '_' || i, "
                    "$2 + (i <= $3)::int FROM generate_series(1, $4) AS i",
                    tag, per_user, extra, other_users)
            await conn.execute(LOTS, tag)
            await conn.execute(GRANT_ROWS, tag)
            await conn.execute(GENERATIONS_AND_CHARGES, tag)
            await conn.execute("DROP TABLE seed_plan")
        # As a table that grew over months stands: vacuumed (hint bits set, the visibility map
        # written) and analyzed, not in the middle of autovacuum's first pass over a bulk load
        # while the 1M-row figures are measured.
        for table in ("users", "credit_lots", "credit_ledger", "generations"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()
    return time.monotonic() - began


async def counts(db_url: str, user_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM credit_ledger) AS ledger,"
            " (SELECT count(*) FROM generations) AS generations,"
            " (SELECT count(*) FROM credit_ledger WHERE user_id = $1) AS user_ledger,"
            " (SELECT count(*) FROM generations WHERE user_id = $1) AS user_generations",
            user_id)
    finally:
        await conn.close()
    return dict(row)
