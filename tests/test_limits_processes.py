"""Limits per key across API processes: two `gih serve` on the same PostgreSQL and Redis (the
production path, with the session's `gih worker` and the fake upstream). The request rate is
counted in Redis, concurrency and credits under locks in PostgreSQL: each holds for the two
processes together as for one."""

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import bearer
from tests.fakes.processes import WorkerProcess, app_env, start_serve, stop_process
from tests.helpers import run, run_json
from tests.waiting import wait_until_async

PROMPT = "Two processes, one limit"
PRICE = 8


@pytest.fixture(scope="module")
def two_servers(prod_env: dict[str, str], session_worker: WorkerProcess,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    folder = tmp_path_factory.mktemp("two-servers")
    first, first_base = start_serve(prod_env, folder / "a.log", workers=1)
    try:
        second, second_base = start_serve(prod_env, folder / "b.log", workers=1)
    except BaseException:
        stop_process(first)
        raise
    yield [first_base, second_base]
    stop_process(first)
    stop_process(second)
    run("credits", "audit", env=app_env(prod_env))  # clean after the module


def account(prod_env: dict[str, str], credits: int, *limit_flags: str) -> tuple[str, str]:
    """A user with `credits` and a key made by `gih keys create` with `limit_flags`."""
    env = app_env(prod_env)
    email = f"two{secrets.token_hex(5)}@example.com"
    run("users", "create", email, "--credits", str(credits), env=env)
    made = run_json("keys", "create", email, *limit_flags, env=env)
    return made["key"], email


async def burst(bases: list[str], key: str, count: int, **fields: object) -> list[httpx2.Response]:
    """`count` async generation requests at once, alternating between the servers."""
    body = {"model": "gpt-image-2", "prompt": PROMPT, "async": True, **fields}
    async with httpx2.AsyncClient(timeout=60) as http:
        return list(await asyncio.gather(*(
            http.post(f"{bases[i % len(bases)]}/api/v1/images/generations", json=body,
                      headers=bearer(key)) for i in range(count))))


async def settled(base: str, key: str, answers: list[httpx2.Response]) -> None:
    """Every accepted generation final (none runs on into the next test)."""
    ids = [a.json()["id"] for a in answers if a.status_code == 202]
    async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
        async def final() -> bool:
            for generation_id in ids:
                got = await http.get(f"/api/v1/generations/{generation_id}", headers=bearer(key))
                if got.json()["status"] not in ("succeeded", "failed"):
                    return False
            return True

        await wait_until_async(final, timeout=60, interval=0.2, what="generations final")


async def balance(base: str, key: str) -> int:
    async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
        return (await http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]


async def test_rate_limit_holds_across_two_api_processes(two_servers: list[str], prod_env,
                                                         openai_fake) -> None:
    key, _ = account(prod_env, 10_000, "--rate-limit", "10")
    # One through each process first, so both count in the window whichever answers the burst
    # faster; then 28 at once.
    answers = [*await burst(two_servers[:1], key, 1), *await burst(two_servers[1:], key, 1)]
    answers += await burst(two_servers, key, 28)
    statuses = Counter(a.status_code for a in answers)
    # The contract allows ±1; the Redis script makes it exact.
    assert statuses == {202: 10, 429: 20}, statuses
    left = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in answers
                  if a.status_code == 202)
    assert left == list(range(10))  # each slot taken once, whichever process took it
    by_server = Counter(str(a.url).split("/api/")[0] for a in answers if a.status_code == 202)
    assert len(by_server) == 2, by_server  # both processes let some through
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "rateLimited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert await balance(two_servers[0], key) == 10_000 - 10 * PRICE
    await settled(two_servers[0], key, answers)


async def test_concurrency_and_credits_hold_across_two_api_processes(
        two_servers: list[str], prod_env, openai_fake) -> None:
    openai_fake.configure(latency_ms=1500)
    key, _ = account(prod_env, 10_000, "--max-concurrency", "3")
    answers = await burst(two_servers, key, 12)
    assert Counter(a.status_code for a in answers) == {202: 3, 429: 9}
    await settled(two_servers[0], key, answers)

    openai_fake.configure()
    key, _ = account(prod_env, 10_000, "--credit-limit", "100", "--limit-reset", "daily")
    answers = await burst(two_servers, key, 40)
    assert Counter(a.status_code for a in answers) == {202: 12, 402: 28}  # 12 x 8 = 96
    assert await balance(two_servers[1], key) == 10_000 - 96
    await settled(two_servers[0], key, answers)

