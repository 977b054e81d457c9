"""`gih webhooks`: a user's signing secret, the delivery log, and sending an event again."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as users
from app.cli.common import Failure, JsonOpt, emit, run_db, settings, table
from app.errors import ApiError
from app.models import User
from app.runtime import Runtime, close_runtime, open_runtime
from app.webhooks import jobs
from app.webhooks import service as webhooks
from app.webhooks.schemas import DeliveryInfo, WebhookSecretInfo

app = typer.Typer(help="Webhook secrets and deliveries.", no_args_is_help=True)

T = TypeVar("T")
ERROR_WIDTH = 60  # of the last error, in the table (--json has all of it)


@app.command("secret")
def secret(email: str, as_json: JsonOpt = False) -> None:
    """Print a user's webhook signing secret (made on first use), for their receiver."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        found = await webhooks.current_secret(session, user.id,
                                              server_secret=cfg.hashing_secret())
        return {**WebhookSecretInfo.of(found).model_dump(mode="json"), "email": user.email}

    out = run_db(work, needs_secret=True)
    emit(out, f"webhook secret of {out['email']} (since {out['created_at']}):\n\n"
              f"    {out['secret']}\n", as_json)


@app.command("deliveries")
def deliveries(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's (email).")] = None,
    failed: Annotated[bool, typer.Option("--failed",
                                         help="Only events given up (failed or gone).")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The latest webhook events, newest first: URL, status, tries, last error, next try."""
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        user_id = (await users.get_by_email(session, user)).id if user is not None else None
        found = await webhooks.deliveries(session, user_id=user_id, failed=failed, limit=limit)
        return [DeliveryInfo.of(d.event, d.email).model_dump(mode="json") for d in found]

    rows = run_db(work)
    shown = [{**row, "last_error": shorten(row["last_error"])} for row in rows]
    emit(rows, table(shown, ["id", "type", "email", "url", "status", "tries", "last_status",
                             "last_error", "next_try"]) if rows else "no webhook events",
         as_json)


@app.command("redeliver")
def redeliver(event_id: str, as_json: JsonOpt = False) -> None:
    """Send an event again, now (whatever its state); if that fails, it is retried as usual."""
    async def work(rt: Runtime) -> dict[str, Any]:
        event = await jobs.redeliver(rt, event_id)
        if event is None:
            raise Failure(f"webhook event {event_id} has no generation any more")
        async with rt.reader() as session:
            owner = await session.get(User, event.user_id)
        return DeliveryInfo.of(event, owner.email if owner else "?").model_dump(mode="json")

    out = run_with_runtime(work)
    outcome = (f"delivered (HTTP {out['last_status']})" if out["status"] == "delivered" else
               f"{out['status']}: {out['last_error'] or out['last_status']}"
               + (f"; next try {out['next_try']}" if out["next_try"] else ""))
    emit(out, f"{out['id']} to {out['url']}: {outcome}", as_json)


def shorten(text: str | None) -> str | None:
    if text is None or len(text) <= ERROR_WIDTH:
        return text
    return text[:ERROR_WIDTH - 3] + "..."


def run_with_runtime(work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run `work` with the service's runtime (database, storage, server secret), as the
    worker has it; nothing is queued from here."""
    cfg = settings()
    if cfg.problems():
        raise Failure("invalid configuration:\n  - " + "\n  - ".join(cfg.problems()), 2)
    if cfg.embedded:
        from app.migrate import upgrade
        upgrade(cfg.database_url)

    async def go() -> T:
        rt = open_runtime(cfg)
        try:
            return await work(rt)
        finally:
            await close_runtime(rt)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        raise Failure(exc.message) from None
    except (DBAPIError, OSError) as exc:
        raise Failure(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}\n"
                      "is the database reachable, and has `gih db upgrade` run?") from None
