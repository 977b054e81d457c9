"""`gih users`: the accounts that own keys, credits and generations."""

from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as users
from app.cli.common import JsonOpt, emit, parse_when, run_db
from app.credits import service as credits
from app.schemas import iso

app = typer.Typer(help="Manage users.", no_args_is_help=True)


@app.command("create")
def create(
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
