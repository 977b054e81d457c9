"""`gih users`: the accounts that own keys, credits and generations; their console passwords,
roles, and whether they are disabled."""

import sys
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import passwords
from app.accounts import service as users
from app.cli.common import Failure, JsonOpt, emit, parse_when, run_db
from app.credits import service as credits
from app.models import User, UserRole
from app.schemas import iso

app = typer.Typer(help="Manage users.", no_args_is_help=True)

PasswordStdinOpt = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from standard input (its first line).")]


def read_password(from_stdin: bool, *, required: bool) -> str | None:
    """The password from stdin, or asked twice at the terminal; checked against the rules
    (at least 10 characters)."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif required:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        return None
    try:
        passwords.check_rules(password)
    except passwords.WeakPassword as exc:
        raise Failure(str(exc), 2) from None
    return password


def shown(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "role": user.role.value,
            "account_type": user.account_type, "credits": user.credits,
            "has_password": user.password_hash is not None,
            "disabled_at": iso(user.disabled_at), "created_at": iso(user.created_at)}


@app.command("create")
def create(
    email: str,
    credits_: Annotated[int, typer.Option("--credits", min=0, help="Initial grant.")] = 0,
    credits_expire_at: Annotated[str | None, typer.Option(help="Its expiry (ISO).")] = None,
    account_type: Annotated[str, typer.Option(help="Plan label: FREE, PRO, ...")] = "FREE",
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role (the console's "
                                                        "Users and Usage, the admin API).")]
    = False,
    password_stdin: PasswordStdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user, optionally with an initial credit grant and a console password (without
    one, the user cannot sign in until `gih users set-password`)."""
    expires_at = parse_when(credits_expire_at, "--credits-expire-at")
    if expires_at and not credits_:
        raise typer.BadParameter("needs --credits", param_hint="--credits-expire-at")
    password = read_password(password_stdin, required=False)

    async def work(session: AsyncSession) -> dict[str, Any]:
        password_hash = (await passwords.hash_password_async(password)
                         if password is not None else None)
        user = await users.create(session, email, account_type=account_type,
                                  password_hash=password_hash,
                                  role=UserRole.ADMIN if admin else UserRole.USER)
        if credits_:
            await credits.grant(session, user.id, credits_, expires_at=expires_at,
                                note="initial grant")
        return shown(user)

    user = run_db(work)
    role = " admin," if user["role"] == UserRole.ADMIN else ""
    sign_in = ("" if user["has_password"]
               else f"\nto sign in: gih users set-password {user['email']}")
    emit(user, f"created user {user['email']} ({user['id']}),{role} {user['account_type']}, "
               f"{user['credits']} credits\nnext: gih keys create {user['email']}{sign_in}",
         as_json)


@app.command("set-password")
def set_password(email: str, password_stdin: PasswordStdinOpt = False,
                 as_json: JsonOpt = False) -> None:
    """Set a user's console password (asked twice, or read from stdin); their sessions end."""
    password = read_password(password_stdin, required=True)
    assert password is not None

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        await users.set_password(session, user, password)
        return shown(user)

    user = run_db(work)
    emit(user, f"password set for {user['email']}; their sessions were signed out", as_json)


@app.command("set-role")
def set_role(email: str, role: Annotated[UserRole, typer.Argument(case_sensitive=False)],
             as_json: JsonOpt = False) -> None:
    """Make a user an admin, or an ordinary user again."""
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        await users.set_role(session, user, role)
        return shown(user)

    user = run_db(work)
    emit(user, f"{user['email']} is now {user['role']}", as_json)


@app.command("disable")
def disable(email: str, as_json: JsonOpt = False) -> None:
    """Disable a user: their keys and console sessions stop working at once."""
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        await users.disable(session, user)
        return shown(user)

    user = run_db(work)
    emit(user, f"{user['email']} is disabled: their keys and sessions no longer work", as_json)


@app.command("enable")
def enable(email: str, as_json: JsonOpt = False) -> None:
    """Enable a disabled user again."""
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await users.get_by_email(session, email)
        await users.enable(session, user)
        return shown(user)

    user = run_db(work)
    emit(user, f"{user['email']} is enabled", as_json)
