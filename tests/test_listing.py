"""Listing and cancelling generations, the ledger, and Prefer (contract section 11)."""

import asyncio
import secrets
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.catalog.catalog import load_catalog
from app.db import utcnow
from app.generations import jobs
from app.generations import service as generations
from app.generations.request import parse_input
from app.keys.service import Principal
from app.models import CreditLedgerEntry, Generation, GenerationStatus, LedgerKind, User
from tests.conftest import Client, bearer

BASE = {"model": "gpt-image-2", "prompt": "a lighthouse at dusk", "size": "1024x1024"}


async def insert_generations(client: Client, user: User, count: int, *,
                             status: GenerationStatus = GenerationStatus.SUCCEEDED,
                             same_moment: bool = False, ago: timedelta = timedelta(0)
                             ) -> list[str]:
    """Rows as the service would leave them (no job, no charge), `ago` in the past: for
    paging only."""
    ids = []
    now = utcnow() - ago
    async with client.session() as session, session.begin():
        for i in range(count):
            at = now if same_moment else now + timedelta(milliseconds=i)
            row = Generation(id="gen_" + secrets.token_hex(12), user_id=user.id,
                             status=status, model="gpt-image-2", provider_model="gpt-image-2",
                             prompt=f"p{i}", size="1024x1024", aspect_ratio="1:1",
                             quality="1K", render_quality="auto", output_format="png", n=1,
                             credits_requested=8, created_at=at, completed_at=at)
            session.add(row)
            ids.append(row.id)
    return ids


async def newest_first(client: Client, user: User) -> list[str]:
    async with client.session() as session:
        return list(await session.scalars(
            select(Generation.id).where(Generation.user_id == user.id)
            .order_by(Generation.created_at.desc(), Generation.id.desc())))


async def pages(client: Client, key: str, query: str = "", limit: int = 17,
                between_pages=None) -> list[str]:
    seen, cursor, has_more = [], None, True
    while has_more:
        after = f"&starting_after={cursor}" if cursor else ""
        answer = await client.http.get(f"/api/v1/generations?limit={limit}{after}{query}",
                                       headers=bearer(key))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "list" and len(body["data"]) <= limit
        seen += [g["id"] for g in body["data"]]
        has_more = body["has_more"]
        cursor = seen[-1] if seen else None
        if between_pages is not None:
            await between_pages()
    return seen


async def test_paging_returns_each_generation_once_in_order_while_new_ones_arrive(
        any_db: Client) -> None:
    user, key = await any_db.user_with_key(0)
    await insert_generations(any_db, user, 150, ago=timedelta(hours=1))
    await insert_generations(any_db, user, 100, same_moment=True,  # ties broken by id
                             ago=timedelta(hours=1))
    expected = await newest_first(any_db, user)

    async def more() -> None:
        await insert_generations(any_db, user, 3)  # newer than every cursor: never seen

    seen = await pages(any_db, key, between_pages=more)
    assert seen == expected and len(seen) == 250


async def test_paging_backwards_and_filters(any_db: Client) -> None:
    user, key = await any_db.user_with_key(0)
    done = await insert_generations(any_db, user, 30)
    queued = await insert_generations(any_db, user, 5, status=GenerationStatus.QUEUED)
    everything = await newest_first(any_db, user)
    assert await pages(any_db, key, "&status=queued", limit=2) == queued[::-1]
    assert await pages(any_db, key, "&status=succeeded", limit=7) == done[::-1]
    middle = everything[20]
    above = (await any_db.http.get(f"/api/v1/generations?limit=5&ending_before={middle}",
                                   headers=bearer(key))).json()
    assert [g["id"] for g in above["data"]] == everything[15:20] and above["has_more"]
    top = (await any_db.http.get(
        f"/api/v1/generations?limit=5&ending_before={everything[3]}", headers=bearer(key))).json()
    assert [g["id"] for g in top["data"]] == everything[:3] and not top["has_more"]


async def test_listing_refuses_bad_parameters_and_other_users_cursors(any_db: Client) -> None:
    user, key = await any_db.user_with_key(0)
    other, other_key = await any_db.user_with_key(0)
    (theirs,) = await insert_generations(any_db, other, 1)
    for query, status in (("limit=0", 400), ("limit=101", 400), ("status=done", 400),
                          (f"starting_after={theirs}", 404), ("starting_after=gen_%00", 404),
                          ("ending_before=nope", 404)):
        answer = await any_db.http.get(f"/api/v1/generations?{query}", headers=bearer(key))
        assert answer.status_code == status, (query, answer.text)
        assert answer.json()["error"]["code"] == {400: "invalid_request", 404: "notFound"}[status]
    empty = await any_db.http.get("/api/v1/generations", headers=bearer(key))
    assert empty.json() == {"object": "list", "data": [], "has_more": False}


async def test_a_listed_generation_is_what_get_returns(any_db: Client) -> None:
    _, key = await any_db.user_with_key(16)
    made = (await any_db.http.post("/api/v1/images/generations", json={**BASE, "n": 2},
                                   headers=bearer(key))).json()
    listed = (await any_db.http.get("/api/v1/generations", headers=bearer(key))).json()
    got = (await any_db.http.get(f"/api/v1/generations/{made['id']}", headers=bearer(key))).json()
    strip = lambda g: {**g, "images": [{**i, "url": i["url"].split("?")[0]}  # noqa: E731
                                       for i in g["images"]]}
    assert [strip(g) for g in listed["data"]] == [strip(got)]


# --- cancel ---------------------------------------------------------------------------------

async def queued_generation(client: Client, user: User, key_id: str) -> str:
    """A queued generation, charged, whose job was not enqueued (as between its commit and
    its enqueue)."""
    wanted = parse_input(BASE, load_catalog(), reference_count=0)
    rt = client.app.state.runtime
    async with rt.transaction() as session:
        accepted = await generations.accept(
            session, Principal(key_id=key_id, user=user), wanted,
            generation_id="gen_" + secrets.token_hex(12), references=[],
            fingerprint=secrets.token_hex(8), idempotency_key=None, settings=rt.settings)
    return accepted.generation.id


async def key_id_of(client: Client, key: str) -> str:
    from app.keys.service import hash_key
    from app.models import ApiKey

    async with client.session() as session:
        return str(await session.scalar(select(ApiKey.id).where(
            ApiKey.key_hash == hash_key(key, client.app.state.runtime.secret))))


async def refunds_of(client: Client, generation_id: str) -> int:
    async with client.session() as session:
        return int(await session.scalar(
            select(func.count(func.distinct(CreditLedgerEntry.movement_id))).where(
                CreditLedgerEntry.generation_id == generation_id,
                CreditLedgerEntry.kind == LedgerKind.REFUND)) or 0)


async def test_cancel_a_queued_generation(any_db: Client) -> None:
    user, key = await any_db.user_with_key(8)
    generation_id = await queued_generation(any_db, user, await key_id_of(any_db, key))
    answer = await any_db.http.post(f"/api/v1/generations/{generation_id}/cancel",
                                    headers=bearer(key))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "canceled" and body["usage"]["credits"] == 0
    assert body["balance"]["credits"] == 8 and body["completed_at"] is not None
    again = await any_db.http.post(f"/api/v1/generations/{generation_id}/cancel",
                                   headers=bearer(key))
    assert again.status_code == 409 and again.json()["error"]["code"] == "notCancelable"
    await jobs.run_generation(any_db.app.state.runtime, generation_id, 1)  # a no-op now
    got = (await any_db.http.get(f"/api/v1/generations/{generation_id}",
                                 headers=bearer(key))).json()
    assert got["status"] == "canceled" and await refunds_of(any_db, generation_id) == 1
    assert (await any_db.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"] == 8


async def test_cancel_refuses_running_final_and_other_users(any_db: Client) -> None:
    user, key = await any_db.user_with_key(8)
    _, other_key = await any_db.user_with_key(0)
    generation_id = await queued_generation(any_db, user, await key_id_of(any_db, key))
    assert (await any_db.http.post(f"/api/v1/generations/{generation_id}/cancel",
                                   headers=bearer(other_key))).status_code == 404
    async with any_db.app.state.runtime.transaction() as session:
        assert await generations.claim(session, generation_id, 1) is not None  # running
    running = await any_db.http.post(f"/api/v1/generations/{generation_id}/cancel",
                                     headers=bearer(key))
    assert running.status_code == 409 and running.json()["error"]["code"] == "notCancelable"
    assert (await any_db.http.post("/api/v1/generations/gen_nope/cancel",
                                   headers=bearer(key))).status_code == 404


async def test_cancel_racing_the_workers_claim_refunds_exactly_once(pg: Client) -> None:
    user, key = await pg.user_with_key(50 * 8)
    key_id = await key_id_of(pg, key)
    rt = pg.app.state.runtime
    outcomes = {"canceled": 0, "ran": 0}
    for _ in range(50):
        generation_id = await queued_generation(pg, user, key_id)
        canceled, _ = await asyncio.gather(
            pg.http.post(f"/api/v1/generations/{generation_id}/cancel", headers=bearer(key)),
            jobs.run_generation(rt, generation_id, 1))
        got = (await pg.http.get(f"/api/v1/generations/{generation_id}",
                                 headers=bearer(key))).json()
        if canceled.status_code == 200:
            assert got["status"] == "canceled" and await refunds_of(pg, generation_id) == 1
            outcomes["canceled"] += 1
        else:
            assert canceled.json()["error"]["code"] == "notCancelable"
            assert got["status"] == "succeeded" and await refunds_of(pg, generation_id) == 0
            outcomes["ran"] += 1
    balance = (await pg.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]
    assert balance == 50 * 8 - 8 * outcomes["ran"]


# --- the ledger -----------------------------------------------------------------------------

async def ledger_pages(client: Client, key: str, limit: int = 23, between=None) -> list[dict]:
    entries, cursor, has_more = [], None, True
    while has_more:
        after = f"&starting_after={cursor}" if cursor else ""
        body = (await client.http.get(f"/api/v1/credits/ledger?limit={limit}{after}",
                                      headers=bearer(key))).json()
        entries += body["data"]
        has_more, cursor = body["has_more"], entries[-1]["id"] if entries else None
        if between is not None:
            await between()
    return entries


async def test_the_ledger_pages_every_movement_once_with_consistent_balances(
        any_db: Client) -> None:
    from app.credits import service as credits

    user, key = await any_db.user_with_key(0)
    rt = any_db.app.state.runtime
    for amount in range(1, 241):
        async with rt.transaction() as session:
            await credits.grant(session, user.id, amount)
    for _ in range(5):
        made = await any_db.http.post("/api/v1/images/generations", json=BASE,
                                      headers=bearer(key))
        assert made.status_code == 200

    async def grant_more() -> None:  # newer than every cursor: never in a later page
        async with rt.transaction() as session:
            await credits.grant(session, user.id, 1000)

    entries = await ledger_pages(any_db, key, between=grant_more)
    assert len(entries) == 245 and len({e["id"] for e in entries}) == 245
    assert [e["kind"] for e in entries[:5]] == ["charge"] * 5
    assert all(e["object"] == "credit_movement" for e in entries)
    for newer, older in zip(entries, entries[1:], strict=False):
        assert newer["balance_after"] - newer["credits"] == older["balance_after"]
    assert entries[-1]["balance_after"] == entries[-1]["credits"] == 1
    assert entries[0]["generation_id"] is not None and entries[0]["credits"] == -8


async def test_a_partial_refund_is_one_movement_however_many_lots(pg: Client,
                                                                  openai_fake) -> None:
    """Charges and refunds spread over several lots are one movement each."""
    from app.credits import service as credits

    user, key = await pg.user_with_key(0)
    rt = pg.app.state.runtime
    for amount in (3, 5, 9):  # 17 credits in three lots; a 16-credit charge takes all three
        async with rt.transaction() as session:
            await credits.grant(session, user.id, amount)
    generation_id = await queued_generation_n(pg, user, await key_id_of(pg, key), n=2)
    async with rt.transaction() as session:
        await generations.finish_failed(session, generation_id, "upstream down")
    entries = (await pg.http.get("/api/v1/credits/ledger", headers=bearer(key))).json()["data"]
    assert [(e["kind"], e["credits"], e["balance_after"]) for e in entries] == [
        ("refund", 16, 17), ("charge", -16, 1), ("grant", 9, 17), ("grant", 5, 8),
        ("grant", 3, 3)]


async def queued_generation_n(client: Client, user: User, key_id: str, n: int) -> str:
    wanted = parse_input({**BASE, "n": n}, load_catalog(), reference_count=0)
    rt = client.app.state.runtime
    async with rt.transaction() as session:
        accepted = await generations.accept(
            session, Principal(key_id=key_id, user=user), wanted,
            generation_id="gen_" + secrets.token_hex(12), references=[],
            fingerprint=secrets.token_hex(8), idempotency_key=None, settings=rt.settings)
    return accepted.generation.id


# --- Prefer ---------------------------------------------------------------------------------

async def test_prefer_wait_answers_202_when_the_wait_ends(prod: Client, openai_fake) -> None:
    openai_fake.configure(latency_ms=3000)
    _, key = await prod.user_with_key(8)
    started = time.monotonic()
    answer = await prod.http.post("/api/v1/images/generations", json=BASE,
                                  headers={**bearer(key), "Prefer": "wait=1"})
    assert answer.status_code == 202, answer.text
    assert 0.9 < time.monotonic() - started < 2.5
    assert answer.headers["preference-applied"] == "wait=1"
    assert answer.headers["location"] == answer.json()["poll_url"]


async def test_prefer_respond_async(any_db: Client) -> None:
    _, key = await any_db.user_with_key(8)
    answer = await any_db.http.post("/api/v1/images/generations", json=BASE,
                                    headers={**bearer(key), "Prefer": "foo, Respond-Async"})
    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    assert answer.headers["preference-applied"] == "respond-async"
    plain = await any_db.http.post("/api/v1/images/generations", json={**BASE, "n": 1},
                                   headers={**bearer(key), "Prefer": "wait=abc"})
    assert plain.status_code == 402 and "preference-applied" not in plain.headers


@pytest.mark.parametrize("header, expected", [
    ("respond-async", (True, None)), ("wait=5", (False, 5)), ("WAIT=7, respond-async", (True, 7)),
    ("wait=x", (False, None)), ('wait="3"', (False, 3)), ("handling=strict", (False, None)),
])
def test_prefer_parsing(header: str, expected: tuple[bool, int | None]) -> None:
    from app.generations.prefer import parse

    got = parse([header])
    assert (got.respond_async, got.wait_s) == expected


# --- the README's examples, as written ---------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from tests.test_openai_sdk import serve

    folder = tmp_path_factory.mktemp("listing")
    yield from serve({"GIH_DATABASE_URL": f"sqlite:///{folder}/gih.db",
                      "GIH_LOCAL_STORAGE_DIR": str(folder / "images")}, folder)


def test_readme_listing_examples_run_as_written(served, tmp_path) -> None:
    import json
    import subprocess

    from tests.test_openai_sdk import readme_block

    key = served.account(100)
    script = readme_block("listing-examples", "sh").replace("http://127.0.0.1:8000",
                                                             served.base)
    marked = script.replace("\ncurl ", "\necho; echo '@@@'; curl ")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "echo '@@@'; " + marked],
                          cwd=tmp_path, env={**served.env, "GIH_KEY": key},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed, canceled, ledger = (json.loads(part) for part in done.stdout.split("@@@")
                                if part.strip())
    assert listed == {"object": "list", "data": [], "has_more": False}
    # The embedded default runs the job at once: the cancel finds it running or done.
    assert canceled["error"]["code"] == "notCancelable" or canceled["status"] == "canceled"
    assert ledger["object"] == "list" and ledger["data"][-1]["kind"] == "grant"
