"""Listing generations and the credit ledger at 1k and at 1M rows per user (bench/stack.py's
production stack): the latency of the first page, a page deep in the list, and a filtered page,
for a user with 1,000 rows and one with 1,000,000. The ratio should stay near 1: every page is one
range read of an index that starts with the user.

    .venv/bin/python -m bench.listing [--rows 1000000] [--requests 30]
"""

import argparse
import asyncio
import statistics
import time

import httpx2

from bench.stack import Stack

FILL_GENERATIONS = """
INSERT INTO generations (id, user_id, api_key_id, status, model, provider_model, prompt, size,
    aspect_ratio, quality, render_quality, output_format, n, is_async, reference_count,
    credits_requested, credits_refunded, attempts, retryable, created_at, completed_at)
SELECT 'gen_' || $2 || lpad(i::text, 12, '0'), $1, NULL,
       CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'gpt-image-2', 'gpt-image-2',
       'bench prompt ' || i, '1024x1024', '1:1', '1K', 'auto', 'png', 1, true, 0, 8,
       CASE WHEN i % 10 = 0 THEN 8 ELSE 0 END, 1, false,
       now() - make_interval(secs => ($3 - i) * 0.001),
       now() - make_interval(secs => ($3 - i) * 0.001)
FROM generate_series(1, $3) AS i
"""
FILL_MOVEMENTS = """
INSERT INTO credit_movements (user_id, kind, credits, balance_after, generation_id, note,
    created_at)
SELECT $1, 'grant', 1, i, NULL, 'bench', now() - make_interval(secs => ($2 - i) * 0.001)
FROM generate_series(1, $2) AS i
"""


async def fill(stack: Stack, user_id: str, tag: str, rows: int) -> None:
    began = time.monotonic()
    await stack.sql(FILL_GENERATIONS, user_id, tag, rows)
    await stack.sql(FILL_MOVEMENTS, user_id, rows)
    await stack.sql("ANALYZE generations")
    await stack.sql("ANALYZE credit_movements")
    print(f"  {rows:>9,} generations and movements for {tag} in {time.monotonic() - began:.0f} s")


async def p50_ms(http: httpx2.AsyncClient, path: str, key: str, requests: int) -> float:
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        answer = await http.get(path, headers={"Authorization": f"Bearer {key}"})
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, answer.text[:200]
    return statistics.median(times)


async def measure(stack: Stack, key: str, tag: str, rows: int,
                  requests: int) -> dict[str, float]:
    deep = f"gen_{tag}{rows // 10:012d}"  # a tenth of the way from the oldest
    deep_movement = (await stack.sql(
        "SELECT id FROM credit_movements WHERE user_id = (SELECT user_id FROM generations "
        "WHERE id = $1) ORDER BY id LIMIT 1 OFFSET $2", deep, rows // 10))[0][0]
    paths = {
        "generations, first page": "/api/v1/generations?limit=20",
        "generations, deep page": f"/api/v1/generations?limit=20&starting_after={deep}",
        "generations, status=failed": "/api/v1/generations?limit=20&status=failed",
        "ledger, first page": "/api/v1/credits/ledger?limit=20",
        "ledger, deep page": f"/api/v1/credits/ledger?limit=20&starting_after=mov_{deep_movement}",
    }
    async with httpx2.AsyncClient(base_url=stack.base, timeout=60) as http:
        for path in paths.values():  # warm the connections and the cache
            await p50_ms(http, path, key, 3)
        return {name: await p50_ms(http, path, key, requests) for name, path in paths.items()}


def main(rows: int, requests: int) -> None:
    with Stack() as stack:
        small, large = asyncio.run(stack.accounts(2, credits=0))
        asyncio.run(fill(stack, small.user_id, "s", 1000))
        asyncio.run(fill(stack, large.user_id, "l", rows))
        at_1k = asyncio.run(measure(stack, small.key, "s", 1000, requests))
        at_1m = asyncio.run(measure(stack, large.key, "l", rows, requests))
    print(f"\n  {'p50 of ' + str(requests) + ' requests':32} {'1k rows':>9} "
          f"{f'{rows:,} rows':>16} {'ratio':>6}")
    for name in at_1k:
        print(f"  {name:32} {at_1k[name]:7.1f} ms {at_1m[name]:13.1f} ms "
              f"{at_1m[name] / at_1k[name]:6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    main(args.rows, args.requests)
