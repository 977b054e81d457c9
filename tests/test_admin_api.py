"""The admin API (section 13) over HTTP, in-process on PostgreSQL (and SQLite for the smoke
subset): only an admin's key gets in (anyone else: 403 `forbidden`); users, keys, usage; and a
credit grant retried with the same Idempotency-Key grants once, also under 10 concurrent
retries."""

import asyncio
import re

import pytest
from sqlalchemy import func, select

from app.models import CreditGrant, CreditLot, UserRole
from tests.conftest import audit_problems, bearer, make_settings
from tests.console_helpers import PASSWORD, Browser, csrf_of, make_person

ROUTES = [("GET", "/api/v1/admin/users"), ("POST", "/api/v1/admin/users"),
          ("GET", "/api/v1/admin/users/usr_x"), ("POST", "/api/v1/admin/users/usr_x/credits"),
          ("POST", "/api/v1/admin/users/usr_x/keys"), ("DELETE", "/api/v1/admin/keys/key_x"),
          ("GET", "/api/v1/admin/usage")]


async def admin_key(client) -> str:
    person = await make_person(client.app, role=UserRole.ADMIN, with_key=True)
    assert person.key
    return person.key


async def test_only_an_admins_key_gets_in(any_db) -> None:
    person = await make_person(any_db.app, credits_=5, with_key=True)
    for method, path in ROUTES:
        body = {"credits": 1} if method == "POST" else None
        answer = await any_db.http.request(method, path, headers=bearer(person.key or ""),
                                           json=body)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json() == {"error": {"message": answer.json()["error"]["message"],
                                           "code": "forbidden"}}
        anonymous = await any_db.http.request(method, path, json=body)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == \
            "missingApiKey"


async def test_users_keys_and_usage(any_db) -> None:
    key = await admin_key(any_db)
    created = await any_db.http.post("/api/v1/admin/users", headers=bearer(key), json={
        "email": "Billing.Customer@Example.com", "password": "a long password", "credits": 40,
        "account_type": "pro"})
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["object"] == "user" and user["email"] == "billing.customer@example.com"
    assert user["balance"]["credits"] == 40 and user["has_password"] and user["role"] == "user"
    duplicate = await any_db.http.post("/api/v1/admin/users", headers=bearer(key),
                                       json={"email": "billing.customer@example.com"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "duplicateEmail"
    weak = await any_db.http.post("/api/v1/admin/users", headers=bearer(key),
                                  json={"email": "weak@example.com", "password": "short"})
    assert weak.status_code == 400

    found = (await any_db.http.get("/api/v1/admin/users?q=BILLING.customer",
                                   headers=bearer(key))).json()
    assert [u["id"] for u in found["data"]] == [user["id"]] and not found["has_more"]

    issued = await any_db.http.post(f"/api/v1/admin/users/{user['id']}/keys",
                                    headers=bearer(key), json={"name": "billing", "rate_limit": 5})
    assert issued.status_code == 201, issued.text
    raw = issued.json()["key"]
    assert raw.startswith("gih_live_") and issued.json()["rate_limit"] == 5
    assert (await any_db.http.get("/api/v1/credits", headers=bearer(raw))).json()["credits"] == 40
    detail = (await any_db.http.get(f"/api/v1/admin/users/{user['id']}",
                                    headers=bearer(key))).json()
    assert [k["id"] for k in detail["keys"]] == [issued.json()["id"]]
    assert raw not in str(detail)  # the raw key was shown once only

    generated = await any_db.http.post("/api/v1/images/generations", headers=bearer(raw),
                                       json={"model": "gpt-image-2", "prompt": "usage",
                                             "size": "1024x1024"})
    assert generated.status_code == 200
    usage = (await any_db.http.get("/api/v1/admin/usage", headers=bearer(key))).json()
    assert usage["object"] == "usage" and usage["total"]["generations"] >= 1
    assert usage["total"]["credits_charged"] >= 8 and usage["days"] and usage["models"]
    assert usage["rows"][0]["model"] == "gpt-image-2"
    assert "from" in usage and "to" in usage
    empty = (await any_db.http.get("/api/v1/admin/usage?from=2020-01-01&to=2020-01-02",
                                   headers=bearer(key))).json()
    assert empty["total"]["generations"] == 0 and empty["days"] == []
    backwards = await any_db.http.get("/api/v1/admin/usage?from=2020-01-02&to=2020-01-01",
                                      headers=bearer(key))
    assert backwards.status_code == 400

    revoked = await any_db.http.delete(f"/api/v1/admin/keys/{issued.json()['id']}",
                                       headers=bearer(key))
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert (await any_db.http.get("/api/v1/credits", headers=bearer(raw))).status_code == 401
    for missing in ("/api/v1/admin/users/usr_nobody", "/api/v1/admin/users/nothing"):
        assert (await any_db.http.get(missing, headers=bearer(key))).status_code == 404
    assert (await any_db.http.delete("/api/v1/admin/keys/key_nobody",
                                     headers=bearer(key))).status_code == 404


async def grants_of(client, user_id: str) -> tuple[int, int]:
    async with client.session() as session:
        grants = await session.scalar(select(func.count()).select_from(CreditGrant)
                                      .where(CreditGrant.user_id == user_id))
        lots = await session.scalar(select(func.count()).select_from(CreditLot)
                                    .where(CreditLot.user_id == user_id))
    return int(grants or 0), int(lots or 0)


async def test_a_retried_grant_grants_once(any_db, pg_url: str) -> None:
    key = await admin_key(any_db)
    person = await make_person(any_db.app)
    path = f"/api/v1/admin/users/{person.user_id}/credits"
    headers = {**bearer(key), "Idempotency-Key": "payment-1001"}
    body = {"credits": 500, "note": "invoice 1001", "expires_at": "2031-01-01T00:00:00Z"}
    first = await any_db.http.post(path, headers=headers, json=body)
    assert first.status_code == 201, first.text
    assert first.json()["object"] == "credit_grant" and first.json()["balance"]["credits"] == 500
    for _ in range(3):
        again = await any_db.http.post(path, headers=headers, json=body)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["balance"]["credits"] == 500
    other = await any_db.http.post(path, headers=headers, json={**body, "credits": 501})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotencyConflict"
    second = await any_db.http.post(path, headers={**bearer(key), "Idempotency-Key": "p-1002"},
                                    json={"credits": 1})
    assert second.status_code == 201 and second.json()["balance"]["credits"] == 501
    no_key = await any_db.http.post(path, headers=bearer(key), json={"credits": 2})
    assert no_key.status_code == 201 and no_key.json()["balance"]["credits"] == 503
    assert await grants_of(any_db, person.user_id) == (3, 3)
    for bad in ({"credits": 0}, {"credits": -5}, {"credits": "x"}, {},
                {"credits": 1, "expires_at": "2001-01-01"}, {"credits": 1, "extra": 1}):
        answer = await any_db.http.post(path, headers=bearer(key), json=bad)
        assert answer.status_code == 400, (bad, answer.text)
    # The user sees the grant in their ledger, in the console.
    async with Browser(any_db.app) as browser:
        await browser.sign_in(person.email, PASSWORD)
        page = (await browser.get("/credits")).text
        assert 'data-testid="balance">503<' in page and "invoice 1001" in page


async def test_ten_concurrent_retries_grant_once(pg) -> None:
    key = await admin_key(pg)
    person = await make_person(pg.app)
    path = f"/api/v1/admin/users/{person.user_id}/credits"
    for round_ in range(3):
        headers = {**bearer(key), "Idempotency-Key": f"webhook-{round_}"}
        answers = await asyncio.gather(*(pg.http.post(path, headers=headers,
                                                      json={"credits": 100})
                                         for _ in range(10)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] * 9 + [201], [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
    balance = (await pg.http.get(f"/api/v1/admin/users/{person.user_id}",
                                 headers=bearer(key))).json()["balance"]["credits"]
    assert balance == 300
    assert await grants_of(pg, person.user_id) == (3, 3)
    assert not await audit_problems(make_settings(pg.app.state.runtime.settings.database_url))


@pytest.mark.parametrize("route", ["/api/v1/admin/users", "/api/v1/admin/usage"])
async def test_admin_routes_are_documented(any_db, route: str) -> None:
    schema = (await any_db.http.get("/openapi.json")).json()
    operations = schema["paths"][route]
    for operation in operations.values():
        assert "403" in operation["responses"] and operation["security"] == [{"bearerAuth": []}]
    assert "/api/v1/admin/users/{user_id}/credits" in schema["paths"]
    assert not [p for p in schema["paths"] if not p.startswith(("/api/v1", "/v1"))]


async def test_the_console_grant_form_sent_twice_grants_once(any_db) -> None:
    admin = await make_person(any_db.app, role=UserRole.ADMIN)
    person = await make_person(any_db.app)
    async with Browser(any_db.app) as browser:
        await browser.sign_in(admin.email)
        page = (await browser.get(f"/admin/users/{person.user_id}")).text
        form = {"csrf_token": csrf_of(page), "credits": "70", "note": "console grant",
                "grant_token": re.search(r'name="grant_token" value="([^"]+)"', page).group(1)}
        first = await browser.http.post(f"/admin/users/{person.user_id}/credits", data=form)
        again = await browser.http.post(f"/admin/users/{person.user_id}/credits", data=form)
        assert first.headers["location"].endswith("notice=granted")
        assert again.headers["location"].endswith("notice=already")
        shown = (await browser.get(f"/admin/users/{person.user_id}")).text
        assert 'data-testid="balance">70<' in shown and "console grant" in shown
        bad = await browser.http.post(f"/admin/users/{person.user_id}/credits",
                                      data={**form, "credits": "-3"})
        assert bad.status_code == 400 and "whole number" in bad.text
    assert await grants_of(any_db, person.user_id) == (1, 1)
