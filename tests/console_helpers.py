"""Driving the console over HTTP in tests: a browser-like client (cookies, CSRF tokens read from
the page), and accounts with passwords and roles written through the app's services."""

import re
import secrets
from dataclasses import dataclass

import httpx2

from app.accounts import passwords
from app.accounts import service as accounts
from app.credits import service as credits
from app.keys import service as api_keys
from app.models import UserRole

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, f"no CSRF token in the page:\n{html[:500]}"
    return found.group(1)


def h1s(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<h1[^>]*>(.*?)</h1>", html,
                                                                  re.S)]


@dataclass
class Person:
    user_id: str
    email: str
    password: str
    key: str | None = None


async def make_person(app, *, credits_: int = 0, role: UserRole = UserRole.USER,
                      with_key: bool = False) -> Person:
    """A user with a password (and credits, a key), as `gih users create --password-stdin`
    writes them."""
    rt = app.state.runtime
    email = f"p{secrets.token_hex(6)}@example.com"
    async with rt.sessionmaker() as session, session.begin():
        user = await accounts.create(session, email, account_type="PRO",
                                     password_hash=passwords.hash_password(PASSWORD), role=role)
        if credits_:
            await credits.grant(session, user.id, credits_)
        key = None
        if with_key:
            key = (await api_keys.issue(session, user, secret=rt.secret)).raw_key
    return Person(user.id, email, PASSWORD, key)


class Browser:
    """A cookie-keeping HTTP client on the ASGI app that submits forms as a browser does."""

    def __init__(self, app, base_url: str = "http://testserver") -> None:
        # A client address of its own (never contacted: ASGI), so that the per-address
        # sign-in throttle of one test does not meet another's.
        address = ".".join(["127", *(str(secrets.randbelow(250) + 2) for _ in range(3))])
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False,
                                         client=(address, 50000))
        self.http = httpx2.AsyncClient(transport=transport, base_url=base_url)

    async def __aenter__(self) -> "Browser":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def get(self, path: str) -> httpx2.Response:
        return await self.http.get(path)

    async def token(self, path: str = "/account") -> str:
        page = await self.http.get(path)
        assert page.status_code == 200, (path, page.status_code, page.text[:300])
        return csrf_of(page.text)

    async def post(self, path: str, data: dict | None = None, *, token_from: str | None = None,
                   files=None) -> httpx2.Response:
        data = dict(data or {})
        if token_from is not None:
            data["csrf_token"] = await self.token(token_from)
        return await self.http.post(path, data=data, files=files)

    async def sign_in(self, email: str, password: str = PASSWORD) -> httpx2.Response:
        return await self.post("/sign-in", {"email": email, "password": password},
                               token_from="/sign-in")

    @property
    def session_cookie(self) -> str | None:
        return self.http.cookies.get("gih_session")
