"""GET /api/v1/credits on PostgreSQL is answered ahead of FastAPI's router (app/ops/fast_routes.py):
the same answers, byte for byte, as the FastAPI route it shortcuts, errors and HEAD included."""

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx2
import pytest
from sqlalchemy import update

from app.credits import service as credits
from app.db import utcnow
from app.main import create_app
from app.models import ApiKey, CreditLot, User
from app.ops.fast_routes import FastRoutes
from tests.conftest import Client, bearer, make_settings

PATH = "/api/v1/credits"


@contextlib.asynccontextmanager
async def app_client(pg_url: str, *, fast: bool, router: bool) -> AsyncIterator[Client]:
    """The app with or without its fast routes, with or without FastAPI's route of PATH."""
    app = create_app(make_settings(pg_url))
    if not fast:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not FastRoutes]
    if not router:
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != PATH]
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
                      headers: dict[str, str] | None = None) -> httpx2.Response:
    answers = [await client.http.request(method, PATH, headers=headers) for client in both]
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
