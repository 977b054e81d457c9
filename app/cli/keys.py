"""`gih keys`: issue, list and revoke API keys (the raw key is printed once, never stored)."""

from datetime import timedelta
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as users
from app.cli.common import JsonOpt, emit, run_db, settings, table
from app.db import utcnow
from app.keys import service as keys
from app.keys.schemas import ApiKeyInfo

app = typer.Typer(help="Issue, list and revoke API keys.", no_args_is_help=True)


@app.command("create")
def create(
    email: str,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, max=36500)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue an API key; the raw key is printed this once and never stored."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        now = utcnow()
        expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
        issued = await keys.issue(session, user, secret=cfg.hashing_secret(), name=name,
                                  expires_at=expires_at)
        return {**ApiKeyInfo.of(issued.key, now).model_dump(mode="json"),
                "key": issued.raw_key, "api_key": issued.raw_key,
                "user_id": user.id, "email": user.email}

    key = run_db(work, needs_secret=True)
    emit(key, f"API key {key['id']} for {key['email']} (shown once, store it now):\n\n"
              f"    {key['key']}\n", as_json)


@app.command("list")
def list_(email: str, as_json: JsonOpt = False) -> None:
    """List a user's keys (prefixes only; raw keys are never stored)."""
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        user = await users.get_by_email(session, email)
        now = utcnow()
        return [ApiKeyInfo.of(k, now).model_dump(mode="json")
                for k in await keys.list_for_user(session, user)]

    rows = run_db(work)
    emit(rows, table(rows, ["id", "name", "prefix", "status", "created_at", "last_used_at",
                            "expires_at"]) if rows else f"{email} has no keys", as_json)


@app.command("revoke")
def revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a key (by its id, or the raw key); it stops working immediately."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        key = await keys.revoke(session, key_id.strip(), secret=cfg.hashing_secret())
        return ApiKeyInfo.of(key, utcnow()).model_dump(mode="json")

    key = run_db(work)
    emit(key, f"revoked {key['id']} ({key['prefix']}...) at {key['revoked_at']}", as_json)
