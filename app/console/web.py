"""What every console page shares: the signed-in user (a session cookie), CSRF checks, cookies,
rendering with the security headers, and the console's error pages.

Pages are HTML; their errors are pages too (a PageError), while /api paths keep the JSON
envelope. Nothing is loaded from another origin, and no script runs inline, so the
Content-Security-Policy allows only this origin's files.
"""

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData

from app.accounts import sessions
from app.accounts.sessions import SignedIn
from app.deps import RuntimeDep
from app.models import User, UserRole
from app.ops.middleware import note
from app.runtime import Runtime
from app.schemas import iso

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
ASSET_VERSION = "4"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
SESSION_MAX_AGE_S = int(sessions.IDLE_EXPIRY.total_seconds())

templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                        autoescape=select_autoescape(["html"]), trim_blocks=True,
                        lstrip_blocks=True)
templates.filters["iso"] = iso


def _number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


templates.filters["number"] = _number
templates.globals["asset_version"] = ASSET_VERSION


class PageError(Exception):
    """A console error, answered as a page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class SignInRequired(Exception):
    """No valid session: the page answers a redirect to Sign in."""


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, and what their forms need."""

    signed: SignedIn
    csrf: str

    @property
    def user(self) -> User:
        return self.signed.user

    @property
    def is_admin(self) -> bool:
        return bool(self.signed.user.role == UserRole.ADMIN)


def set_cookie(response: Response, rt: Runtime, name: str, value: str, *,
               max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
                        secure=rt.settings.secure_cookies)


def clear_cookie(response: Response, rt: Runtime, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax",
                           secure=rt.settings.secure_cookies)


def start_session_cookie(response: Response, rt: Runtime, session_id: str) -> None:
    set_cookie(response, rt, sessions.COOKIE, session_id, max_age=SESSION_MAX_AGE_S)


async def resume(request: Request, rt: Runtime) -> SignedIn | None:
    async with rt.reader() as session:
        signed = await sessions.resume(session, request.cookies.get(sessions.COOKIE),
                                       secret=rt.secret)
        await session.commit()
    if signed is not None:
        note(request, user_id=signed.user.id)
    return signed


async def current_viewer(request: Request, rt: RuntimeDep) -> Viewer:
    signed = await resume(request, rt)
    if signed is None:
        raise SignInRequired()
    return Viewer(signed, sessions.csrf_token(rt.secret, signed.session_id))


async def current_admin(viewer: Annotated[Viewer, Depends(current_viewer)]) -> Viewer:
    if not viewer.is_admin:
        raise PageError(403, "Admins only", "This page is for administrators of this service.")
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]
AdminViewerDep = Annotated[Viewer, Depends(current_admin)]


def check_csrf(rt: Runtime, bound_to: str | None, token: object) -> None:
    if not sessions.csrf_valid(rt.secret, bound_to, token):
        raise PageError(403, "This form has expired",
                        "The form was missing its security token, or it was sent from another "
                        "page or an older session. Reload the page and try again.")


async def checked_form(request: Request, rt: Runtime, viewer: Viewer) -> FormData:
    """The posted form, once its CSRF token is that of the viewer's session (403 if not)."""
    form = await request.form(max_files=0, max_fields=50)
    check_csrf(rt, viewer.signed.session_id, form.get("csrf_token"))
    return form


def anonymous_token(request: Request) -> tuple[str, bool]:
    """The anonymous CSRF cookie's value (made if missing) and whether it is new."""
    value = request.cookies.get(sessions.ANON_COOKIE)
    if value and 20 <= len(value) <= 100:
        return value, False
    return secrets.token_urlsafe(24), True


def render(request: Request, name: str, *, status: int = 200, viewer: Viewer | None = None,
           **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(request=request, viewer=viewer,
                                               path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def safe_next(target: str | None, default: str = "/keys") -> str:
    """Only a path of this site (never //host or a scheme), to redirect to after sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def install(app: FastAPI) -> None:
    """The console's error pages and its static files."""
    from starlette.staticfiles import StaticFiles

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> HTMLResponse:
        viewer = None
        rt: Runtime = request.app.state.runtime
        signed = await resume(request, rt)
        if signed is not None:
            viewer = Viewer(signed, sessions.csrf_token(rt.secret, signed.session_id))
        return render(request, "error.html", status=exc.status, viewer=viewer,
                      title=exc.title, message=exc.message)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            return render(request, "error.html", status=403, title="You are signed out",
                          message="Your session has ended. Sign in again, then retry.")
        return redirect(f"/sign-in?next={quote(target, safe='/')}")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
