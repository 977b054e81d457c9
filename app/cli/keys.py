"""`gih keys`: issue, list, limit and revoke API keys (the raw key is printed once, never
stored)."""

from datetime import timedelta
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as users
from app.cli.common import JsonOpt, emit, run_db, settings, table
from app.db import utcnow
from app.keys import service as keys
from app.keys.schemas import ApiKeyInfo
from app.limits import service as limits
from app.models import ApiKey, LimitReset

app = typer.Typer(help="Issue, list, limit and revoke API keys.", no_args_is_help=True)

LIMIT = keys.MAX_LIMIT
RateLimitOpt = Annotated[int | None, typer.Option(
    "--rate-limit", min=0, max=LIMIT, help="Generation requests a minute (0: no limit of its "
    "own; GIH_RATE_LIMIT_PER_MIN applies).")]
MaxConcurrencyOpt = Annotated[int | None, typer.Option(
    "--max-concurrency", min=0, max=LIMIT, help="Generations queued or running at once (0: no "
    "limit of its own; GIH_MAX_CONCURRENT_GENERATIONS applies).")]
CreditLimitOpt = Annotated[int | None, typer.Option(
    "--credit-limit", min=0, max=LIMIT, help="Credits the key may spend per --limit-reset "
    "period (0: no limit).")]
LimitResetOpt = Annotated[LimitReset | None, typer.Option(
    "--limit-reset", case_sensitive=False, help="When the credit limit starts afresh, in UTC "
    "(default: never).")]
LIMIT_COLUMNS = ["rate_limit", "max_concurrency", "credit_limit", "limit_reset",
                 "period_spend"]


async def shown(session: AsyncSession, key: ApiKey) -> dict[str, Any]:
    """The key as `--json` prints it, with its spend in the current period."""
    now = utcnow()
    spent = await limits.current_spend(session, [key], now)
    return ApiKeyInfo.of(key, now, spend=spent.get(key.id, 0)).model_dump(mode="json")


@app.command("create")
def create(
    email: str,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, max=36500)] = None,
    rate_limit: RateLimitOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    credit_limit: CreditLimitOpt = None,
    limit_reset: LimitResetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue an API key, optionally with limits; the raw key is printed this once and never
    stored."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        now = utcnow()
        expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
        issued = await keys.issue(session, user, secret=cfg.hashing_secret(), name=name,
                                  expires_at=expires_at, rate_limit=rate_limit,
                                  max_concurrency=max_concurrency, credit_limit=credit_limit,
                                  limit_reset=limit_reset)
        return {**ApiKeyInfo.of(issued.key, now).model_dump(mode="json"),
                "key": issued.raw_key, "api_key": issued.raw_key,
                "user_id": user.id, "email": user.email}

    key = run_db(work, needs_secret=True)
    emit(key, f"API key {key['id']} for {key['email']} (shown once, store it now):\n\n"
              f"    {key['key']}\n{limits_line(key)}", as_json)


@app.command("update")
def update(
    key_id: str,
    rate_limit: RateLimitOpt = None,
    max_concurrency: MaxConcurrencyOpt = None,
    credit_limit: CreditLimitOpt = None,
    limit_reset: LimitResetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a key's limits (0 clears one; a flag left out leaves it as it is). The key's
    next request sees them."""
    async def work(session: AsyncSession) -> dict[str, Any]:
        key = await keys.update(session, key_id.strip(), rate_limit=rate_limit,
                                max_concurrency=max_concurrency, credit_limit=credit_limit,
                                limit_reset=limit_reset)
        return await shown(session, key)

    key = run_db(work)
    emit(key, f"updated {key['id']} ({key['prefix']}...)\n{limits_line(key)}", as_json)


@app.command("list")
def list_(email: str, as_json: JsonOpt = False) -> None:
    """List a user's keys (prefixes only; raw keys are never stored), with their limits and
    the spend of the current period."""
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        user = await users.get_by_email(session, email)
        now = utcnow()
        found = await keys.list_for_user(session, user)
        spent = await limits.current_spend(session, found, now)
        return [ApiKeyInfo.of(k, now, spend=spent.get(k.id, 0)).model_dump(mode="json")
                for k in found]

    rows = run_db(work)
    emit(rows, table(rows, ["id", "name", "prefix", "status", "created_at", "last_used_at",
                            "expires_at", *LIMIT_COLUMNS])
         if rows else f"{email} has no keys", as_json)


PER_PERIOD = {"daily": "a day", "weekly": "a week", "monthly": "a month"}


def limits_line(key: dict[str, Any]) -> str:
    """The key's limits, for people: "limits: none" or "limits: 60 requests/min, ..."."""
    parts = []
    if key["rate_limit"]:
        parts.append(f"{key['rate_limit']} requests/min")
    if key["max_concurrency"]:
        parts.append(f"{key['max_concurrency']} at once")
    if key["credit_limit"]:
        per = PER_PERIOD.get(key["limit_reset"], "in all")
        parts.append(f"{key['credit_limit']} credits {per} ({key.get('period_spend') or 0} "
                     "spent so far)")
    return "limits: " + (", ".join(parts) if parts else "none of its own")


@app.command("revoke")
def revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a key (by its id, or the raw key); it stops working immediately."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        key = await keys.revoke(session, key_id.strip(), secret=cfg.hashing_secret())
        return await shown(session, key)

    key = run_db(work)
    emit(key, f"revoked {key['id']} ({key['prefix']}...) at {key['revoked_at']}", as_json)
