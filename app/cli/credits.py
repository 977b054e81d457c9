"""`gih credits`: grant, show and audit credits (through the ledger, like every movement)."""

from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as users
from app.cli.common import JsonOpt, emit, parse_when, run_db, table
from app.credits import service as credits
from app.schemas import iso

app = typer.Typer(help="Grant, show and audit credits.", no_args_is_help=True)


@app.command("grant")
def grant(
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
                "expires_at": iso(when), "note": note, **balance.model_dump(mode="json")}

    out = run_db(work)
    until = f" (expires {out['expires_at']})" if out["expires_at"] else ""
    emit(out, f"granted {amount} credits to {out['email']}{until}; "
              f"balance {out['credits']}", as_json)


@app.command("show")
def show(email: str, as_json: JsonOpt = False) -> None:
    """Show a user's balance, plan and next expiration."""
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        balance = await credits.balance(session, user)
        return {"email": user.email, "user_id": user.id, **balance.model_dump(mode="json")}

    out = run_db(work)
    nxt = out["next_expiration"]
    expiring = f"; {nxt['credits']} expire at {nxt['expires_at']}" if nxt else ""
    emit(out, f"{out['email']}: {out['credits']} credits ({out['account_type']}){expiring}",
         as_json)


@app.command("audit")
def audit(as_json: JsonOpt = False) -> None:
    """Check every user's balance against the ledger and the lots; exit 1 on any mismatch."""
    problems = run_db(credits.audit)
    rows = [{"user_id": p.user_id, "email": p.email, "problem": p.message} for p in problems]
    human = ("audit clean: every balance equals its ledger and its lots" if not rows else
             table(rows, ["email", "user_id", "problem"]))
    emit({"ok": not rows, "problems": rows}, human, as_json)
    if rows:
        raise typer.Exit(1)
