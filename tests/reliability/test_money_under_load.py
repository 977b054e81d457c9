"""Money under load: 200 concurrent generation requests against a real `gih serve --workers 2`
(production mode: PostgreSQL, Redis + the session's `gih worker`, SeaweedFS, the OpenAI fake).

Each run mixes n (1..4), the three tiers (1K = 8, 2K = 10, 4K = 12 credits per image), sync and
async requests, 8 users whose balances cover only part of what they ask for, and Idempotency-Keys
(some repeated 2-3 times with the same body). While the load runs a sampler reads every balance
through the API and through SQL (users.credits next to the sum of the user's ledger, in one
statement) and checks it is never negative and always reconciled. Afterwards the money must add
up exactly: per user, balance = granted - sum of the final charges (usage.credits); per
generation, the ledger holds one charge per lot and at most one refund per lot, and the refunds
equal credits_requested - usage.credits; a 402 wrote nothing; an Idempotency-Key made at most one
generation and one charge; `gih credits audit` exits 0. A 503 serviceUnavailable is a legal answer
(the server sheds load when its database pool stays exhausted, as a busy 2-core machine can make
it), but for fewer than half the requests; a generation accepted before such an answer is found by
its request's unique prompt and counted like the others.

The second run has the upstream fail 30% of calls and return one image too few on 20% (the
worker retries a failed call once), so some generations fail (full refund) and some succeed
partially (refund of the missing images): the same equations must hold.
"""

import asyncio
import os
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest

from tests.conftest import audit_problems, bearer, create_account, settings_from_env
from tests.fakes.processes import start_serve, stop_process
from tests.waiting import wait_until_async

PRICES = {"1K": 8, "2K": 10, "4K": 12}
RATIOS = ("1:1", "16:9", "3:2", "4:5")
USERS = 8
# RELIABILITY_SOAK=N runs N times the load (and N times the time bounds): the documented soak.
SOAK = int(os.environ.get("RELIABILITY_SOAK", "1"))
REQUESTS = 200 * SOAK
# Idempotency-Keys: how many keys are sent once, twice, three times (12 + 20 + 18 = 50 = 25%).
KEY_REPEATS = {1: 12, 2: 10, 3: 6}
GRANT_SHARE = 0.45  # each user is granted this share of what its requests would cost
START_SPREAD_S = 1.5 * SOAK  # requests start at random moments within this window
LATE_REPLAY_S = (2.0, 4.0)  # the third copy of a key comes this late: a replay of a finished one
POLL_INTERVAL_S = 0.5
TOTAL_WAIT_S = 75.0 * SOAK  # every request answered and every generation final within this
FINAL = ("succeeded", "failed")


@pytest.fixture
def pg_url(prod_db_url: str) -> str:
    """In this module, the production path's database (where the session's `gih worker` and
    the tests' own run)."""
    return prod_db_url


# --- the server -------------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    log: Path


@pytest.fixture(scope="module")
def money_api(prod_env: dict[str, str], session_worker,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Our own `gih serve --workers 2` in production mode (the session's worker runs the jobs;
    each test's `worker` fixture makes sure it is up)."""
    log = tmp_path_factory.mktemp("money-serve") / "serve.log"
    process, base = start_serve(prod_env, log, workers=2)
    try:
        yield Served(base, log)
    finally:
        stop_process(process)


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class Account:
    user_id: str
    key: str
    granted: int


@dataclass
class Call:
    """One planned request and what came of it."""

    index: int
    user: int
    body: dict[str, Any]
    idempotency_key: str | None
    delay: float
    status: int | None = None
    answer: Any = None
    text: str = ""
    location: str | None = None
    latency: float = 0.0
    transport_error: str | None = None
    generation_id: str | None = None
    final: dict[str, Any] | None = None
    polls: int = 0

    @property
    def is_async(self) -> bool:
        return bool(self.body["async"])

    @property
    def credits_requested(self) -> int:
        return self.body["n"] * PRICES[tier_of(self.body)]


def tier_of(body: dict[str, Any]) -> str:
    return "1K" if "size" in body else body["quality"]


def make_body(rng: random.Random, label: str, index: int, is_async: bool) -> dict[str, Any]:
    tier = rng.choice(("1K", "2K", "4K"))
    body: dict[str, Any] = {"model": "gpt-image-2", "n": rng.randint(1, 4), "async": is_async,
                            "prompt": f"money under load {label} #{index} {secrets.token_hex(4)}"}
    if tier == "1K":
        body["size"] = "1024x1024"
    else:
        body.update(aspect_ratio=rng.choice(RATIOS), quality=tier)
    return body


def make_plan(rng: random.Random, label: str) -> list[Call]:
    """200 calls: 50 carry an Idempotency-Key (28 keys, some sent 2-3 times with the same body),
    150 do not; exactly half are async; users are picked at random."""
    calls: list[Call] = []
    asyncs = [True] * (REQUESTS // 2) + [False] * (REQUESTS - REQUESTS // 2)
    rng.shuffle(asyncs)
    slot = 0
    for repeats, keys in KEY_REPEATS.items():
        for _ in range(keys):
            user = rng.randrange(USERS)
            key = f"{label}-{secrets.token_hex(6)}-x{repeats}"
            body = make_body(rng, label, len(calls), asyncs[slot])
            for _ in range(repeats):
                calls.append(Call(len(calls), user, dict(body), key, 0.0))
                slot += 1
    while len(calls) < REQUESTS:
        calls.append(Call(len(calls), rng.randrange(USERS),
                          make_body(rng, label, len(calls), asyncs[slot]), None, 0.0))
        slot += 1
    # Copies of a key sent twice start at the same moment (they race to be accepted); of a key
    # sent three times the first two are spread and the third comes late (a replay of a
    # generation that is final by then, or nearly).
    copies: Counter[str] = Counter()
    first_delay: dict[str, float] = {}
    for call in calls:
        call.delay = rng.uniform(0, START_SPREAD_S)
        key = call.idempotency_key
        if key is None:
            continue
        copies[key] += 1
        if key.endswith("-x2"):
            call.delay = first_delay.setdefault(key, call.delay)
        elif key.endswith("-x3") and copies[key] == 3:
            call.delay = START_SPREAD_S + rng.uniform(*LATE_REPLAY_S)
    return calls


def planned_cost(calls: list[Call], user: int) -> int:
    """What the user's requests would cost if all were accepted (a key counts once)."""
    seen: set[str] = set()
    total = 0
    for call in calls:
        if call.user != user or (call.idempotency_key and call.idempotency_key in seen):
            continue
        if call.idempotency_key:
            seen.add(call.idempotency_key)
        total += call.credits_requested
    return total


async def make_accounts(prod_env: dict[str, str], grants: list[int]) -> list[Account]:
    """Users, grants and keys, written the way the CLI writes them (in-process: 16 CLI processes
    would cost ~10 s of the 2 shared cores)."""
    settings = settings_from_env(prod_env)
    made = [await create_account(settings, amount, key_name="load") for amount in grants]
    return [Account(a.user_id, a.key, amount) for a, amount in zip(made, grants, strict=True)]


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Samples:
    api: int = 0
    sql: int = 0
    problems: list[str] = field(default_factory=list)
    low: dict[str, int] = field(default_factory=dict)


async def sample_balances(http: httpx2.AsyncClient, base: str, pg_url: str,
                          accounts: list[Account], stop: asyncio.Event, out: Samples) -> None:
    """Until `stop`: every user's balance through the API, and users.credits next to the sum of
    its ledger in one SQL statement (one snapshot): never negative, never above the grant, and
    always reconciled with the ledger."""
    ids = [a.user_id for a in accounts]
    granted = {a.user_id: a.granted for a in accounts}
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        while not stop.is_set():
            answers = await asyncio.gather(*(
                http.get(f"{base}/api/v1/credits", headers=bearer(a.key)) for a in accounts),
                return_exceptions=True)
            for account, answer in zip(accounts, answers, strict=True):
                if isinstance(answer, BaseException):
                    out.problems.append(f"GET /credits raised {answer!r}")
                    continue
                if answer.status_code == 503 and shed(answer.json()):
                    continue
                if answer.status_code != 200:
                    out.problems.append(f"GET /credits: {answer.status_code} {answer.text[:200]}")
                    continue
                value = answer.json()["credits"]
                out.api += 1
                out.low[account.user_id] = min(value, out.low.get(account.user_id, value))
                if not 0 <= value <= account.granted:
                    out.problems.append(f"API balance of {account.user_id} is {value} "
                                        f"(granted {account.granted})")
            rows = await conn.fetch(
                "SELECT u.id, u.credits, COALESCE(SUM(l.amount), 0) AS ledger"
                " FROM users u LEFT JOIN credit_ledger l ON l.user_id = u.id"
                " WHERE u.id = ANY($1::text[]) GROUP BY u.id, u.credits", ids)
            for row in rows:
                out.sql += 1
                if not 0 <= row["credits"] <= granted[row["id"]] or row["credits"] != row["ledger"]:
                    out.problems.append(f"users.credits of {row['id']} is {row['credits']}, "
                                        f"ledger {row['ledger']}, granted {granted[row['id']]}")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def error_of(call: Call) -> dict[str, Any] | None:
    if isinstance(call.answer, dict) and isinstance(call.answer.get("error"), dict):
        return call.answer["error"]
    return None


async def fetch_final(http: httpx2.AsyncClient, base: str, key: str, generation_id: str,
                      deadline: float, problems: list[str],
                      call: Call | None = None) -> dict[str, Any] | None:
    """GET the generation until it is final (None if the deadline passes first). Anything but
    a 200 is noted in `problems`; a GET is safe to repeat, so a transport error is retried, and
    so is a 503 (shed load), which is no problem."""
    while True:
        try:
            response = await http.get(f"{base}/api/v1/generations/{generation_id}",
                                      headers=bearer(key))
        except httpx2.TransportError as exc:
            problems.append(f"GET {generation_id}: {type(exc).__name__}: {exc}")
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2)
            continue
        if call is not None:
            call.polls += 1
        if response.status_code == 503 and shed(response.json()) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            continue
        if response.status_code != 200:
            problems.append(f"GET {generation_id}: {response.status_code} {response.text[:200]}")
            return None
        body = response.json()
        if body["status"] in FINAL:
            return body
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(POLL_INTERVAL_S * random.uniform(0.8, 1.2))


async def one_client(http: httpx2.AsyncClient, base: str, account: Account, call: Call,
                     deadline: float, problems: list[str]) -> None:
    """Submit one request; an accepted async one (or a replay still in progress) is then polled
    until it is final."""
    await asyncio.sleep(call.delay)
    headers = bearer(account.key)
    if call.idempotency_key:
        headers["Idempotency-Key"] = call.idempotency_key
    started = time.perf_counter()
    try:
        response = await http.post(f"{base}/api/v1/images/generations", json=call.body,
                                   headers=headers)
    except httpx2.HTTPError as exc:
        call.transport_error = f"{type(exc).__name__}: {exc}"
        return
    call.latency = time.perf_counter() - started
    call.status = response.status_code
    call.text = response.text[:300]
    call.location = response.headers.get("location")
    try:
        call.answer = response.json()
    except ValueError:
        call.answer = None
    if call.status in (200, 202) and isinstance(call.answer, dict):
        call.generation_id = call.answer.get("id")
    elif call.status == 500 and (error_of(call) or {}).get("code") == "generationFailed":
        call.generation_id = error_of(call).get("generation_id")
    if call.status == 202 and call.generation_id:
        call.final = await fetch_final(http, base, account.key, call.generation_id, deadline,
                                       problems, call)


def shed(body: Any) -> bool:
    """A 503 in the envelope: the server shedding load."""
    return isinstance(body, dict) and (body.get("error") or {}).get("code") == "serviceUnavailable"


async def find_shed_generations(pg_url: str, calls: list[Call],
                                accounts: list[Account]) -> None:
    """A request answered 503 may have been accepted before the answer failed: its generation,
    found by the request's prompt (unique to it, or to its Idempotency-Key's copies), is then
    the request's."""
    answered_503 = [c for c in calls if c.status == 503 and not c.generation_id]
    if not answered_503:
        return
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT id, user_id, prompt FROM generations "
                                "WHERE user_id = ANY($1::text[])", [a.user_id for a in accounts])
    finally:
        await conn.close()
    by_prompt = {(r["user_id"], r["prompt"]): r["id"] for r in rows}
    for call in answered_503:
        call.generation_id = by_prompt.get((accounts[call.user].user_id, call.body["prompt"]))


@dataclass
class Outcome:
    calls: list[Call]
    accounts: list[Account]
    samples: Samples
    finals: dict[str, dict[str, Any]]
    owner: dict[str, int]
    poll_problems: list[str]


async def run_load(base: str, pg_url: str, prod_env: dict[str, str], label: str,
                   seed: int, openai_fake) -> Outcome:
    rng = random.Random(seed)
    calls = make_plan(rng, label)
    grants = [max(16, round(GRANT_SHARE * planned_cost(calls, u))) for u in range(USERS)]
    accounts = await make_accounts(prod_env, grants)
    # keepalive_expiry below uvicorn's 5 s keep-alive, so that no request is sent on a
    # connection the server is closing at that moment (a client-side race, not the server's).
    limits = httpx2.Limits(max_connections=REQUESTS + 50, max_keepalive_connections=REQUESTS + 50,
                           keepalive_expiry=1.0)
    async with httpx2.AsyncClient(limits=limits, timeout=120) as http, \
            httpx2.AsyncClient(timeout=30) as sampler_http:
        samples = Samples()
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            sample_balances(sampler_http, base, pg_url, accounts, stop, samples))
        deadline = time.monotonic() + TOTAL_WAIT_S
        poll_problems: list[str] = []

        async def client(call: Call) -> None:
            await one_client(http, base, accounts[call.user], call, deadline, poll_problems)

        try:
            await asyncio.wait_for(asyncio.gather(*(client(c) for c in calls)),
                                   TOTAL_WAIT_S + 30)
        except TimeoutError:
            stuck = [c.index for c in calls if c.status is None and not c.transport_error]
            pytest.fail(f"{label}: the load did not finish within {TOTAL_WAIT_S + 30:.0f} s "
                        f"(a hang); requests without an answer: {stuck[:20]}")
        finally:
            stop.set()
            await sampler
        await find_shed_generations(pg_url, calls, accounts)
        # The final state of every accepted generation, from the API (sync 200/500 answers are
        # final already; this is also where usage.credits comes from).
        owner = {c.generation_id: c.user for c in calls if c.generation_id}
        finals: dict[str, dict[str, Any]] = {}
        guard = asyncio.Semaphore(16)

        async def final_of(generation_id: str) -> None:
            async with guard:
                body = await fetch_final(http, base, accounts[owner[generation_id]].key,
                                         generation_id, deadline, poll_problems)
            if body is not None:
                finals[generation_id] = body

        await asyncio.gather(*(final_of(g) for g in owner))
    return Outcome(calls, accounts, samples, finals, owner, poll_problems)


# --- the checks -------------------------------------------------------------------------------


def check_responses(out: Outcome) -> list[str]:
    """Status codes, error envelopes and idempotency as the clients saw them."""
    problems = []
    for call in out.calls:
        where = f"request {call.index} ({'async' if call.is_async else 'sync'}, " \
                f"key={call.idempotency_key})"
        if call.transport_error:
            problems.append(f"{where}: transport error {call.transport_error}")
            continue
        error = error_of(call)
        if call.status in (200, 202):
            body = call.answer
            if not isinstance(body, dict) or body.get("object") != "image_generation":
                problems.append(f"{where}: {call.status} without a generation: {call.text}")
                continue
            expected = ("succeeded",) if call.status == 200 else ("queued", "running")
            if body["status"] not in expected:
                problems.append(f"{where}: {call.status} with status {body['status']}")
            if body["usage"]["credits_requested"] != call.credits_requested:
                problems.append(f"{where}: credits_requested {body['usage']} "
                                f"!= {call.credits_requested}")
            if not isinstance(body.get("balance"), dict) or body["balance"]["credits"] < 0:
                problems.append(f"{where}: POST balance {body.get('balance')}")
            if call.status == 202 and call.location != body["poll_url"]:
                problems.append(f"{where}: 202 Location {call.location} != {body['poll_url']}")
            if call.status == 202 and call.final is None:
                problems.append(f"{where}: {call.generation_id} not final in {TOTAL_WAIT_S} s")
        elif error is None or set(call.answer) != {"error"} or \
                not isinstance(error.get("message"), str):
            problems.append(f"{where}: {call.status} without the error envelope: {call.text}")
        elif call.status == 402:
            if error["code"] != "insufficientCredits":
                problems.append(f"{where}: 402 with code {error['code']}")
        elif call.status == 409:
            if error["code"] != "idempotencyConflict" or not call.idempotency_key:
                problems.append(f"{where}: 409 {error['code']} (Idempotency-Key "
                                f"{call.idempotency_key})")
        elif call.status == 503:
            if error["code"] != "serviceUnavailable":
                problems.append(f"{where}: 503 {error['code']}")
        elif call.status == 500:
            if error["code"] != "generationFailed" or not call.generation_id:
                problems.append(f"{where}: 500 {error.get('code')}: {error.get('message')}")
        else:
            problems.append(f"{where}: unexpected status {call.status}: {call.text}")
    # A key: every answer that carries a generation names the same one.
    by_key: dict[str, set[str]] = defaultdict(set)
    for call in out.calls:
        if call.idempotency_key and call.generation_id:
            by_key[call.idempotency_key].add(call.generation_id)
    for key, ids in by_key.items():
        if len(ids) != 1:
            problems.append(f"Idempotency-Key {key} answered with generations {sorted(ids)}")
    return problems


def check_generations(out: Outcome) -> list[str]:
    """The final generation objects (from GET): status, images, usage."""
    problems = []
    for generation_id in out.owner:
        body = out.finals.get(generation_id)
        if body is None:
            problems.append(f"{generation_id} is not final after {TOTAL_WAIT_S} s (a hang)")
            continue
        price = PRICES[body["quality"]]
        requested, charged = body["usage"]["credits_requested"], body["usage"]["credits"]
        if requested != body["n"] * price:
            problems.append(f"{generation_id}: credits_requested {requested} for "
                            f"n={body['n']} at {body['quality']}")
        if body["status"] == "succeeded":
            if not 1 <= len(body["images"]) <= body["n"] or \
                    charged != len(body["images"]) * price:
                problems.append(f"{generation_id}: succeeded with {len(body['images'])} of "
                                f"{body['n']} images, charged {charged}")
        elif charged != 0 or (body["error"] or {}).get("code") != "generationFailed":
            problems.append(f"{generation_id}: failed, charged {charged}, error {body['error']}")
    return problems


async def balance_of(http: httpx2.AsyncClient, base: str, key: str) -> int:
    """GET /credits, again while the server sheds load (503)."""
    async def answered() -> dict | None:
        response = await http.get(f"{base}/api/v1/credits", headers=bearer(key))
        body = response.json()
        if response.status_code == 503 and shed(body):
            return None
        assert response.status_code == 200, response.text
        return body

    body = await wait_until_async(answered, timeout=30, interval=0.2, what="GET /credits")
    return body["credits"]


async def check_money(base: str, pg_url: str, out: Outcome) -> list[str]:
    """The equations, per user and per generation, from the API and from the database."""
    problems = []
    ids = [a.user_id for a in out.accounts]
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        generations = await conn.fetch(
            "SELECT id, user_id, status, prompt, idempotency_key, credits_requested,"
            " credits_refunded FROM generations WHERE user_id = ANY($1::text[])", ids)
        ledger = await conn.fetch(
            "SELECT user_id, lot_id, generation_id, kind, amount FROM credit_ledger"
            " WHERE user_id = ANY($1::text[]) ORDER BY id", ids)
        balances = dict(await conn.fetch(
            "SELECT id, credits FROM users WHERE id = ANY($1::text[])", ids))
    finally:
        await conn.close()

    # Every generation in the database is one a client was told about, and vice versa.
    in_db = {row["id"]: row for row in generations}
    if set(in_db) != set(out.owner):
        problems.append(f"generations in the database {len(in_db)} != distinct accepted ids "
                        f"{len(out.owner)}; unknown: {sorted(set(in_db) - set(out.owner))[:5]}, "
                        f"missing: {sorted(set(out.owner) - set(in_db))[:5]}")
    for generation_id, row in in_db.items():
        body = out.finals.get(generation_id)
        if body and (row["status"] != body["status"] or
                     row["credits_refunded"] != body["usage"]["credits_requested"]
                     - body["usage"]["credits"]):
            problems.append(f"{generation_id}: database {row['status']}/refunded "
                            f"{row['credits_refunded']} disagrees with the API {body['usage']}")

    # A 402 wrote nothing: no generation carries the prompt of a request that only got 402s.
    prompts = Counter(row["prompt"] for row in generations)
    answered: dict[str, set[int | None]] = defaultdict(set)
    for call in out.calls:
        answered[call.body["prompt"]].add(call.status)
    for prompt, statuses in answered.items():
        if statuses <= {402} and prompts[prompt]:
            problems.append(f"a request answered 402 wrote {prompts[prompt]} generation(s)")

    # One generation and one charge per Idempotency-Key.
    per_key = Counter((row["user_id"], row["idempotency_key"]) for row in generations
                      if row["idempotency_key"])
    keys = {(out.accounts[c.user].user_id, c.idempotency_key) for c in out.calls
            if c.idempotency_key}
    for user_id, key in keys:
        accepted = any(c.generation_id for c in out.calls if c.idempotency_key == key)
        if per_key[(user_id, key)] != (1 if accepted else 0):
            problems.append(f"Idempotency-Key {key}: {per_key[(user_id, key)]} generations "
                            f"(accepted: {accepted})")
    charges_of: dict[str, list[Any]] = defaultdict(list)
    refunds_of: dict[str, list[Any]] = defaultdict(list)
    for row in ledger:
        if row["kind"] == "grant" and row["generation_id"] is None:
            continue
        if row["kind"] == "charge" and row["generation_id"] in in_db:
            charges_of[row["generation_id"]].append(row)
        elif row["kind"] == "refund" and row["generation_id"] in in_db:
            refunds_of[row["generation_id"]].append(row)
        else:
            problems.append(f"unexpected ledger row {dict(row)}")
    for generation_id, row in in_db.items():
        charges, refunds = charges_of[generation_id], refunds_of[generation_id]
        if len(charges) != 1 or -sum(r["amount"] for r in charges) != row["credits_requested"]:
            problems.append(f"{generation_id}: charged {[r['amount'] for r in charges]} "
                            f"for {row['credits_requested']} requested (one lot: one charge)")
        for kind, rows in (("charge", charges), ("refund", refunds)):
            lots = Counter(r["lot_id"] for r in rows)
            if any(count > 1 for count in lots.values()):
                problems.append(f"{generation_id}: more than one {kind} on one lot: {dict(lots)}")
        body = out.finals.get(generation_id)
        if body is not None:
            owed = body["usage"]["credits_requested"] - body["usage"]["credits"]
            if sum(r["amount"] for r in refunds) != owed:
                problems.append(f"{generation_id} ({body['status']}, {len(body['images'])}/"
                                f"{body['n']} images): refunds {[r['amount'] for r in refunds]}"
                                f" != requested - charged = {owed}")

    # Per user: balance = granted - sum of final charges, through the API and in the database.
    async with httpx2.AsyncClient(timeout=30) as http:
        for index, account in enumerate(out.accounts):
            api_balance = await balance_of(http, base, account.key)
            charged = sum(body["usage"]["credits"] for gid, body in out.finals.items()
                          if out.owner[gid] == index)
            in_ledger = sum(r["amount"] for r in ledger if r["user_id"] == account.user_id)
            expected = account.granted - charged
            if not api_balance == balances[account.user_id] == in_ledger == expected:
                problems.append(f"user {index}: API balance {api_balance}, users.credits "
                                f"{balances[account.user_id]}, ledger {in_ledger}, but granted "
                                f"{account.granted} - charged {charged} = {expected}")
    return problems


async def load_and_check(label: str, seed: int, served: Served, pg_url: str,
                         prod_env: dict[str, str], openai_fake) -> Outcome:
    base = served.base
    out = await run_load(base, pg_url, prod_env, label, seed, openai_fake)
    problems = out.samples.problems[:10] + out.poll_problems[:10]
    answered_503 = sum(1 for c in out.calls if c.status == 503)
    if answered_503 >= len(out.calls) // 2:
        problems.append(f"{answered_503} of {len(out.calls)} requests answered 503")
    if out.samples.api < 2 * USERS or out.samples.sql < 2 * USERS:
        problems.append(f"too few balance samples during the load: {out.samples}")
    problems += check_responses(out)
    problems += check_generations(out)
    problems += await check_money(base, pg_url, out)
    problems += [f"audit: {p}" for p in await audit_problems(settings_from_env(prod_env))]
    answers = Counter((c.status, (error_of(c) or {}).get("code")) for c in out.calls)
    assert not problems, (f"{len(problems)} problem(s); answers {dict(answers)}; server log "
                          f"{served.log}:\n" + "\n".join(problems[:40]))
    return out


# --- the tests --------------------------------------------------------------------------------


async def test_money_adds_up_under_200_concurrent_requests(
        money_api: Served, worker, pg_url: str, prod_env: dict[str, str], openai_fake) -> None:
    openai_fake.configure(latency_ms=50)
    out = await load_and_check("clean", 20260430, money_api, pg_url, prod_env, openai_fake)
    statuses = Counter(c.status for c in out.calls)
    # The upstream never fails here: every accepted generation succeeds in full.
    failed = [g["id"] for g in out.finals.values()
              if g["status"] != "succeeded" or len(g["images"]) != g["n"]]
    assert not failed, f"generations not fully succeeded with a healthy upstream: {failed[:5]}"
    # The balances were meant to run short: the load must have produced 402s and acceptances.
    assert statuses[402] > 0 and len(out.owner) > 0, statuses


async def test_money_adds_up_when_the_upstream_fails_30_percent(
        money_api: Served, worker, pg_url: str, prod_env: dict[str, str], openai_fake) -> None:
    openai_fake.configure(latency_ms=50, fail_rate=0.3, fewer_rate=0.2, seed=424242)
    out = await load_and_check("upstream-30%-failing", 20260501, money_api, pg_url,
                               prod_env, openai_fake)
    finals = list(out.finals.values())
    failed = [g for g in finals if g["status"] == "failed"]
    partial = [g for g in finals if g["status"] == "succeeded" and len(g["images"]) < g["n"]]
    # Both refund paths were exercised (a failure refunds all, a partial result the missing).
    assert failed and partial, (len(failed), len(partial))
    sync_failed = [c for c in out.calls if c.status == 500 and c.generation_id]
    async_failed = [c for c in out.calls if c.is_async and c.final
                    and c.final["status"] == "failed"]
    assert sync_failed or async_failed
