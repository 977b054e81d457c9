"""Sign up, Sign in, Sign out, and the Account page (change password, sign out everywhere)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.accounts import passwords, sessions
from app.accounts import service as accounts
from app.console.web import (
    ViewerDep,
    anonymous_token,
    check_csrf,
    checked_form,
    clear_cookie,
    redirect,
    render,
    resume,
    safe_next,
    set_cookie,
    start_session_cookie,
)
from app.deps import RuntimeDep
from app.errors import DuplicateEmail
from app.runtime import Runtime

router = APIRouter(include_in_schema=False)

NOTICES = {
    "password": "Your password was changed. Other browsers were signed out.",
    "everywhere": "You were signed out everywhere.",
    "signed-out": "You are signed out.",
}


def anonymous_page(request: Request, rt: Runtime, name: str, *, status: int = 200,
                   **context: Any) -> HTMLResponse:
    """A page shown before sign-in, with a form whose CSRF token is bound to a cookie."""
    value, new = anonymous_token(request)
    response = render(request, name, status=status,
                      csrf=sessions.csrf_token(rt.secret, value),
                      signup_open=rt.settings.signup_open, **context)
    if new:
        set_cookie(response, rt, sessions.ANON_COOKIE, value, max_age=None)
    return response


@router.get("/")
async def home(request: Request, rt: RuntimeDep) -> Response:
    signed = await resume(request, rt)
    return redirect("/keys" if signed else "/sign-in")


@router.get("/sign-in")
async def sign_in_page(request: Request, rt: RuntimeDep,
                       next_: Annotated[str | None, Query(alias="next")] = None,
                       notice: str | None = None) -> Response:
    if await resume(request, rt):
        return redirect(safe_next(next_))
    return anonymous_page(request, rt, "sign_in.html", next=safe_next(next_),
                          notice=NOTICES.get(notice or ""))


@router.post("/sign-in")
async def sign_in(request: Request, rt: RuntimeDep) -> Response:
    form = await request.form(max_files=0, max_fields=10)
    check_csrf(rt, request.cookies.get(sessions.ANON_COOKIE), form.get("csrf_token"))
    email, password = str(form.get("email") or ""), str(form.get("password") or "")
    target = safe_next(str(form.get("next") or ""))
    client = request.client.host if request.client else None
    refused = None
    async with rt.transaction() as session:  # committed either way: failures are counted
        try:
            user = await accounts.sign_in(session, email, password, client_address=client)
        except accounts.SignInRefused as exc:
            refused = exc
        else:
            session_id = await sessions.start(session, user, secret=rt.secret)
    if refused is not None:
        return anonymous_page(request, rt, "sign_in.html", status=429 if refused.throttled
                              else 401, error=refused.message, email=email, next=target)
    response = redirect(target)
    start_session_cookie(response, rt, session_id)
    return response


@router.get("/sign-up")
async def sign_up_page(request: Request, rt: RuntimeDep) -> Response:
    if await resume(request, rt):
        return redirect("/keys")
    return anonymous_page(request, rt, "sign_up.html",
                          status=200 if rt.settings.signup_open else 403,
                          signup_credits=rt.settings.signup_credits)


@router.post("/sign-up")
async def sign_up(request: Request, rt: RuntimeDep) -> Response:
    form = await request.form(max_files=0, max_fields=10)
    check_csrf(rt, request.cookies.get(sessions.ANON_COOKIE), form.get("csrf_token"))
    email, password = str(form.get("email") or "").strip(), str(form.get("password") or "")

    def again(error: str, status: int = 400) -> HTMLResponse:
        return anonymous_page(request, rt, "sign_up.html", status=status, error=error,
                              email=email, signup_credits=rt.settings.signup_credits)

    if not rt.settings.signup_open:
        return again("Sign-up is closed on this server. Ask its operator for an account.", 403)
    try:
        email = accounts.normalize_email(email)
        passwords.check_rules(password)
    except ValueError as exc:
        message = str(exc) if isinstance(exc, passwords.WeakPassword) else \
            "Enter a valid email address."
        return again(message[:1].upper() + message[1:] + ("" if message.endswith(".") else "."))
    try:
        async with rt.transaction() as session:
            signed_up = await accounts.sign_up(session, email, password,
                                               credits_=rt.settings.signup_credits)
            session_id = await sessions.start(session, signed_up.user, secret=rt.secret)
    except DuplicateEmail:
        return again("An account with this email already exists. Sign in instead.", 409)
    response = redirect("/keys?notice=welcome")
    start_session_cookie(response, rt, session_id)
    clear_cookie(response, rt, sessions.ANON_COOKIE)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    async with rt.transaction() as session:
        await sessions.end(session, viewer.signed.session_id, secret=rt.secret)
    response = redirect("/sign-in?notice=signed-out")
    clear_cookie(response, rt, sessions.COOKIE)
    return response


@router.get("/account")
async def account_page(request: Request, viewer: ViewerDep, rt: RuntimeDep,
                       notice: str | None = None) -> Response:
    async with rt.reader() as session:
        count = await sessions.count_for(session, viewer.user.id)
    return render(request, "account.html", viewer=viewer, sessions_count=count,
                  notice=NOTICES.get(notice or ""))


@router.post("/account/password")
async def change_password(request: Request, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    form = await checked_form(request, rt, viewer)
    current, new = str(form.get("current_password") or ""), str(form.get("new_password") or "")

    async def again(error: str, status: int) -> Response:
        async with rt.reader() as session:
            count = await sessions.count_for(session, viewer.user.id)
        return render(request, "account.html", status=status, viewer=viewer,
                      sessions_count=count, password_error=error)

    if not await passwords.verify(current, viewer.user.password_hash):
        return await again("The current password is not right.", 400)
    try:
        passwords.check_rules(new)
    except passwords.WeakPassword as exc:
        return await again(str(exc).capitalize() + ".", 400)
    async with rt.transaction() as session:
        user = await accounts.get(session, viewer.user.id, for_update=True)
        await accounts.set_password(session, user, new)  # ends every session
        session_id = await sessions.start(session, user, secret=rt.secret)
    response = redirect("/account?notice=password")
    start_session_cookie(response, rt, session_id)
    return response


@router.post("/account/sign-out-everywhere")
async def sign_out_everywhere(request: Request, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    await checked_form(request, rt, viewer)
    async with rt.transaction() as session:
        await sessions.end_all(session, viewer.user.id)
    response = redirect("/sign-in?notice=everywhere")
    clear_cookie(response, rt, sessions.COOKIE)
    return response
