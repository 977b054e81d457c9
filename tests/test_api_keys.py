"""API key lifecycle through HTTP. What the database (and a dump of it) holds of a key is in
tests/reliability/test_security.py."""

import re
from datetime import timedelta

from sqlalchemy import select, update

from app.db import utcnow
from app.keys import service as api_keys
from app.models import ApiKey
from tests.conftest import bearer


def assert_auth_error(response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"error": {"message": response.json()["error"]["message"],
                                         "code": code}}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_key_format_is_gih_live_and_32_base62() -> None:
    keys = {api_keys.generate_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(re.fullmatch(r"gih_live_[A-Za-z0-9]{32}", k) for k in keys)


async def test_issued_key_works_then_revoke_rejects_it(any_db) -> None:
    user, key = await any_db.user_with_key(10)
    ok = await any_db.http.get("/api/v1/credits", headers=bearer(key))
    assert ok.status_code == 200
    assert ok.json()["credits"] == 10

    async with any_db.session() as session, session.begin():
        key_id = (await session.scalar(select(ApiKey.id).where(ApiKey.user_id == user.id)))
        await api_keys.revoke(session, key_id, secret=any_db.app.state.runtime.secret)
    revoked = await any_db.http.get("/api/v1/credits", headers=bearer(key))
    assert_auth_error(revoked, "invalidApiKey")


async def test_expired_key_is_expired_api_key(pg) -> None:
    user = await pg.user(10)
    key = await pg.key(user, expires_at=utcnow() + timedelta(days=1))
    assert (await pg.http.get("/api/v1/credits", headers=bearer(key))).status_code == 200
    async with pg.session() as session, session.begin():
        await session.execute(update(ApiKey).where(ApiKey.user_id == user.id)
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert_auth_error(await pg.http.get("/api/v1/credits", headers=bearer(key)), "expiredApiKey")


async def test_missing_and_malformed_headers(any_db) -> None:
    http = any_db.http
    assert_auth_error(await http.get("/api/v1/credits"), "missingApiKey")
    assert_auth_error(await http.get("/api/v1/credits", headers={"Authorization": ""}),
                      "missingApiKey")
    assert_auth_error(await http.get("/api/v1/credits", headers={"Authorization": "Bearer"}),
                      "missingApiKey")
    assert_auth_error(await http.get("/api/v1/credits",
                                     headers={"Authorization": "Basic dXNlcjpwYXNz"}),
                      "missingApiKey")
    assert_auth_error(await http.get("/api/v1/credits", headers=bearer("garbage")),
                      "invalidApiKey")
    assert_auth_error(await http.get("/api/v1/credits", headers=bearer("gih_live_short")),
                      "invalidApiKey")
    unknown = api_keys.generate_key()
    assert_auth_error(await http.get("/api/v1/credits", headers=bearer(unknown)),
                      "invalidApiKey")


async def test_key_of_one_user_sees_only_its_balance(pg) -> None:
    _, key_a = await pg.user_with_key(8)
    _, key_b = await pg.user_with_key(30)
    assert (await pg.http.get("/api/v1/credits", headers=bearer(key_a))).json()["credits"] == 8
    assert (await pg.http.get("/api/v1/credits", headers=bearer(key_b))).json()["credits"] == 30


async def test_last_used_at_written_at_most_once_a_minute(pg) -> None:
    user, key = await pg.user_with_key(5)

    async def last_used():
        async with pg.session() as session:
            return await session.scalar(select(ApiKey.last_used_at)
                                        .where(ApiKey.user_id == user.id))

    assert await last_used() is None
    await pg.http.get("/api/v1/credits", headers=bearer(key))
    first = await last_used()
    assert first is not None
    await pg.http.get("/api/v1/credits", headers=bearer(key))
    assert await last_used() == first
    async with pg.session() as session, session.begin():
        await session.execute(update(ApiKey).where(ApiKey.user_id == user.id)
                              .values(last_used_at=first - timedelta(minutes=2)))
    await pg.http.get("/api/v1/credits", headers=bearer(key))
    assert await last_used() > first - timedelta(seconds=1)
