"""GET /api/v1/credits and GET /api/v1/generations/{id} on PostgreSQL are answered ahead of
FastAPI's router (app/ops/fast_routes.py): the same answers, byte for byte, as the FastAPI routes
they shortcut, errors and HEAD included; and the sync answer read in one statement
(app/generations/reads.py) is the one the session read gives."""

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx2
import pytest
from sqlalchemy import update

from app.credits import service as credits
from app.db import utcnow
from app.errors import NotFound
from app.generations import reads
from app.generations import service as generations
from app.main import create_app
from app.models import ApiKey, CreditLot, Generation, GenerationImage, GenerationStatus, User
from app.ops.fast_routes import FastRoutes
from tests.conftest import Client, bearer, make_settings

PATH = "/api/v1/credits"
GENERATION = "/api/v1/generations/{generation_id}"
FAST_PATHS = (PATH, GENERATION)


@contextlib.asynccontextmanager
async def app_client(pg_url: str, *, fast: bool, router: bool) -> AsyncIterator[Client]:
    """The app with or without its fast routes, with or without FastAPI's routes of them."""
    app = create_app(make_settings(pg_url))
    if not fast:
        app.fast_routes = FastRoutes({})  # type: ignore[attr-defined]
    if not router:
        app.router.routes = [r for r in app.router.routes
                             if getattr(r, "path", "") not in FAST_PATHS]
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Client(app=app, http=http)


@pytest.fixture
async def both(pg_url: str) -> AsyncIterator[tuple[Client, Client]]:
    async with app_client(pg_url, fast=True, router=False) as fast, \
            app_client(pg_url, fast=False, router=True) as slow:
        yield fast, slow


def shown(response: httpx2.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    return response.status_code, response.content, headers


async def same_answer(both: tuple[Client, Client], method: str = "GET",
                      headers: dict[str, str] | None = None, path: str = PATH
                      ) -> httpx2.Response:
    answers = [await client.http.request(method, path, headers=headers) for client in both]
    assert shown(answers[0]) == shown(answers[1])
    assert answers[0].headers["x-request-id"]
    return answers[0]


async def test_the_balance_is_the_routers_byte_for_byte(both) -> None:
    fast, _ = both
    user, key = await fast.user_with_key(100)
    first = await same_answer(both, headers=bearer(key))
    assert first.json() == {"object": "credit_balance", "credits": 100, "account_type": "PRO",
                            "next_expiration": None}
    now = utcnow()
    async with fast.session() as session, session.begin():
        await credits.grant(session, user.id, 7, expires_at=now + timedelta(hours=1))
        await credits.grant(session, user.id, 5, expires_at=now + timedelta(hours=1))
        await credits.grant(session, user.id, 9, expires_at=now + timedelta(days=3))
        lapsing = await credits.grant(session, user.id, 4, expires_at=now + timedelta(hours=2))
    async with fast.session() as session, session.begin():  # expired, not yet written off
        await session.execute(update(CreditLot).where(CreditLot.id == lapsing.id)
                              .values(expires_at=now - timedelta(seconds=1)))
    body = (await same_answer(both, headers=bearer(key))).json()
    assert body["credits"] == 121 and body["next_expiration"]["credits"] == 12
    head = await same_answer(both, "HEAD", headers=bearer(key))
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize("authorization", [None, "", "Basic abc", "Bearer ", "Bearer nope",
                                           "Bearer gih_live_" + "a" * 32])
async def test_bad_credentials_get_the_routers_errors(both, authorization) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = await same_answer(both, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] in ("missingApiKey", "invalidApiKey")


async def test_revoked_expired_and_disabled_get_the_routers_errors(both) -> None:
    fast, _ = both
    cases = []
    for change in ("revoke", "expire", "disable"):
        user, key = await fast.user_with_key(10)
        async with fast.session() as session, session.begin():
            if change == "disable":
                await session.execute(update(User).where(User.id == user.id)
                                      .values(disabled_at=utcnow()))
            else:
                column = "revoked_at" if change == "revoke" else "expires_at"
                await session.execute(update(ApiKey).where(ApiKey.user_id == user.id)
                                      .values({column: utcnow() - timedelta(seconds=1)}))
        cases.append((change, (await same_answer(both, headers=bearer(key))).json()))
    assert [(c, body["error"]["code"]) for c, body in cases] == [
        ("revoke", "invalidApiKey"), ("expire", "expiredApiKey"), ("disable", "invalidApiKey")]


async def test_use_is_recorded_and_counted_under_the_route(both) -> None:
    fast, _ = both
    user, key = await fast.user_with_key(1)
    assert (await fast.http.get(PATH, headers=bearer(key))).status_code == 200
    async with fast.session() as session:
        last_used = await session.scalar(
            ApiKey.__table__.select().with_only_columns(ApiKey.last_used_at)
            .where(ApiKey.user_id == user.id))
    assert last_used is not None
    metrics = (await fast.http.get("/metrics")).text
    assert f'route="{PATH}"' in metrics
    assert (await fast.http.post(PATH, headers=bearer(key))).status_code == 405


async def generate(client: Client, key: str, **fields: object) -> dict:
    body = {"model": "gpt-image-2", "prompt": "a lighthouse at dusk", **fields}
    answer = await client.http.post("/api/v1/images/generations", json=body, headers=bearer(key))
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


async def test_a_generation_is_the_routers_byte_for_byte(both) -> None:
    fast, slow = both
    _, key = await fast.user_with_key(100)
    done = await generate(fast, key, n=2)
    assert done["status"] == "succeeded" and len(done["images"]) == 2
    queued = await generate(fast, key, is_async=True)
    failed = await generate(fast, key)
    async with fast.session() as session, session.begin():
        await session.execute(update(Generation).where(Generation.id == failed["id"]).values(
            status=GenerationStatus.FAILED, error_code="generationFailed",
            error_message="the provider refused", credits_refunded=Generation.credits_requested))
    for generation in (done, queued, failed):
        path = f"/api/v1/generations/{generation['id']}"
        body = (await same_answer(both, headers=bearer(key), path=path)).json()
        assert body["id"] == generation["id"]
    got = (await same_answer(both, headers=bearer(key), path=f"/api/v1/generations/{done['id']}"))
    assert [image["id"] for image in got.json()["images"]] == [
        image["id"] for image in done["images"]]
    assert got.json()["images"] == done["images"]
    head = await same_answer(both, "HEAD", headers=bearer(key),
                             path=f"/api/v1/generations/{done['id']}")
    assert head.status_code == 200 and head.content == b""
    metrics = (await fast.http.get("/metrics")).text
    assert f'route="{GENERATION}"' in metrics


@pytest.mark.parametrize("generation_id", ["gen_doesnotexist", "nope", "gen_" + "a" * 80,
                                           "gen_%C3%A9", "gen_x/cancel", ""])
async def test_unknown_ids_and_other_paths_get_the_routers_answers(both, generation_id) -> None:
    fast, _ = both
    _, key = await fast.user_with_key(1)
    answer = await same_answer(both, headers=bearer(key),
                               path=f"/api/v1/generations/{generation_id}")
    assert answer.status_code in (404, 405), answer.text


async def test_another_users_generation_is_not_found_and_bad_keys_come_first(both) -> None:
    fast, _ = both
    _, owner = await fast.user_with_key(10)
    _, other = await fast.user_with_key(10)
    done = await generate(fast, owner)
    path = f"/api/v1/generations/{done['id']}"
    assert (await same_answer(both, headers=bearer(other), path=path)).status_code == 404
    assert (await same_answer(both, headers=bearer("gih_live_x"), path=path)).status_code == 401
    assert (await same_answer(both, path=path)).status_code == 401


async def test_the_sync_answer_in_one_statement_is_the_session_reads(pg: Client) -> None:
    _, key = await pg.user_with_key(100)
    user = (await pg.user_with_key(0))[0]
    done = await generate(pg, key, n=3)
    runtime = pg.app.state.runtime
    owner = done["id"]
    async with pg.session() as session:
        row = await session.get(Generation, owner)
        assert row is not None
        expected_row, expected_images = await generations.get_for_owner(session, row.id,
                                                                         row.user_id)
        expected_balance = await generations.balance_of(session, row.user_id)
    got_row, got_images, got_balance = await reads.answer_of(runtime, row.id, row.user_id)
    columns = [c.name for c in Generation.__table__.columns]
    assert ({c: getattr(got_row, c) for c in columns}
            == {c: getattr(expected_row, c) for c in columns})
    image_columns = [c.name for c in GenerationImage.__table__.columns]
    assert ([{c: getattr(i, c) for c in image_columns} for i in got_images]
            == [{c: getattr(i, c) for c in image_columns} for i in expected_images])
    assert got_balance == expected_balance
    with pytest.raises(NotFound):
        await reads.answer_of(runtime, row.id, user.id)


POST = "/api/v1/images/generations"
VARYING = ("id", "created_at", "completed_at", "poll_url", "url", "expires_at")


def steady(value: object) -> object:
    """A generation's answer without what differs between two generations of the same request."""
    if isinstance(value, dict):
        return {k: "*" if k in VARYING else steady(v) for k, v in value.items()}
    if isinstance(value, list):
        return [steady(v) for v in value]
    return value


async def posted(client: Client, **request: object) -> tuple[int, object, dict[str, str]]:
    answer = await client.http.post(POST, **request)  # type: ignore[arg-type]
    headers = {k: v for k, v in answer.headers.items() if k not in ("x-request-id", "location")}
    body = steady(answer.json()) if answer.status_code < 400 else answer.content
    if "location" in answer.headers:
        headers["location"] = answer.headers["location"].rsplit("/", 1)[0]
    return answer.status_code, body, headers


@pytest.mark.parametrize("request_", [
    {"json": {"model": "gpt-image-2", "prompt": "a"}},
    {"json": {"model": "gpt-image-2", "prompt": "a", "n": 2, "is_async": True}},
    {"json": {"model": "gpt-image-2", "prompt": "a"}, "headers": {"Prefer": "respond-async"}},
    {"json": {"model": "gpt-image-2", "prompt": "a"}, "headers": {"Prefer": "wait=5"}},
    {"data": {"model": "gpt-image-2", "prompt": "a"}, "files": {"reference_image": (
        "r.png", b"not a png", "image/png")}},
    {"json": {"model": "gpt-image-2", "prompt": ""}},
    {"json": {"model": "no-such-model", "prompt": "a"}},
    {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
    {"json": {"model": "gpt-image-2", "prompt": "a"}, "headers": {"Idempotency-Key": "x" * 300}},
    {"json": {"model": "gpt-image-2", "prompt": "a", "n": 10_000}},
])
async def test_a_post_is_answered_as_the_router_answers_it(both, request_) -> None:
    fast, slow = both
    answers = []
    for client in both:  # a user each: the same balance after
        _, key = await fast.user_with_key(100)
        answers.append(await posted(client, **{
            **request_, "headers": {**bearer(key), **request_.get("headers", {})}}))
    ours, theirs = answers
    assert ours == theirs
    assert ours[0] in (200, 202, 400, 404, 402), ours


async def test_post_errors_of_keys_credits_and_replays_are_the_routers(both) -> None:
    fast, slow = both
    body = {"model": "gpt-image-2", "prompt": "a lighthouse"}
    assert await posted(fast, json=body) == await posted(slow, json=body)  # no key
    refused = []
    for client in both:
        _, poor = await fast.user_with_key(0)
        refused.append(await posted(client, json=body, headers=bearer(poor)))
    assert refused[0] == refused[1] and refused[0][0] == 402
    _, key = await fast.user_with_key(100)
    replay = {**bearer(key), "Idempotency-Key": "same-one"}
    made = await fast.http.post(POST, json=body, headers=replay)
    again = [await client.http.post(POST, json=body, headers=replay) for client in both]
    assert made.json()["id"] == again[0].json()["id"] == again[1].json()["id"]
    assert shown(again[0]) == shown(again[1])
