"""`gih`: the operator's management command."""

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app import api_keys, credits, users
from app.config import ConfigError, Settings, get_settings
from app.db import create_engine, create_sessionmaker, utcnow
from app.errors import ApiError
from app.schemas import balance_body, iso

T = TypeVar("T")

app = typer.Typer(help="GPT Image Hub management command.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
keys_app = typer.Typer(help="Issue, list and revoke API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Grant, show and audit credits.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(db_app, name="db")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
state = {"json": False}


@app.callback()
def _root(as_json: JsonOpt = False) -> None:
    state["json"] = as_json


class Failure(Exception):
    """A message for the operator and an exit code; no traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        raise Failure(str(exc), 2) from None


def run_db(work: Callable[[AsyncSession], Awaitable[T]], *, needs_secret: bool = False) -> T:
    """Run `work` in one transaction; commit if it returns, roll back if it raises."""
    cfg = settings()
    if needs_secret and cfg.problems():
        raise Failure(str(ConfigError("invalid configuration:\n  - " + "\n  - ".join(
            cfg.problems()))), 2)
    if cfg.embedded:
        from app.migrate import upgrade
        upgrade(cfg.database_url)

    async def go() -> T:
        engine = create_engine(cfg)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except ApiError as exc:
        raise Failure(exc.message) from None
    except ConfigError as exc:
        raise Failure(str(exc), 2) from None
    except ValueError as exc:
        raise Failure(str(exc), 2) from None
    except (DBAPIError, OSError) as exc:
        raise Failure(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}\n"
                      "is the database reachable, and has `gih db upgrade` run?") from None


def emit(data: Any, human: str, as_json: bool) -> None:
    if as_json or state["json"]:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(human)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def parse_when(text: str | None, option: str) -> datetime | None:
    """ISO 8601 date or datetime; no offset means UTC."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 date, e.g. 2026-12-31 or 2026-12-31T00:00:00Z",
            param_hint=option) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= utcnow():
        raise typer.BadParameter(f"{text} is in the past", param_hint=option)
    return when


# users ---------------------------------------------------------------------------------------

@users_app.command("create")
def users_create(
    email: str,
    credits_: Annotated[int, typer.Option("--credits", min=0, help="Initial grant.")] = 0,
    credits_expire_at: Annotated[str | None, typer.Option(help="Its expiry (ISO).")] = None,
    account_type: Annotated[str, typer.Option(help="Plan label: FREE, PRO, ...")] = "FREE",
    as_json: JsonOpt = False,
) -> None:
    """Create a user, optionally with an initial credit grant."""
    expires_at = parse_when(credits_expire_at, "--credits-expire-at")
    if expires_at and not credits_:
        raise typer.BadParameter("needs --credits", param_hint="--credits-expire-at")

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.create(session, email, account_type=account_type)
        if credits_:
            await credits.grant(session, user.id, credits_, expires_at=expires_at,
                                note="initial grant")
        return {"id": user.id, "email": user.email, "account_type": user.account_type,
                "credits": user.credits, "created_at": iso(user.created_at)}

    user = run_db(work)
    emit(user, f"created user {user['email']} ({user['id']}), {user['account_type']}, "
               f"{user['credits']} credits\nnext: gih keys create {user['email']}", as_json)


# keys ----------------------------------------------------------------------------------------

def key_row(key: Any) -> dict[str, Any]:
    now = utcnow()
    status = ("revoked" if key.revoked_at else
              "expired" if key.expires_at and key.expires_at <= now else "active")
    return {"id": key.id, "name": key.name, "prefix": key.prefix, "status": status,
            "created_at": iso(key.created_at), "last_used_at": iso(key.last_used_at),
            "expires_at": iso(key.expires_at), "revoked_at": iso(key.revoked_at)}


@keys_app.command("create")
def keys_create(
    email: str,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, max=36500)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue an API key; the raw key is printed this once and never stored."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        issued = await api_keys.issue(session, user, secret=cfg.hashing_secret(), name=name,
                                      expires_at=expires_at)
        return {**key_row(issued.key), "key": issued.raw_key, "api_key": issued.raw_key,
                "user_id": user.id, "email": user.email}

    key = run_db(work, needs_secret=True)
    emit(key, f"API key {key['id']} for {key['email']} (shown once, store it now):\n\n"
              f"    {key['key']}\n", as_json)


@keys_app.command("list")
def keys_list(email: str, as_json: JsonOpt = False) -> None:
    """List a user's keys (prefixes only; raw keys are never stored)."""
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        user = await users.get_by_email(session, email)
        return [key_row(k) for k in await api_keys.list_for_user(session, user)]

    rows = run_db(work)
    emit(rows, table(rows, ["id", "name", "prefix", "status", "created_at", "last_used_at",
                            "expires_at"]) if rows else f"{email} has no keys", as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a key (by its id, or the raw key); it stops working immediately."""
    cfg = settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        return key_row(await api_keys.revoke(session, key_id.strip(),
                                             secret=cfg.hashing_secret()))

    key = run_db(work)
    emit(key, f"revoked {key['id']} ({key['prefix']}...) at {key['revoked_at']}", as_json)


# credits -------------------------------------------------------------------------------------

@credits_app.command("grant")
def credits_grant(
    email: str,
    amount: Annotated[int, typer.Argument(min=1)],
    expires_at: Annotated[str | None, typer.Option(help="When this grant expires (ISO).")] = None,
    note: Annotated[str | None, typer.Option(help="Why, for the ledger.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant credits to a user (a new lot, optionally expiring)."""
    when = parse_when(expires_at, "--expires-at")

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        lot = await credits.grant(session, user.id, amount, expires_at=when, note=note)
        balance = await credits.balance(session, user)
        return {"email": user.email, "granted": amount, "lot_id": lot.id,
                "expires_at": iso(when), "note": note, **balance_body(balance)}

    out = run_db(work)
    until = f" (expires {out['expires_at']})" if out["expires_at"] else ""
    emit(out, f"granted {amount} credits to {out['email']}{until}; "
              f"balance {out['credits']}", as_json)


@credits_app.command("show")
def credits_show(email: str, as_json: JsonOpt = False) -> None:
    """Show a user's balance, plan and next expiration."""
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        return {"email": user.email, "user_id": user.id,
                **balance_body(await credits.balance(session, user))}

    out = run_db(work)
    nxt = out["next_expiration"]
    expiring = f"; {nxt['credits']} expire at {nxt['expires_at']}" if nxt else ""
    emit(out, f"{out['email']}: {out['credits']} credits ({out['account_type']}){expiring}",
         as_json)


@credits_app.command("audit")
def credits_audit(as_json: JsonOpt = False) -> None:
    """Check every user's balance against the ledger and the lots; exit 1 on any mismatch."""
    problems = run_db(credits.audit)
    rows = [{"user_id": p.user_id, "email": p.email, "problem": p.message} for p in problems]
    human = ("audit clean: every balance equals its ledger and its lots" if not rows else
             table(rows, ["email", "user_id", "problem"]))
    emit({"ok": not rows, "problems": rows}, human, as_json)
    if rows:
        raise typer.Exit(1)


# db, serve -----------------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the latest migration."""
    from app.migrate import upgrade
    upgrade(settings().database_url)
    typer.echo("database schema is up to date")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default GIH_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default GIH_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    # Worker processes re-read the environment: make the flags their settings too.
    if host:
        os.environ["GIH_HOST"] = host
    if port:
        os.environ["GIH_PORT"] = str(port)
    get_settings.cache_clear()
    cfg = settings()
    try:
        cfg.check()
    except ConfigError as exc:
        raise Failure(str(exc), 2) from None
    if cfg.embedded:
        from app.migrate import upgrade
        upgrade(cfg.database_url)
        if run_db(users.count) == 0:
            typer.echo("No users yet. Create one and issue a key:\n"
                       "  gih users create you@example.com --credits 100\n"
                       "  gih keys create you@example.com\n", err=True)
    if workers > 1:
        share_metrics_between_processes()
    # SIGTERM: stop accepting, let in-flight requests (sync waits included) finish for up to
    # the grace period, then stop; anything cut off is finished by the worker or the sweep.
    options = {"host": cfg.host, "port": cfg.port, "workers": workers, "backlog": 2048,
               "log_config": None, "access_log": False, "timeout_keep_alive": 75,
               "timeout_graceful_shutdown": int(cfg.shutdown_grace_s)}
    if workers > 1:  # supervise from a fresh, small process (same pid, signals and output)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "app.serve", json.dumps(options)])
    uvicorn.run("app.main:create_app", factory=True, **options)


def share_metrics_between_processes() -> None:
    """prometheus-client's multiprocess mode: every worker process writes to one directory."""
    import shutil
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)  # values of a previous run are not ours
        os.makedirs(folder, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gih-metrics-")


@app.command()
def worker(
    check: Annotated[bool, typer.Option("--check", help="Exit 0 if a worker is alive (arq's "
                                        "health check in Redis), 1 if not.")] = False,
) -> None:
    """Run the background worker (arq on GIH_REDIS_URL): generation jobs and the sweep."""
    cfg = settings()
    problems = cfg.problems()
    if not cfg.redis_url:
        problems.append("GIH_REDIS_URL is required for `gih worker` (without it, `gih serve` "
                        "runs jobs in-process)")
    if problems:
        raise Failure("invalid configuration:\n  - " + "\n  - ".join(problems), 2)
    from arq.worker import check_health, run_worker

    from app import logs
    from worker.settings import WorkerSettings

    if check:
        raise typer.Exit(check_health(WorkerSettings))  # type: ignore[arg-type]
    logs.configure(cfg.log_level, cfg.log_format)
    if cfg.worker_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(cfg.worker_metrics_port, addr=cfg.host)
        except OSError as exc:  # another worker on this host has the port: run without
            logging.getLogger("gih.worker").warning(
                "metrics not served on port %s: %s", cfg.worker_metrics_port, exc)
    run_until_stopped(lambda: run_worker(WorkerSettings))  # type: ignore[arg-type]


def run_until_stopped(run: Any, backoff_s: float = 2.0) -> None:
    """arq's worker exits when Redis goes away; start it again (it re-reads everything), so a
    Redis restart does not need a supervisor. A signal ends it normally and ends this too."""
    import time

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    while True:
        try:
            run()
            return
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
            logging.getLogger("gih.worker").warning(
                "worker lost Redis (%s); starting again in %.0f s", exc, backoff_s)
            time.sleep(backoff_s)


def main() -> None:
    from app import logs

    logs.configure("INFO", os.environ.get("GIH_LOG_FORMAT", "json"))
    try:
        app()
    except Failure as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
