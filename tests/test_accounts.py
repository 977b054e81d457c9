"""Accounts over HTTP (in-process, PostgreSQL and SQLite): sign-up and its credits, sessions
(cookie flags, ended server-side by sign-out, a password change, sign out everywhere and
disabling), CSRF on every state-changing form, sign-in throttling, and that nobody reaches
another user's generation, key or image through the console."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.accounts import service as accounts
from app.accounts import sessions
from app.config import Settings
from app.db import utcnow
from app.models import ApiKey, Session, User
from tests.conftest import audit_problems, bearer, make_settings, running_client
from tests.console_helpers import PASSWORD, Browser, csrf_of, make_person


async def sessions_of(client, user_id: str) -> int:
    async with client.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Session)
                                        .where(Session.user_id == user_id)) or 0)


async def sign_up(browser: Browser, email: str, password: str = "a long enough password"):
    # (the sign-in page's token: it is bound to the same cookie, and shown when sign-up is
    # closed too)
    return await browser.post("/sign-up", {"email": email, "password": password},
                              token_from="/sign-in")


async def test_sign_up_grants_its_credits_through_the_ledger(pg_url: str) -> None:
    async with running_client(make_settings(pg_url, signup="open", signup_credits=25)) as client:
        async with Browser(client.app) as browser:
            email = f"new{id(browser)}@example.com"
            answer = await sign_up(browser, email.upper())
            assert answer.status_code == 303 and answer.headers["location"].startswith("/keys")
            cookie = answer.headers["set-cookie"]
            assert "gih_session=" in cookie and "HttpOnly" in cookie
            assert "samesite=lax" in cookie.lower() and "Secure" not in cookie
            credits_page = await browser.get("/credits")
            assert 'data-testid="balance">25<' in credits_page.text
            assert "sign-up credits" in credits_page.text
            again = await sign_up(Browser(client.app), email)
        async with client.session() as session:
            user = await session.scalar(select(User).where(User.email == email.lower()))
        assert user.password_hash.startswith("$argon2id$") and user.credits == 25
        assert await sessions_of(client, user.id) == 1
        async with client.session() as session:  # only the HMAC of the cookie's id is kept
            stored = await session.scalar(select(Session.id_hash)
                                          .where(Session.user_id == user.id))
        assert browser.session_cookie not in stored
        assert stored == sessions.hash_id(browser.session_cookie or "",
                                          client.app.state.runtime.secret)
    assert again.status_code == 409 and "already exists" in again.text
    assert not await audit_problems(make_settings(pg_url))


async def test_sign_up_rules_and_closed_sign_up(pg_url: str, sqlite_url: str) -> None:
    async with running_client(make_settings(sqlite_url, signup="open")) as client, \
            Browser(client.app) as browser:
        short = await sign_up(browser, "short@example.com", "nine char")
        assert short.status_code == 400 and "at least 10 characters" in short.text
        bad = await sign_up(browser, "not-an-email")
        assert bad.status_code == 400 and "valid email" in bad.text
    # Sign-up is open by default in the embedded mode only.
    assert Settings(database_url=sqlite_url).signup_open
    assert not Settings(database_url=pg_url, secret_key="s" * 40).signup_open
    async with running_client(make_settings(pg_url)) as client, Browser(client.app) as browser:
        assert not client.app.state.runtime.settings.signup_open
        page = await browser.get("/sign-up")
        assert page.status_code == 403 and "closed" in page.text
        refused = await sign_up(browser, "closed@example.com")
        assert refused.status_code == 403 and "closed" in refused.text
        async with client.session() as session:
            assert not await session.scalar(select(User.id).where(
                User.email == "closed@example.com"))


async def test_secure_cookie_behind_https(pg_url: str) -> None:
    settings = make_settings(pg_url, public_base_url="https://images.example.com")
    async with running_client(settings) as client:
        person = await make_person(client.app)
        async with Browser(client.app, base_url="https://images.example.com") as browser:
            answer = await browser.sign_in(person.email)
            assert answer.status_code == 303
            cookie = answer.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()


async def test_sign_in_sign_out_ends_the_session_server_side(any_db) -> None:
    person = await make_person(any_db.app)
    async with Browser(any_db.app) as browser:
        assert (await browser.get("/keys")).status_code == 303  # to Sign in
        wrong = await browser.sign_in(person.email, "not the password")
        assert wrong.status_code == 401 and "do not match" in wrong.text
        answer = await browser.sign_in(person.email)
        assert answer.status_code == 303 and answer.headers["location"] == "/keys"
        old_cookie = browser.session_cookie
        assert (await browser.get("/keys")).status_code == 200
        assert await sessions_of(any_db, person.user_id) == 1
        out = await browser.post("/sign-out", token_from="/keys")
        assert out.status_code == 303 and out.headers["location"].startswith("/sign-in")
    assert await sessions_of(any_db, person.user_id) == 0
    # The old cookie, replayed, is no session at all.
    async with Browser(any_db.app) as replay:
        replay.http.cookies.set("gih_session", old_cookie or "")
        page = await replay.get("/keys")
        assert page.status_code == 303 and page.headers["location"].startswith("/sign-in")


async def test_next_after_sign_in_stays_on_this_site(any_db) -> None:
    person = await make_person(any_db.app)
    async with Browser(any_db.app) as browser:
        page = await browser.get("/sign-in?next=//evil.example.com/x")
        answer = await browser.post("/sign-in", {"email": person.email, "password": PASSWORD,
                                                 "next": "//evil.example.com/x",
                                                 "csrf_token": csrf_of(page.text)})
        assert answer.headers["location"] == "/keys"
        page = await browser.get("/generations?status=failed")
        assert page.status_code == 200


async def test_password_change_and_sign_out_everywhere_end_sessions(any_db) -> None:
    person = await make_person(any_db.app)
    async with Browser(any_db.app) as first, Browser(any_db.app) as second:
        await first.sign_in(person.email)
        await second.sign_in(person.email)
        assert await sessions_of(any_db, person.user_id) == 2
        bad = await first.post("/account/password", {"current_password": "wrong password!",
                                                     "new_password": "new password 123"},
                               token_from="/account")
        assert bad.status_code == 400
        changed = await first.post("/account/password",
                                   {"current_password": PASSWORD,
                                    "new_password": "new password 123"}, token_from="/account")
        assert changed.status_code == 303
        assert (await first.get("/account")).status_code == 200  # this browser goes on
        assert (await second.get("/account")).status_code == 303  # the other one is out
        assert await sessions_of(any_db, person.user_id) == 1
        assert (await second.sign_in(person.email)).status_code == 401
        assert (await second.sign_in(person.email, "new password 123")).status_code == 303
        out = await first.post("/account/sign-out-everywhere", token_from="/account")
        assert out.status_code == 303
        assert (await first.get("/account")).status_code == 303
        assert (await second.get("/account")).status_code == 303
    assert await sessions_of(any_db, person.user_id) == 0


STATE_CHANGING = ["/sign-out", "/keys", "/keys/key_x/revoke", "/webhooks/rotate",
                  "/account/password", "/account/sign-out-everywhere",
                  "/generations/gen_x/cancel"]


async def test_every_form_without_its_csrf_token_is_403(any_db) -> None:
    person = await make_person(any_db.app, credits_=100)
    async with Browser(any_db.app) as browser, Browser(any_db.app) as other:
        await browser.sign_in(person.email)
        await other.sign_in((await make_person(any_db.app)).email)
        foreign = await other.token("/account")  # a valid token, of another session
        for path in STATE_CHANGING:
            for token in (None, "", "0" * 64, foreign):
                data = {} if token is None else {"csrf_token": token}
                answer = await browser.post(path, data)
                assert answer.status_code == 403, (path, token, answer.status_code)
                assert "security token" in answer.text
        playground = await browser.http.post(
            "/playground", files={"prompt": (None, "a cat"), "model": (None, "gpt-image-2")})
        assert playground.status_code == 403
        anonymous = Browser(any_db.app)
        refused = await anonymous.post("/sign-in", {"email": person.email,
                                                    "password": PASSWORD})
        assert refused.status_code == 403
        # Nothing was changed: the session lives, no key was made.
        assert (await browser.get("/keys")).status_code == 200
    async with any_db.session() as session:
        assert not await session.scalar(select(ApiKey.id).where(ApiKey.user_id ==
                                                                person.user_id))


async def test_the_eleventh_wrong_password_in_a_minute_is_throttled(any_db) -> None:
    person = await make_person(any_db.app)
    async with Browser(any_db.app) as browser:
        for attempt in range(10):
            answer = await browser.sign_in(person.email, f"wrong password {attempt}")
            assert answer.status_code == 401, attempt
        eleventh = await browser.sign_in(person.email, "wrong password 11")
        assert eleventh.status_code == 429 and "Too many" in eleventh.text
        right = await browser.sign_in(person.email)  # even the right one, for now
        assert right.status_code == 429
    # Per address too: one client guessing across many accounts is throttled.
    others = [await make_person(any_db.app) for _ in range(2)]
    async with Browser(any_db.app) as guesser:
        for attempt in range(10):
            who = others[attempt % 2]
            assert (await guesser.sign_in(who.email, "guess guess")).status_code in (401, 429)
        assert (await guesser.sign_in(others[0].email)).status_code == 429


async def test_a_disabled_user_stops_at_once(any_db) -> None:
    person = await make_person(any_db.app, credits_=10, with_key=True)
    async with Browser(any_db.app) as browser:
        await browser.sign_in(person.email)
        assert (await browser.get("/keys")).status_code == 200
        assert (await any_db.http.get("/api/v1/credits",
                                      headers=bearer(person.key))).status_code == 200
        async with any_db.session() as session, session.begin():
            await accounts.disable(session, await accounts.get(session, person.user_id))
        assert (await browser.get("/keys")).status_code == 303
        assert (await browser.sign_in(person.email)).status_code == 401
        response = await any_db.http.get("/api/v1/credits", headers=bearer(person.key))
        assert response.status_code == 401 and response.json()["error"]["code"] == \
            "invalidApiKey"
    assert await sessions_of(any_db, person.user_id) == 0


async def test_another_users_things_are_never_reachable(any_db) -> None:
    owner = await make_person(any_db.app, credits_=100, with_key=True)
    made = (await any_db.http.post("/api/v1/images/generations", headers=bearer(owner.key),
                                   json={"model": "gpt-image-2", "prompt": "mine",
                                         "size": "1024x1024"})).json()
    image_id = made["images"][0]["id"]
    async with any_db.session() as session:
        key_id = await session.scalar(select(ApiKey.id).where(ApiKey.user_id == owner.user_id))
    intruder = await make_person(any_db.app, credits_=100)
    async with Browser(any_db.app) as browser:
        await browser.sign_in(owner.email)
        assert (await browser.get(f"/generations/{made['id']}")).status_code == 200
        assert (await browser.get(f"/thumbs/{image_id}")).status_code == 200
        assert (await browser.get(f"/images/{image_id}")).status_code == 200
    async with Browser(any_db.app) as browser:
        await browser.sign_in(intruder.email)
        for path in (f"/generations/{made['id']}", f"/thumbs/{image_id}", f"/images/{image_id}",
                     f"/playground?generation={made['id']}", "/admin/users",
                     f"/admin/users/{owner.user_id}"):
            answer = await browser.get(path)
            assert answer.status_code in (403, 404), (path, answer.status_code)
            assert "mine" not in answer.text and owner.email not in answer.text
        for path in (f"/keys/{key_id}/revoke", f"/generations/{made['id']}/cancel",
                     f"/admin/users/{owner.user_id}/disable"):
            answer = await browser.post(path, token_from="/keys")
            assert answer.status_code in (403, 404), (path, answer.status_code)
        listed = await browser.get("/generations")
        assert made["id"] not in listed.text
        keys_page = await browser.get("/keys")
        assert key_id not in keys_page.text
    response = await any_db.http.get("/api/v1/credits", headers=bearer(owner.key))
    assert response.status_code == 200  # the key was not revoked by the intruder


async def test_concurrent_sign_ins_each_get_a_session(pg) -> None:
    person = await make_person(pg.app)
    browsers = [Browser(pg.app) for _ in range(5)]
    answers = await asyncio.gather(*(b.sign_in(person.email) for b in browsers))
    assert [a.status_code for a in answers] == [303] * 5
    assert len({b.session_cookie for b in browsers}) == 5
    assert await sessions_of(pg, person.user_id) == 5
    for b in browsers:
        await b.http.aclose()


@pytest.mark.parametrize("path", ["/keys", "/credits", "/generations", "/playground",
                                  "/webhooks", "/account"])
async def test_pages_need_a_session(any_db, path: str) -> None:
    answer = await any_db.http.get(path)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/sign-in?next=")


async def test_a_session_idle_for_30_days_is_refused(any_db) -> None:
    person = await make_person(any_db.app)
    async with Browser(any_db.app) as browser:
        await browser.sign_in(person.email)
        async with any_db.session() as session, session.begin():
            await session.execute(update(Session).where(Session.user_id == person.user_id)
                                  .values(last_seen_at=utcnow() - timedelta(days=29)))
        assert (await browser.get("/keys")).status_code == 200  # used: its clock restarts
        async with any_db.session() as session:
            seen = await session.scalar(select(Session.last_seen_at)
                                        .where(Session.user_id == person.user_id))
        assert utcnow() - seen < timedelta(minutes=1)
        async with any_db.session() as session, session.begin():
            await session.execute(update(Session).where(Session.user_id == person.user_id)
                                  .values(last_seen_at=utcnow() - timedelta(days=30, seconds=1)))
        assert (await browser.get("/keys")).status_code == 303
    assert await sessions_of(any_db, person.user_id) == 0  # and it is gone
