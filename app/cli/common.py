"""What every `gih` command shares: settings, one transaction per command, output."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import ConfigError, Settings, get_settings
from app.db import create_engine, create_sessionmaker, transaction, utcnow
from app.errors import ApiError

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
state = {"json": False}


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
            async with transaction(create_sessionmaker(engine)) as session:
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


def parse_when(text: str | None, option: str, *, past: bool = False) -> datetime | None:
    """ISO 8601 date or datetime; no offset means UTC. In the future unless `past`."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 date, e.g. 2026-12-31 or 2026-12-31T00:00:00Z",
            param_hint=option) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if not past and when <= utcnow():
        raise typer.BadParameter(f"{text} is in the past", param_hint=option)
    return when
