"""Limits per key (contract section 12), through the real API: the request rate (in this process
when embedded, in Redis in production), concurrency, and the credit limit per period, with
server defaults; set and cleared by `gih keys create/update`. Across two `gih serve` processes
the rate limit is tests/test_limits_processes.py's."""

import asyncio
import re
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx2
import openai
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.credits import service as credits
from app.db import utcnow
from app.keys import service as api_keys
from app.keys.service import KeyLimits, Principal
from app.limits import service as limits
from app.limits.counters import LocalRateWindow, RedisRateWindow
from app.limits.periods import FOREVER, period_end, period_start
from app.models import CreditMovement, Generation, KeySpend, LedgerKind, LimitReset, User
from tests.conftest import (
    TEST_SECRET,
    Client,
    bearer,
    make_settings,
    poll,
    running_client,
    settings_from_env,
)
from tests.fakes.processes import GIH, app_env
from tests.helpers import run, run_json
from tests.waiting import wait_until_async

PROMPT = "A cinematic product photo with premium studio lighting"
PRICE = 8  # gpt-image-2, 1K, one image
RESET = re.compile(r"([1-9]\d*)s")


# --- helpers -----------------------------------------------------------------------------------


async def limited_key(client: Client, user: User, **key_limits: object) -> tuple[str, str]:
    """A key of `user` with `key_limits` (rate_limit=..., credit_limit=...): (raw key, id)."""
    async with client.session() as session, session.begin():
        issued = await api_keys.issue(session, user, secret=client.app.state.runtime.secret,
                                      **key_limits)  # type: ignore[arg-type]
    return issued.raw_key, issued.key.id


async def submit(client: Client, key: str, *, is_async: bool = True, n: int = 1,
                 **fields: object) -> httpx2.Response:
    body = {"model": "gpt-image-2", "prompt": PROMPT, "n": n, "async": is_async, **fields}
    return await client.http.post("/api/v1/images/generations", json=body, headers=bearer(key),
                                  timeout=60)


async def balance(client: Client, key: str) -> int:
    return (await client.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]


def reset_s(response: httpx2.Response) -> int:
    match = RESET.fullmatch(response.headers["x-ratelimit-reset-requests"])
    assert match, response.headers["x-ratelimit-reset-requests"]
    return int(match.group(1))


def assert_rate_limited(response: httpx2.Response) -> int:
    """A 429 rateLimited with Retry-After in whole seconds (1..60); returns it."""
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rateLimited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    return int(retry_after)


async def key_spend(client: Client, key_id: str) -> dict[datetime, int]:
    async with client.session() as session:
        rows = await session.execute(select(KeySpend.period_start, KeySpend.credits)
                                     .where(KeySpend.api_key_id == key_id))
        return {period: spent for period, spent in rows}


async def net_charged(client: Client, key_id: str) -> int:
    """Credits the key's generations were charged, less their refunds (the ledger's view)."""
    async with client.session() as session:
        moved = await session.scalar(
            select(func.coalesce(func.sum(CreditMovement.credits), 0))
            .join(Generation, Generation.id == CreditMovement.generation_id)
            .where(Generation.api_key_id == key_id,
                   CreditMovement.kind.in_([LedgerKind.CHARGE, LedgerKind.REFUND])))
    return -int(moved or 0)


def sdk(client: Client, key: str) -> openai.AsyncOpenAI:
    """The official SDK on the in-process app; no automatic retries (a 429 would be retried
    after its Retry-After)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=client.app),
                              base_url="http://testserver", timeout=60)
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, http_client=http,
                              max_retries=0)


@pytest.fixture(scope="module", autouse=True)
def audit_after_module(pg_url: str, sqlite_url: str) -> Iterator[None]:
    """`gih credits audit` is clean on both databases once this module has run."""
    yield
    for url in (pg_url, sqlite_url):
        done = subprocess.run([GIH, "credits", "audit"], capture_output=True, text=True,
                              timeout=120, env=app_env({"GIH_DATABASE_URL": url,
                                                        "GIH_SECRET_KEY": TEST_SECRET}))
        assert done.returncode == 0, done.stdout + done.stderr


# --- the request rate ----------------------------------------------------------------------------


async def check_rate_limit_on_both_apis(client: Client) -> None:
    """N+1 requests in a minute: N accepted, one 429, the x-ratelimit-* headers on every
    answer; /api/v1 and /v1 (the SDK) count against the same key's window."""
    user = await client.user(1000)
    key, _ = await limited_key(client, user, rate_limit=5)
    answers = [await submit(client, key) for _ in range(6)]
    assert [a.status_code for a in answers] == [202] * 5 + [429], [a.text for a in answers]
    assert [a.headers["x-ratelimit-limit-requests"] for a in answers] == ["5"] * 6
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == \
        ["4", "3", "2", "1", "0", "0"]
    assert all(1 <= reset_s(a) <= 60 for a in answers)
    retry_after = assert_rate_limited(answers[-1])
    assert retry_after == reset_s(answers[-1])
    assert await balance(client, key) == 1000 - 5 * PRICE  # the refused one is not charged
    for answer in answers[:5]:
        await poll(client, key, answer.json()["id"])

    # /v1 through the official SDK: its own key, 3 a minute.
    key, _ = await limited_key(client, user, rate_limit=3)
    async with sdk(client, key) as api:
        for left in ("2", "1", "0"):
            raw = await api.images.with_raw_response.generate(
                model="gpt-image-2", prompt=PROMPT, size="1024x1024")
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == left
            assert raw.parse().data[0].b64_json
        with pytest.raises(openai.RateLimitError) as refused:
            await api.images.generate(model="gpt-image-2", prompt=PROMPT, size="1024x1024")
    headers = refused.value.response.headers
    assert headers["x-should-retry"] == "true"  # nothing was charged: a retry is safe
    assert headers["retry-after"].isdigit() and 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == headers["retry-after"] + "s"
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "rateLimited"
    assert error["type"] == "rate_limit_error"
    assert await balance(client, key) == 1000 - 8 * PRICE


async def test_rate_limit_embedded_counter(pg: Client) -> None:
    await check_rate_limit_on_both_apis(pg)


async def test_rate_limit_counted_in_redis(prod: Client) -> None:
    await check_rate_limit_on_both_apis(prod)


async def test_concurrent_burst_gets_exactly_the_limit(prod: Client) -> None:
    """40 requests at once against a limit of 25 (one Redis script per request)."""
    user = await prod.user(10_000)
    key, _ = await limited_key(prod, user, rate_limit=25)
    answers = await asyncio.gather(*(submit(prod, key) for _ in range(40)))
    assert Counter(a.status_code for a in answers) == {202: 25, 429: 15}
    left = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in answers
                  if a.status_code == 202)
    assert left == list(range(25))  # each slot given once
    assert await balance(prod, key) == 10_000 - 25 * PRICE


async def test_keys_without_a_rate_limit_get_the_server_default(pg_url: str) -> None:
    async with running_client(make_settings(pg_url, rate_limit_per_min=3)) as client:
        user = await client.user(1000)
        plain = await client.key(user)
        answers = [await submit(client, plain) for _ in range(4)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429]
        assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
        own, _ = await limited_key(client, user, rate_limit=5)  # its own limit wins
        answers = [await submit(client, own) for _ in range(6)]
        assert [a.status_code for a in answers] == [202] * 5 + [429]
        await wait_until_async(client.settled, timeout=30, what="generations final")


async def test_no_rate_limit_no_headers(any_db: Client) -> None:
    _, key = await any_db.user_with_key(100)
    answer = await submit(any_db, key, is_async=False)
    assert answer.status_code == 200, answer.text
    assert not [h for h in answer.headers if h.startswith("x-ratelimit-")]


async def test_rate_windows_count_and_reset() -> None:
    clock = [1000.0]
    window = LocalRateWindow(clock=lambda: clock[0])
    verdicts = [await window.hit("key_a", 2) for _ in range(3)]
    assert [(v.allowed, v.remaining, v.reset_s) for v in verdicts] == \
        [(True, 1, 60), (True, 0, 60), (False, 0, 60)]
    clock[0] += 45.5
    assert (await window.hit("key_a", 2)).reset_s == 15  # the first leaves in 14.5 s
    clock[0] += 15
    freed = await window.hit("key_a", 2)  # the first two left: one slot taken again
    assert (freed.allowed, freed.remaining) == (True, 1)
    assert (await window.hit("key_b", 2)).remaining == 1  # keys do not share a window


async def test_redis_window_is_atomic(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        window = RedisRateWindow(lambda: client)
        key_id = f"key_test{secrets.token_hex(4)}"
        verdicts = await asyncio.gather(*(window.hit(key_id, 20) for _ in range(60)))
        allowed = [v for v in verdicts if v.allowed]
        assert len(allowed) == 20
        assert sorted(v.remaining for v in allowed) == list(range(20))
        assert all(55 <= v.reset_s <= 60 for v in verdicts)
        assert 0 < await client.pttl(f"gih:rate:{key_id}") <= 60_000  # idle keys expire
    finally:
        await client.aclose()


# --- concurrency ---------------------------------------------------------------------------------


async def test_max_concurrency_two_of_ten_until_one_ends(prod: Client, openai_fake) -> None:
    openai_fake.configure(latency_ms=2000)  # each generation runs two seconds
    user = await prod.user(1000)
    key, key_id = await limited_key(prod, user, max_concurrency=2)
    answers = await asyncio.gather(*(submit(prod, key) for _ in range(10)))
    assert Counter(a.status_code for a in answers) == {202: 2, 429: 8}
    for refused in (a for a in answers if a.status_code == 429):
        assert assert_rate_limited(refused) == limits.CONCURRENCY_RETRY_AFTER_S
        assert refused.json()["error"]["max_concurrency"] == 2
    assert await balance(prod, key) == 1000 - 2 * PRICE  # the refused are not charged
    assert_rate_limited(await submit(prod, key))  # both still running
    assert await unfinished(prod, key_id) == 2
    first, second = (a.json()["id"] for a in answers if a.status_code == 202)
    await poll(prod, key, first)
    third = await submit(prod, key)  # one ended: one more is accepted
    assert third.status_code == 202, third.text
    assert await unfinished(prod, key_id) <= 2
    await poll(prod, key, second)
    await poll(prod, key, third.json()["id"])
    again = await asyncio.gather(*(submit(prod, key) for _ in range(10)))
    assert Counter(a.status_code for a in again) == {202: 2, 429: 8}


async def unfinished(client: Client, key_id: str) -> int:
    async with client.session() as session:
        return int(await session.scalar(
            select(func.count()).select_from(Generation)
            .where(Generation.api_key_id == key_id,
                   Generation.status.in_(["queued", "running"]))) or 0)


async def test_keys_without_a_concurrency_limit_get_the_server_default(
        prod_env, worker, prod_sdk_env, openai_fake) -> None:
    openai_fake.configure(latency_ms=1500)
    settings = settings_from_env(prod_env, max_concurrent_generations=1)
    async with running_client(settings) as client:
        user = await client.user(1000)
        plain = await client.key(user)
        answers = await asyncio.gather(*(submit(client, plain) for _ in range(3)))
        assert Counter(a.status_code for a in answers) == {202: 1, 429: 2}
        own, _ = await limited_key(client, user, max_concurrency=3)  # its own limit wins
        answers = await asyncio.gather(*(submit(client, own) for _ in range(4)))
        assert Counter(a.status_code for a in answers) == {202: 3, 429: 1}
        await wait_until_async(client.settled, timeout=60, interval=0.1,
                               what="generations final")


# --- credits per period --------------------------------------------------------------------------


async def test_credit_limit_holds_under_fifty_concurrent_requests(any_db: Client) -> None:
    user = await any_db.user(10_000)
    key, key_id = await limited_key(any_db, user, credit_limit=100,
                                    limit_reset=LimitReset.DAILY)
    answers = await asyncio.gather(*(submit(any_db, key) for _ in range(50)))
    assert Counter(a.status_code for a in answers) == {202: 12, 402: 38}  # 12 x 8 = 96
    refused = next(a for a in answers if a.status_code == 402).json()["error"]
    assert refused["code"] == "keyLimitReached" and refused["credit_limit"] == 100
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    assert await key_spend(any_db, key_id) == {today: 96}
    assert await net_charged(any_db, key_id) == 96
    assert await balance(any_db, key) == 10_000 - 96

    # Requests of different sizes (8 to 32 credits): never past the limit either.
    key, key_id = await limited_key(any_db, user, credit_limit=50,
                                    limit_reset=LimitReset.MONTHLY)
    answers = await asyncio.gather(*(submit(any_db, key, n=1 + i % 4) for i in range(50)))
    assert set(Counter(a.status_code for a in answers)) == {202, 402}
    spent = await net_charged(any_db, key_id)
    assert 0 < spent <= 50
    assert await key_spend(any_db, key_id) == {today.replace(day=1): spent}
    async with any_db.session() as session:
        periods = set(await session.scalars(select(Generation.spend_period)
                                            .where(Generation.api_key_id == key_id)))
    assert periods == {today.replace(day=1)}
    await wait_until_async(any_db.settled, timeout=30, what="generations final")


async def test_refunds_give_the_allowance_back(prod: Client, openai_fake) -> None:
    user = await prod.user(100)
    key, key_id = await limited_key(prod, user, credit_limit=16)  # never resets
    openai_fake.configure(fail_status=400, fail_code="moderation_blocked")
    failed = await submit(prod, key, is_async=False, n=2)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "generationFailed"
    assert await key_spend(prod, key_id) == {FOREVER: 0}  # refunded: all 16 back

    openai_fake.configure(fewer_images=1)
    partial = await submit(prod, key, is_async=False, n=2)  # 16 charged, 8 refunded
    assert partial.status_code == 200 and partial.json()["usage"]["credits"] == 8
    assert await key_spend(prod, key_id) == {FOREVER: 8}
    over = await submit(prod, key, n=2)
    assert over.status_code == 402 and over.json()["error"]["code"] == "keyLimitReached"
    assert over.json()["error"]["credits_spent"] == 8
    openai_fake.configure()
    last = await submit(prod, key, is_async=False)
    assert last.status_code == 200, last.text
    refused = await submit(prod, key)
    assert refused.status_code == 402
    assert await key_spend(prod, key_id) == {FOREVER: 16}
    assert await net_charged(prod, key_id) == 16
    assert await balance(prod, key) == 100 - 16
    async with prod.session() as session:
        assert await credits.audit(session) == []


async def test_refunds_racing_new_charges_keep_the_spend_exact(prod: Client, openai_fake) -> None:
    """Waves of 20 requests while the worker fails half the generations: its refunds (user,
    then key_spend) and the API's charges (user, then key_spend) interleave without deadlock,
    and the key's spend stays what the ledger says, within the limit."""
    openai_fake.configure(fail_rate=0.5, seed=7, latency_ms=100)
    user = await prod.user(100_000)
    key, key_id = await limited_key(prod, user, credit_limit=80, limit_reset=LimitReset.DAILY)
    statuses: Counter[int] = Counter()
    for _ in range(4):
        answers = await asyncio.gather(*(submit(prod, key) for _ in range(20)))
        statuses.update(a.status_code for a in answers)
        assert set(statuses) <= {202, 402}, [a.text for a in answers if a.status_code >= 500]
        assert sum((await key_spend(prod, key_id)).values()) <= 80
        await wait_until_async(prod.settled, timeout=60, interval=0.1, what="a wave final")
        assert sum((await key_spend(prod, key_id)).values()) == await net_charged(prod, key_id)
    assert statuses[202] > 10  # refunds made room again and again (10 fit without them)
    async with prod.session() as session:
        failed = await session.scalar(select(func.count()).select_from(Generation).where(
            Generation.api_key_id == key_id, Generation.status == "failed"))
    assert failed and failed >= statuses[202] - 10


async def test_concurrent_replays_spend_the_allowance_once(pg: Client) -> None:
    """Twenty requests at once with one Idempotency-Key make one generation, charged once:
    the key's period spend must count it once too."""
    user = await pg.user(1000)
    key, key_id = await limited_key(pg, user, credit_limit=100)
    headers = {**bearer(key), "Idempotency-Key": "limits-burst-1"}
    body = {"model": "gpt-image-2", "prompt": PROMPT, "async": True}
    answers = await asyncio.gather(*(
        pg.http.post("/api/v1/images/generations", json=body, headers=headers, timeout=60)
        for _ in range(20)))
    assert {a.status_code for a in answers} <= {200, 202, 409}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers if a.status_code in (200, 202)}) == 1
    assert await net_charged(pg, key_id) == PRICE
    assert await key_spend(pg, key_id) == {FOREVER: PRICE}
    await wait_until_async(pg.settled, timeout=30, what="generations final")


async def test_key_limit_reached_on_v1(pg: Client) -> None:
    user = await pg.user(100)
    key, _ = await limited_key(pg, user, credit_limit=10, limit_reset=LimitReset.WEEKLY)
    too_big = await submit(pg, key, n=2)  # 16 credits: more than the whole limit
    assert too_big.status_code == 402, too_big.text
    assert (too_big.json()["error"]["code"], too_big.json()["error"]["credits_spent"]) == \
        ("keyLimitReached", 0)
    async with sdk(pg, key) as api:
        await api.images.generate(model="gpt-image-2", prompt=PROMPT, size="1024x1024")
        with pytest.raises(openai.APIStatusError) as refused:
            await api.images.generate(model="gpt-image-2", prompt=PROMPT, size="1024x1024")
    assert refused.value.status_code == 402
    assert refused.value.response.headers["x-should-retry"] == "false"
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "keyLimitReached"
    week = period_end(LimitReset.WEEKLY, utcnow())
    assert body["limit_resets_at"] == week.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert await balance(pg, key) == 100 - PRICE


# --- periods and the cheap path ------------------------------------------------------------------


def test_periods_start_at_midnight_monday_and_the_first_in_utc() -> None:
    sunday = datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC)
    assert period_start(LimitReset.DAILY, sunday) == datetime(2026, 5, 31, tzinfo=UTC)
    assert period_start(LimitReset.WEEKLY, sunday) == datetime(2026, 5, 25, tzinfo=UTC)
    assert period_start(LimitReset.MONTHLY, sunday) == datetime(2026, 5, 1, tzinfo=UTC)
    assert period_start(LimitReset.NEVER, sunday) == period_start(None, sunday) == FOREVER
    bangkok = sunday.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Bangkok"))  # Monday
    assert period_start(LimitReset.WEEKLY, bangkok) == datetime(2026, 5, 25, tzinfo=UTC)
    assert period_end(LimitReset.DAILY, sunday) == datetime(2026, 6, 1, tzinfo=UTC)
    assert period_end(LimitReset.WEEKLY, sunday) == datetime(2026, 6, 1, tzinfo=UTC)
    december = datetime(2026, 12, 31, 12, tzinfo=UTC)
    assert period_end(LimitReset.MONTHLY, december) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end(LimitReset.NEVER, december) is None
    assert period_start(LimitReset.MONTHLY, december + timedelta(days=1)) == \
        period_end(LimitReset.MONTHLY, december)


async def test_no_limit_touches_nothing() -> None:
    """The hot path: no limit of the key's and no server default → no query, no counter."""
    principal = Principal(key_id="key_x", user=User(id="usr_x"), limits=KeyLimits())
    untouchable: object = object()  # any use of it as a session or a runtime would raise
    settings = Settings(secret_key=TEST_SECRET)
    assert await limits.reserve(untouchable, principal, 8, settings=settings) is None  # type: ignore[arg-type]

    class Runtime:
        queue = untouchable

    Runtime.settings = settings  # type: ignore[attr-defined]
    assert await limits.check_rate(Runtime, principal) is None  # type: ignore[arg-type]


# --- set and cleared by the CLI ------------------------------------------------------------------


async def test_cli_flags_take_effect(pg_url: str, pg: Client) -> None:
    """`gih keys create/update/list` with the limit flags, against the app on the same
    database: each change is seen by the key's next request."""
    env = app_env({"GIH_DATABASE_URL": pg_url, "GIH_SECRET_KEY": TEST_SECRET,
                   "GIH_PROVIDER": "mock"})

    async def gih(*args: str) -> dict:
        return await asyncio.to_thread(run_json, *args, env=env)

    async def statuses(count: int) -> list[int]:
        return [(await submit(pg, key)).status_code for _ in range(count)]

    email = f"lim{secrets.token_hex(5)}@example.com"
    await gih("users", "create", email, "--credits", "1000")
    made = await gih("keys", "create", email, "--rate-limit", "2", "--credit-limit", "24",
                     "--limit-reset", "weekly")
    assert made["key"].startswith("gih_live_") and made["api_key"] == made["key"]
    assert made["email"] == email and made["status"] == "active"
    assert (made["rate_limit"], made["max_concurrency"], made["credit_limit"],
            made["limit_reset"], made["period_spend"]) == (2, None, 24, "weekly", 0)
    assert made["period_start"] == period_start(LimitReset.WEEKLY, utcnow()).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    key, key_id = made["key"], made["id"]
    assert await statuses(3) == [202, 202, 429]  # the rate limit

    cleared = await gih("keys", "update", key_id, "--rate-limit", "0", "--max-concurrency", "5")
    assert (cleared["rate_limit"], cleared["max_concurrency"]) == (None, 5)
    assert await statuses(2) == [202, 402]  # no rate limit now; 3 x 8 = 24 credits spent
    (listed,) = await gih("keys", "list", email)
    assert (listed["id"], listed["credit_limit"], listed["period_spend"]) == (key_id, 24, 24)
    human = (await asyncio.to_thread(run, "keys", "list", email, env=env)).stdout
    assert "PERIOD_SPEND" in human and "weekly" in human

    raised = await gih("keys", "update", key_id, "--credit-limit", "32", "--limit-reset", "daily")
    assert (raised["credit_limit"], raised["limit_reset"]) == (32, "daily")
    # A daily period began today: what the weekly one counted stays there.
    assert await statuses(1) == [202]
    uncapped = await gih("keys", "update", key_id, "--credit-limit", "0")
    assert (uncapped["credit_limit"], uncapped["limit_reset"], uncapped["period_spend"]) == \
        (None, None, None)
    assert await statuses(2) == [202, 202]
    assert await balance(pg, key) == 1000 - 6 * PRICE

    unknown = await asyncio.to_thread(run, "keys", "update", "key_nope", "--rate-limit", "1",
                                      env=env, check=False)
    assert unknown.returncode == 1 and "no API key" in unknown.stderr
    negative = await asyncio.to_thread(run, "keys", "update", key_id, "--rate-limit", "-1",
                                       env=env, check=False)
    assert negative.returncode == 2 and "Traceback" not in negative.stderr
    await wait_until_async(pg.settled, timeout=30, what="generations final")


async def test_readme_limits_commands_run_as_written(pg_url: str) -> None:
    """The README's "Limits per key" commands, with a fresh user for you@example.com and the
    key the first one makes for KEY_ID."""
    from tests.test_openai_sdk import readme_block

    env = app_env({"GIH_DATABASE_URL": pg_url, "GIH_SECRET_KEY": TEST_SECRET})
    email = f"readme{secrets.token_hex(5)}@example.com"
    await asyncio.to_thread(run, "users", "create", email, env=env)
    lines = readme_block("limits-cli", "sh").replace("\\\n", " ").splitlines()
    commands = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    assert [c[:3] for c in commands] == [["gih", "keys", "create"], ["gih", "keys", "update"],
                                         ["gih", "keys", "update"], ["gih", "keys", "list"]]
    key_id = ""
    for command in commands:
        args = [email if a == "you@example.com" else key_id if a == "KEY_ID" else a
                for a in command[1:]]
        shown = await asyncio.to_thread(run_json, *args, env=env)
        key_id = key_id or shown["id"]
    (listed,) = shown
    assert (listed["id"], listed["name"], listed["rate_limit"], listed["max_concurrency"],
            listed["credit_limit"], listed["limit_reset"], listed["period_spend"]) == \
        (key_id, "app", None, 4, 1000, "daily", 0)
