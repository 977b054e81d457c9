"""What limits per key cost on the hot path: the async submit throughput (`POST
/api/v1/images/generations` with `"async": true` → 202, concurrency 50, as scenario A) on the
production stack of bench/stack.py, with keys that have no limits and with keys that have a
rate limit, a concurrency limit and a credit limit all too high to bite (so every request pays
for the Redis script, the lock on the key's row with the count of its unfinished generations,
and the conditional upsert of its period spend). The two are interleaved round by round, the
worker's queue drained before each run, and printed as a table.

    .venv/bin/python -m bench.limits [--users 50] [--seconds 8] [--rounds 3]
"""

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench import load
from bench.load import LoadResult
from bench.procs import Matching, Tree
from bench.stack import Account, Stack

PROMPT = "A cinematic product photo of a transparent perfume bottle on black marble"
BODY = {"model": "gpt-image-2", "prompt": PROMPT, "size": "1024x1024", "quality": "high",
        "n": 1, "async": True}
PATH = "/api/v1/images/generations"
CONCURRENCY = 50
# High enough never to bite in a run (50 keys share about 500 requests/s), yet checked.
LIMITS = {"rate_limit": 1_000_000, "max_concurrency": 1_000_000,
          "credit_limit": 1_000_000_000}


@dataclass
class Runs:
    name: str
    results: list[LoadResult] = field(default_factory=list)
    api_cpu_ms: list[float] = field(default_factory=list)  # API processes' CPU per request
    db_cpu_ms: list[float] = field(default_factory=list)  # PostgreSQL's (our database's)

    def rate(self) -> float:
        return statistics.median(r.rate for r in self.results)

    def p(self, q: float) -> float:
        return statistics.median(r.p(q) or 0.0 for r in self.results)


async def set_limits(stack: Stack, accounts: list[Account]) -> None:
    """Give the accounts' keys LIMITS (a credit limit that never resets), as `gih keys update`
    does."""
    from app.keys import service as api_keys
    from app.models import LimitReset

    rows = await stack.sql("SELECT id FROM api_keys WHERE user_id = ANY($1::text[])",
                           [a.user_id for a in accounts])

    async def work(session, settings) -> None:
        for row in rows:
            await api_keys.update(session, row["id"], limit_reset=LimitReset.NEVER, **LIMITS)

    await stack._session(work)


def requests(base: str, accounts: list[Account]):
    hostport = urlsplit(base).netloc
    body = json.dumps(BODY).encode()
    built = [load.build("POST", hostport, PATH, {"Authorization": f"Bearer {a.key}",
                                                 "Content-Type": "application/json"}, body)
             for a in accounts]
    return lambda i: built[i % len(built)]


async def run_once(stack: Stack, runs: Runs, accounts: list[Account], seconds: float) -> None:
    count, drained_s = await stack.drain()
    if count:
        print(f"    (drained {count} queued generations in {drained_s:.1f} s)")
    assert stack.serve is not None
    api = Tree("api", stack.serve.pid)
    db = Matching("postgres", 0, f" {stack.db_name} ")
    host, port = urlsplit(stack.base).hostname or "127.0.0.1", stack.port
    api0, db0 = api.cpu(), db.cpu()
    result = await load.run(f"limits {runs.name}", host, port, requests(stack.base, accounts),
                            expected={202}, concurrency=CONCURRENCY, duration_s=seconds)
    runs.results.append(result)
    runs.api_cpu_ms.append(1000 * (api.cpu() - api0) / max(1, result.ok))
    runs.db_cpu_ms.append(1000 * (db.cpu() - db0) / max(1, result.ok))


async def measure(stack: Stack, users: int, seconds: float, rounds: int) -> list[Runs]:
    off_accounts = await stack.accounts(users, prefix="nolimits")
    on_accounts = await stack.accounts(users, prefix="limits")
    await set_limits(stack, on_accounts)
    host, port = urlsplit(stack.base).hostname or "127.0.0.1", stack.port
    for accounts in (off_accounts, on_accounts):  # pools, caches, the script loaded in Redis
        await load.run("warm-up", host, port, requests(stack.base, accounts), expected={202},
                       concurrency=CONCURRENCY, duration_s=2, quiet=True)
    off, on = Runs("off"), Runs("on")
    for round_ in range(rounds):
        order = (off, on) if round_ % 2 == 0 else (on, off)
        for runs in order:
            await run_once(stack, runs, off_accounts if runs is off else on_accounts, seconds)
    spend = await stack.sql("SELECT count(*) AS keys, sum(credits) AS credits FROM key_spend")
    unlimited = await stack.sql(
        "SELECT count(*) FROM generations g JOIN api_keys k ON k.id = g.api_key_id "
        "WHERE k.credit_limit IS NOT NULL AND g.spend_period IS NULL")
    print(f"  key_spend: {spend[0]['keys']} keys, {spend[0]['credits']} credits; limited "
          f"generations without a period: {unlimited[0][0]}")
    return [off, on]


def table(runs: list[Runs], users: int, seconds: float, rounds: int) -> str:
    off, on = runs
    lines = [f"async submit, c={CONCURRENCY}, {users} keys, {rounds} x {seconds:g} s each "
             "(medians)",
             "| limits | requests/s | p50 ms | p99 ms | CPU ms/request: API | PostgreSQL "
             "| runs (req/s) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.name} | {r.rate():.0f} | {r.p(50):.1f} | {r.p(99):.1f} | "
                     f"{statistics.median(r.api_cpu_ms):.2f} | "
                     f"{statistics.median(r.db_cpu_ms):.2f} | "
                     + ", ".join(f"{x.rate:.0f}" for x in r.results) + " |")
    lines.append(f"on/off: throughput x{on.rate() / off.rate():.2f}, API CPU per request "
                 f"x{statistics.median(on.api_cpu_ms) / statistics.median(off.api_cpu_ms):.2f}")
    return "\n".join(lines)


def main(users: int, seconds: float, rounds: int) -> None:
    began = time.monotonic()
    with Stack() as stack:  # (it runs event loops of its own: start it outside one)
        runs = asyncio.run(measure(stack, users, seconds, rounds))
        errors = stack.log_errors()
    print()
    print(table(runs, users, seconds, rounds))
    if errors:
        print(f"warnings/errors in the logs: {errors}")
    print(f"({time.monotonic() - began:.0f} s in all)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="keys (one user each) per side")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side")
    args = parser.parse_args()
    main(args.users, args.seconds, args.rounds)
