"""Crashes: a `gih worker` SIGKILLed again and again while generations run, a `gih serve`
SIGKILLed in the middle of sync requests, and a worker killed inside the two narrow windows of a
job (job taken but generation not yet claimed; images stored but generation not yet finished).
Every generation still ends, once, within the sweep's time; no image is stored twice or left
behind; no credit is charged or refunded twice; balances, ledger and `gih credits audit` agree.

The random schedule is seeded (RELIABILITY_SEED overrides it, to replay a run); a failure
names the seed.
"""

import asyncio
import contextlib
import os
import random
import re
import signal
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx2
import pytest

from tests.conftest import S3_BUCKET, audit_problems, bearer, settings_from_env
from tests.fakes.processes import start_serve, stop_process
from tests.waiting import wait_until_async

SEED = int(os.environ.get("RELIABILITY_SEED", "20260430"))
FINAL = ("succeeded", "failed")
GRANT = 400
IMAGE_NAME = re.compile(r"/(\d+)\.(png|jpg|webp)$")


@pytest.fixture
def pg_url(prod_db_url: str) -> str:
    """In this module, the production path's database (where the session's `gih worker` and
    the tests' own run)."""
    return prod_db_url


# --- helpers ------------------------------------------------------------------------------------

async def sql(pg_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def restart_worker(worker) -> None:
    """Start the worker again and wait until this start is ready."""
    await asyncio.to_thread(worker.start)


async def ensure_worker(worker) -> None:
    await asyncio.to_thread(worker.ensure_running)


async def describe_open(pg_url: str, prod_env: dict[str, str], ids: list[str]) -> list[str]:
    """Each unfinished generation as the database and arq's Redis keys see it."""
    import redis.asyncio as aioredis

    rows = await sql(pg_url, "SELECT id, status, attempts, now() - created_at AS age, "
                             "now() - heartbeat_at AS beat FROM generations "
                             "WHERE id = ANY($1) AND status NOT IN ('succeeded', 'failed') "
                             "ORDER BY created_at", ids)
    client = aioredis.from_url(prod_env["GIH_REDIS_URL"])
    lines = []
    try:
        for r in rows:
            job = f"gen:{r['id']}:{r['attempts']}"
            in_progress = await client.pttl(f"arq:in-progress:{job}")
            queued = await client.zscore(prod_env["GIH_QUEUE_NAME"], job)
            lines.append(f"{r['id']} {r['status']} attempt {r['attempts']}, created "
                         f"{r['age'].total_seconds():.1f} s ago, heartbeat "
                         f"{r['beat'].total_seconds():.1f} s ago; arq job {job}: in queue "
                         f"{queued is not None}, in-progress key ttl {in_progress} ms")
    finally:
        await client.aclose()
    return lines


async def wait_all_final(pg_url: str, ids: list[str], timeout: float, prod_env: dict[str, str],
                         snapshot_after: float | None = None,
                         snapshot: list[str] | None = None) -> dict[str, str]:
    """Wait until every generation is final; after `snapshot_after` s, note once what is still
    open (into `snapshot`), to explain a slow finish."""
    started = time.monotonic()
    statuses: dict[str, str] = {}

    async def all_final() -> bool:
        rows = await sql(pg_url, "SELECT id, status FROM generations WHERE id = ANY($1)", ids)
        statuses.clear()
        statuses.update({r["id"]: r["status"] for r in rows})
        if len(statuses) == len(ids) and all(s in FINAL for s in statuses.values()):
            return True
        elapsed = time.monotonic() - started
        if snapshot is not None and not snapshot and snapshot_after is not None \
                and elapsed > snapshot_after:
            snapshot.append(f"still open {elapsed:.0f} s after the last restart:")
            snapshot.extend(await describe_open(pg_url, prod_env, ids))
        return False

    try:
        await wait_until_async(all_final, timeout=timeout, interval=0.25)
    except AssertionError:
        open_ = [i for i, s in statuses.items() if s not in FINAL]
        raise AssertionError(f"{len(open_)} generations not final after {timeout:.0f} s "
                             f"(seed {SEED}):\n"
                             + "\n".join(await describe_open(pg_url, prod_env, ids))) from None
    return statuses


async def blocked_by(pg_url: str, lock: "RowLock") -> bool:
    """Some session waits for the row lock `lock` holds."""
    assert lock.conn is not None
    rows = await sql(pg_url, "SELECT count(*) FROM pg_stat_activity "
                             "WHERE $1 = ANY(pg_blocking_pids(pid))", lock.conn.get_server_pid())
    return rows[0][0] > 0


# The finishing statement of a job: the one-statement finish, or the transaction's locked read.
# (It may wait behind a heartbeat that waits for the lock: its blocker is then the heartbeat.)
FINISH_WAITING = ("FROM pg_stat_activity WHERE datname = current_database() "
                  "AND wait_event_type = 'Lock' "
                  "AND (strpos(query, 'WITH g AS') > 0 OR strpos(query, 'FOR UPDATE') > 0)")


async def finish_waiting(pg_url: str) -> bool:
    return (await sql(pg_url, "SELECT count(*) " + FINISH_WAITING))[0][0] > 0


def stored_objects(s3, generation_id: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=S3_BUCKET, Prefix=f"generations/{generation_id}/")
    assert not listing.get("IsTruncated")
    return [item["Key"] for item in listing.get("Contents", [])]


async def check_books(pg_url: str, s3, generations: dict[str, dict],
                      balances: dict[str, int], grants: dict[str, int]) -> dict[str, int]:
    """The checks every scenario shares. `generations` maps id -> the API's generation object
    (with its user id under "_user"); `balances` maps user id -> the API's balance."""
    ids = list(generations)
    users = list(grants)
    rows = {r["id"]: r for r in await sql(
        pg_url, "SELECT id, user_id, status, n, attempts, credits_requested, credits_refunded "
                "FROM generations WHERE id = ANY($1)", ids)}
    images = defaultdict(list)
    for r in await sql(pg_url, "SELECT generation_id, index, storage_key FROM generation_images "
                               "WHERE generation_id = ANY($1)", ids):
        images[r["generation_id"]].append(r)
    ledger = await sql(pg_url, "SELECT user_id, lot_id, generation_id, kind, amount "
                               "FROM credit_ledger WHERE user_id = ANY($1)", users)
    moves = defaultdict(list)
    for r in ledger:
        if r["kind"] in ("charge", "refund"):
            # no charge or refund without a generation of this run
            assert r["generation_id"] in generations, dict(r)
            moves[r["generation_id"]].append(r)

    problems: list[str] = []
    usage_by_user: Counter[str] = Counter()
    for gen_id, body in generations.items():
        row = rows[gen_id]
        usage = body["usage"]["credits"]
        usage_by_user[row["user_id"]] += usage
        assert row["user_id"] == body["_user"]
        assert body["status"] == row["status"] and row["status"] in FINAL, (gen_id, row)
        per_image = row["credits_requested"] // row["n"]
        delivered = len(body["images"])
        if row["status"] == "succeeded":
            assert 1 <= delivered <= row["n"], (gen_id, delivered)
            assert usage == delivered * per_image, (gen_id, usage, delivered)
        else:
            assert delivered == 0 and usage == 0, (gen_id, body)
        assert usage == row["credits_requested"] - row["credits_refunded"], (gen_id, dict(row))
        # one DB image row per index, indexes 0..delivered-1
        indexes = sorted(r["index"] for r in images[gen_id])
        assert indexes == list(range(delivered)), (gen_id, indexes, delivered)
        # the bucket: exactly one object per delivered index, nothing else
        keys = stored_objects(s3, gen_id)
        stored = Counter(int(m.group(1)) for k in keys if (m := IMAGE_NAME.search(k)))
        if sorted(keys) != sorted(r["storage_key"] for r in images[gen_id]) \
                or any(c != 1 for c in stored.values()):
            problems.append(f"{gen_id} ({row['status']}, n={row['n']}, delivered {delivered}, "
                            f"attempts {row['attempts']}): bucket holds {sorted(keys)}")
        # the ledger: one charge (one lot per user), at most one refund per lot, sums add up
        charges = [m for m in moves[gen_id] if m["kind"] == "charge"]
        refunds = [m for m in moves[gen_id] if m["kind"] == "refund"]
        assert len(charges) == 1, (gen_id, [dict(m) for m in moves[gen_id]])
        assert -sum(m["amount"] for m in charges) == row["credits_requested"]
        per_lot = Counter(m["lot_id"] for m in refunds)
        assert all(c == 1 for c in per_lot.values()), (gen_id, [dict(m) for m in refunds])
        assert sum(m["amount"] for m in moves[gen_id]) == -usage, (
            gen_id, usage, [dict(m) for m in moves[gen_id]])
    for user, grant in grants.items():
        assert balances[user] == grant - usage_by_user[user], (user, balances[user], grant)
    assert not problems, "images stored beyond the delivered ones:\n" + "\n".join(problems)
    return {"re-enqueued": sum(1 for r in rows.values() if r["attempts"] > 1),
            "succeeded": sum(1 for r in rows.values() if r["status"] == "succeeded"),
            "failed": sum(1 for r in rows.values() if r["status"] == "failed"),
            "max attempts": max(r["attempts"] for r in rows.values())}


async def audit(prod_env: dict[str, str]) -> None:
    """What `gih credits audit` checks: every balance = its ledger = its lots."""
    assert await audit_problems(settings_from_env(prod_env)) == [], f"seed {SEED}"


# --- 1. the worker SIGKILLed at random moments under load ---------------------------------------

# RELIABILITY_SOAK=N runs N times the generations and kills: the documented soak.
SOAK = int(os.environ.get("RELIABILITY_SOAK", "1"))
GENERATIONS = 50 * SOAK
USERS = 5
KILLS = 4 * SOAK
FINISH_WITHIN_S = 40  # after the last kill; the sweep acts after 4 s + 1 s in these settings


async def test_worker_sigkilled_repeatedly_under_load(prod, worker, openai_fake, prod_env,
                                                      pg_url: str, s3) -> None:
    rng = random.Random(SEED)
    plan = [(rng.randrange(USERS), rng.randint(1, 4), rng.choice(("1K", "2K")),
             rng.uniform(0.1, 0.6)) for _ in range(GENERATIONS)]
    kill_delays = [rng.uniform(1.5, 3.5) for _ in range(KILLS)]
    latency_rng = random.Random(SEED + 7)

    accounts = [await prod.user_with_key(GRANT) for _ in range(USERS)]
    submitted: dict[str, int] = {}  # generation id -> user index
    kills: list[dict] = []

    async def vary_upstream() -> None:
        while True:  # latency 300..1500 ms, a few 500s and short answers, changed as we go
            await asyncio.to_thread(
                openai_fake.configure, latency_ms=latency_rng.randint(300, 1500), fail_rate=0.2,
                fewer_rate=0.2, seed=latency_rng.randrange(1 << 30))
            await asyncio.sleep(0.7)

    async def submit_all() -> None:
        for i, (user, n, tier, gap) in enumerate(plan):
            await asyncio.sleep(gap)
            response = await prod.http.post(
                "/api/v1/images/generations", headers=bearer(accounts[user][1]),
                json={"model": "gpt-image-2", "prompt": f"crash load {SEED} #{i}", "n": n,
                      "quality": tier, "aspect_ratio": "1:1", "async": True})
            assert response.status_code == 202, response.text
            submitted[response.json()["id"]] = user

    async def running_now() -> int:
        return (await sql(pg_url, "SELECT count(*) FROM generations WHERE status = 'running' "
                                  "AND user_id = ANY($1)", [a.id for a, _ in accounts]))[0][0]

    async def kill_rounds() -> None:
        for delay in kill_delays:
            await asyncio.sleep(delay)  # the schedule under test: kills at random moments
            try:  # kill while at least one job is inside its work, if one comes within 3 s
                running = await wait_until_async(running_now, timeout=3)
            except AssertionError:
                running = 0
            await asyncio.to_thread(worker.kill)
            kills.append({"at": datetime.now(UTC), "running": running})
            await restart_worker(worker)

    upstream = asyncio.create_task(vary_upstream())
    try:
        await asyncio.gather(submit_all(), kill_rounds())
        last_kill = kills[-1]["at"]
        slow: list[str] = []
        statuses = await wait_all_final(pg_url, list(submitted), timeout=80, prod_env=prod_env,
                                        snapshot_after=20, snapshot=slow)
        upstream.cancel()
        await asyncio.gather(upstream, return_exceptions=True)
        await asyncio.to_thread(openai_fake.configure)

        generations: dict[str, dict] = {}
        for gen_id, user in submitted.items():
            response = await prod.http.get(f"/api/v1/generations/{gen_id}",
                                           headers=bearer(accounts[user][1]))
            assert response.status_code == 200, response.text
            generations[gen_id] = {**response.json(), "_user": accounts[user][0].id}
        assert all(g["status"] == statuses[i] for i, g in generations.items())
        balances = {}
        for account, key in accounts:
            response = await prod.http.get("/api/v1/credits", headers=bearer(key))
            balances[account.id] = response.json()["credits"]
        await check_books(pg_url, s3, generations, balances, {a.id: GRANT for a, _ in accounts})
        completed = await sql(pg_url, "SELECT max(completed_at) FROM generations "
                                      "WHERE id = ANY($1)", list(submitted))
        after_last_kill = (completed[0][0] - last_kill).total_seconds()
        await audit(prod_env)
        assert len(kills) == KILLS
        assert any(k["running"] for k in kills), f"seed {SEED}: no kill hit a running job"
        if after_last_kill >= FINISH_WITHIN_S:
            stuck = {m.group(0) for line in slow for m in [re.match(r"gen_\w+", line)] if m}
            worker_lines = [line[:400] for line in worker.log_path.read_text().splitlines()
                            if any(g in line for g in stuck)]
            raise AssertionError(
                f"seed {SEED}: the last generation finished {after_last_kill:.1f} s after the "
                f"last kill "
                f"(the sweep re-enqueues after {prod_env['GIH_STALE_AFTER_S']} s):\n"
                + "\n".join(slow) + "\nkills at " + ", ".join(
                    k["at"].isoformat(timespec="milliseconds") for k in kills)
                + f"\nworker log ({worker.log_path}):\n"
                + "\n".join(worker_lines[:12] + ["..."] + worker_lines[-12:]))
    finally:
        upstream.cancel()
        await asyncio.gather(upstream, return_exceptions=True)
        await ensure_worker(worker)


# --- 2. the API SIGKILLed in the middle of sync requests ----------------------------------------

SYNC_REQUESTS = 20
SYNC_USERS = 4


async def test_api_sigkilled_during_sync_requests(prod, worker, openai_fake, prod_env,
                                                  pg_url: str, s3, tmp_path: Path) -> None:
    await ensure_worker(worker)
    rng = random.Random(SEED + 1)
    kill_at = rng.randint(5, 15)  # kill once this many requests are accepted (or after 5 s)
    latency = rng.randint(1000, 2000)
    accounts = [await prod.user_with_key(GRANT) for _ in range(SYNC_USERS)]
    requests = []
    for i in range(SYNC_REQUESTS):
        user = rng.randrange(SYNC_USERS)
        requests.append({"user": user, "key": f"api-crash-{SEED}-{i}", "body": {
            "model": "gpt-image-2", "prompt": f"api crash {SEED} #{i}", "n": rng.randint(1, 3)}})
    openai_fake.configure(latency_ms=latency)
    first = second = None
    try:
        first, base = start_serve(prod_env, tmp_path / "serve-1.log", workers=1)

        async def post(http: httpx2.AsyncClient, request: dict) -> httpx2.Response:
            return await http.post("/api/v1/images/generations", json=request["body"], headers={
                **bearer(accounts[request["user"]][1]), "Idempotency-Key": request["key"]})

        user_ids = [a.id for a, _ in accounts]
        watch = await asyncpg.connect(pg_url, timeout=10)
        async with httpx2.AsyncClient(base_url=base, timeout=60) as http:
            calls = [asyncio.create_task(post(http, r)) for r in requests]

            async def accepted() -> bool:
                return await watch.fetchval(
                    "SELECT count(*) FROM generations WHERE user_id = ANY($1)",
                    user_ids) >= kill_at

            try:  # kill once `kill_at` are accepted, or after 5 s whatever the count
                await wait_until_async(accepted, timeout=5, interval=0.02)
            except AssertionError:
                pass
            finally:
                await watch.close()
            os.killpg(first.pid, signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            answers = await asyncio.gather(*calls, return_exceptions=True)
        answered = [a for a in answers if isinstance(a, httpx2.Response)]
        cut_off = [a for a in answers if isinstance(a, httpx2.HTTPError)]
        assert len(answered) + len(cut_off) == SYNC_REQUESTS, answers
        # answered before the kill: the generation or its failure, never anything else
        first_errors = [f"{r['key']} (before the kill): {a.status_code} {a.text}"
                        for r, a in zip(requests, answers, strict=True)
                        if isinstance(a, httpx2.Response) and not (a.status_code == 200 or (
                            a.status_code == 500 and "generation_id" in a.json()["error"]))]
        before = {r["idempotency_key"]: r["id"] for r in await sql(
            pg_url, "SELECT idempotency_key, id FROM generations WHERE user_id = ANY($1)",
            user_ids)}

        second, base = start_serve(prod_env, tmp_path / "serve-2.log", workers=1)
        restarted = time.monotonic()
        async with httpx2.AsyncClient(base_url=base, timeout=60) as http:
            # all clients retry at once, as they would after an outage
            replays = await asyncio.gather(*(post(http, r) for r in requests))
            ids = {}
            replay_errors = first_errors  # answers neither the generation nor its failure
            for request, replay in zip(requests, replays, strict=True):
                for again in range(4):
                    body = replay.json()
                    if replay.status_code in (200, 202) or again == 3 or (
                            replay.status_code == 500 and "generation_id" in body["error"]):
                        break
                    replay_errors.append(f"{request['key']} (accepted before the kill: "
                                         f"{request['key'] in before}): {replay.status_code} "
                                         f"{body}")
                    replay = await post(http, request)  # once more, alone, to go on checking
                assert replay.status_code in (200, 202, 500), replay.text
                gen_id = body["error"]["generation_id"] if replay.status_code == 500 \
                    else body["id"]
                if request["key"] in before:  # accepted before the kill: the same generation
                    assert gen_id == before[request["key"]], (request["key"], body)
                ids[request["key"]] = gen_id
            await wait_all_final(pg_url, list(ids.values()), prod_env=prod_env,
                                 timeout=60 - (time.monotonic() - restarted))
            generations = {}
            for request in requests:
                account, key = accounts[request["user"]]
                response = await http.get(f"/api/v1/generations/{ids[request['key']]}",
                                          headers=bearer(key))
                assert response.status_code == 200, response.text
                generations[ids[request["key"]]] = {**response.json(), "_user": account.id}
            balances = {}
            for account, key in accounts:
                response = await http.get("/api/v1/credits", headers=bearer(key))
                balances[account.id] = response.json()["credits"]

        # each key: exactly one generation; no generation without a key of this run
        per_key = await sql(pg_url, "SELECT idempotency_key, count(*) AS c FROM generations "
                                    "WHERE user_id = ANY($1) GROUP BY idempotency_key", user_ids)
        assert sorted(r["idempotency_key"] for r in per_key) == sorted(r["key"] for r in requests)
        assert all(r["c"] == 1 for r in per_key), [dict(r) for r in per_key]
        assert len(set(ids.values())) == SYNC_REQUESTS
        await check_books(pg_url, s3, generations, balances, {a.id: GRANT for a, _ in accounts})
        await audit(prod_env)
        logged = (tmp_path / "serve-2.log").read_text()
        assert not replay_errors, (
            "requests answered neither with their generation nor with its failure:\n"
            + "\n".join(replay_errors) + f"\nserve log: {logged.count('unhandled error')} "
            f"unhandled errors, {logged.count('DeadlockDetectedError')} deadlocks")
    finally:
        if first is not None and first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
        stop_process(second)
        await ensure_worker(worker)


# --- 3. the two narrow windows of a job, held open with a row lock, then the worker SIGKILLed ---
#
# A job (a) takes its arq job, then claims its generation in its first transaction, and (b) stores
# its images, then finishes in its last one. The random rounds above hit these windows only now
# and then; holding the generation's row lock from the test keeps the job inside the window while
# the worker is killed, so each case runs every time.

TARGETED_WITHIN_S = 30  # after the kill; the sweep acts after 4 s + 1 s in these settings

class RowLock:
    """`SELECT ... FOR UPDATE` of one generation, held in an open transaction until released."""

    def __init__(self) -> None:
        self.conn: asyncpg.Connection | None = None

    async def take(self, pg_url: str, generation_id: str) -> "RowLock":
        self.conn = await asyncpg.connect(pg_url, timeout=10)
        await self.conn.execute("BEGIN")
        await self.conn.execute("SELECT 1 FROM generations WHERE id = $1 FOR UPDATE",
                                generation_id)
        return self

    async def release(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            with contextlib.suppress(Exception):
                await self.conn.execute("ROLLBACK")
            await self.conn.close()


async def wait_for(check, what: str, timeout: float = 20) -> None:
    await wait_until_async(check, timeout=timeout, what=what)


async def generation_books(prod, pg_url: str, s3, account, key: str,
                           generation_id: str) -> tuple[dict, dict[str, int]]:
    response = await prod.http.get(f"/api/v1/generations/{generation_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    body = {**response.json(), "_user": account.id}
    balance = (await prod.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]
    figures = await check_books(pg_url, s3, {generation_id: body}, {account.id: balance},
                                {account.id: GRANT})
    return body, figures


async def test_worker_killed_between_taking_a_job_and_claiming_it(prod, worker, openai_fake,
                                                                   prod_env, pg_url: str,
                                                                   s3) -> None:
    """The job is marked in progress in arq but its generation is still `queued` when the
    worker dies: the sweep must re-enqueue it like any interrupted job."""
    import redis.asyncio as aioredis

    account, key = await prod.user_with_key(GRANT)
    redis = aioredis.from_url(prod_env["GIH_REDIS_URL"])
    lock = RowLock()
    try:
        await asyncio.to_thread(worker.kill)  # so the job waits in the queue while we lock
        response = await prod.http.post(
            "/api/v1/images/generations", headers=bearer(key),
            json={"model": "gpt-image-2", "prompt": "taken, never claimed", "async": True})
        assert response.status_code == 202, response.text
        gen_id = response.json()["id"]
        await lock.take(pg_url, gen_id)
        await restart_worker(worker)
        await wait_for(lambda: redis.exists(f"arq:in-progress:gen:{gen_id}:1"),
                       "the job marked in progress")
        # the job now waits for its claim's row lock
        await wait_for(lambda: blocked_by(pg_url, lock), "the claim waiting for the row lock")
        await asyncio.to_thread(worker.kill)
        await lock.release()
        await restart_worker(worker)
        snapshot: list[str] = []
        try:
            await wait_all_final(pg_url, [gen_id], timeout=TARGETED_WITHIN_S,
                                 prod_env=prod_env, snapshot_after=10, snapshot=snapshot)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n(at 10 s: {snapshot})\narq keeps the in-progress mark "
                                 f"of a dead worker's job for job_timeout + 10 s") from None
        body, figures = await generation_books(prod, pg_url, s3, account, key, gen_id)
        assert body["status"] == "succeeded" and len(body["images"]) == 1, body
        await audit(prod_env)
    finally:
        await lock.release()
        await redis.aclose()
        await ensure_worker(worker)


async def test_worker_killed_between_storing_images_and_finishing(prod, worker, openai_fake,
                                                                  prod_env, pg_url: str,
                                                                  s3) -> None:
    """Attempt 1 stored all four images and died before finishing; attempt 2 gets one image.
    The generation delivers one image and refunds three; the bucket must hold that one only."""
    openai_fake.configure(latency_ms=1000)
    account, key = await prod.user_with_key(GRANT)
    lock = RowLock()
    try:
        response = await prod.http.post(
            "/api/v1/images/generations", headers=bearer(key),
            json={"model": "gpt-image-2", "prompt": "stored, never finished", "n": 4,
                  "async": True})
        assert response.status_code == 202, response.text
        gen_id = response.json()["id"]

        async def running() -> bool:
            rows = await sql(pg_url, "SELECT status FROM generations WHERE id = $1", gen_id)
            return rows[0]["status"] == "running"

        await wait_for(running, "the generation running")  # claimed; the upstream call is on
        await lock.take(pg_url, gen_id)
        await wait_for(lambda: asyncio.to_thread(lambda: len(stored_objects(s3, gen_id)) == 4),
                       "four stored images")
        # the job now waits for its finishing row lock
        await wait_for(lambda: finish_waiting(pg_url), "the finish waiting for the row lock")
        await asyncio.to_thread(worker.kill)
        # The finish is one statement that commits on its own: sent before the kill, it would
        # still run once the lock goes (as if the worker had died just after it). A server
        # that notices its client is gone drops it; here it is dropped at once, so attempt 1
        # dies with its images stored and its generation unfinished.
        await sql(pg_url, "SELECT pg_terminate_backend(pid) " + FINISH_WAITING)
        await lock.release()
        assert len(await asyncio.to_thread(stored_objects, s3, gen_id)) == 4  # attempt 1's
        await asyncio.to_thread(openai_fake.configure, fewer_images=1)
        await restart_worker(worker)
        await wait_all_final(pg_url, [gen_id], timeout=TARGETED_WITHIN_S, prod_env=prod_env)
        response = await prod.http.get(f"/api/v1/generations/{gen_id}", headers=bearer(key))
        body = response.json()
        assert body["status"] == "succeeded" and len(body["images"]) == 1, body
        assert body["usage"] == {"credits": 8, "credits_requested": 32}, body
        _, figures = await generation_books(prod, pg_url, s3, account, key, gen_id)
        assert figures["max attempts"] == 2
        await audit(prod_env)
    finally:
        await lock.release()
        await ensure_worker(worker)
