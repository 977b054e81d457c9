"""The request dependencies: SessionDep commits what an endpoint wrote before the answer is
sent, and writes nothing when the endpoint fails."""

import secrets

from fastapi import FastAPI
from sqlalchemy import select

from app.accounts import service as users
from app.deps import CurrentPrincipal, ReaderDep, SessionDep
from app.errors import InvalidRequest
from app.models import User
from tests.conftest import Client, bearer


def add_routes(app: FastAPI) -> None:
    async def write(session: SessionDep, email: str, fail: bool = False) -> dict[str, str]:
        user = await users.create(session, email)
        if fail:
            raise InvalidRequest("failing after the write")
        return {"id": user.id}

    async def whoami(principal: CurrentPrincipal, reader: ReaderDep) -> dict[str, str]:
        email = await reader.scalar(select(User.email).where(User.id == principal.user.id))
        return {"email": email or ""}

    app.add_api_route("/test/write", write, methods=["POST"])
    app.add_api_route("/test/whoami", whoami, methods=["GET"])


async def email_exists(client: Client, email: str) -> bool:
    async with client.session() as session:
        return await session.scalar(select(User.id).where(User.email == email)) is not None


async def test_session_dep_commits_before_the_answer(any_db: Client) -> None:
    add_routes(any_db.app)
    email = f"dep{secrets.token_hex(4)}@example.com"
    response = await any_db.http.post("/test/write", params={"email": email})
    assert response.status_code == 200
    assert await email_exists(any_db, email)  # visible to another session once answered


async def test_session_dep_rolls_back_a_failed_endpoint(any_db: Client) -> None:
    add_routes(any_db.app)
    email = f"dep{secrets.token_hex(4)}@example.com"
    response = await any_db.http.post("/test/write", params={"email": email, "fail": True})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "failing after the write"
    assert not await email_exists(any_db, email)


async def test_current_principal_and_reader(any_db: Client) -> None:
    add_routes(any_db.app)
    user, key = await any_db.user_with_key()
    response = await any_db.http.get("/test/whoami", headers=bearer(key))
    assert response.json() == {"email": user.email}
    assert (await any_db.http.get("/test/whoami")).json()["error"]["code"] == "missingApiKey"
