"""The console's pages over HTTP (in-process, PostgreSQL and SQLite): each page's one h1 and
labelled fields, the security headers and a same-origin-only page, thumbnails (small WebP,
made once and kept), Cancel of a queued generation (refunded through the ledger), and the
Playground's errors shown on the page."""

import io
import re

from PIL import Image
from sqlalchemy import select

from app.generations import service as generations
from app.generations.request import parse_input
from app.ids import new_id
from app.keys.service import Principal
from app.models import GenerationStatus, User, UserRole
from tests.conftest import audit_problems, bearer, make_settings
from tests.console_helpers import Browser, csrf_of, h1s, make_person

PAGES = {"/keys": "API keys", "/credits": "Credits", "/generations": "Generations",
         "/playground": "Playground", "/webhooks": "Webhooks", "/account": "Account",
         "/admin/users": "Users", "/admin/usage": "Usage"}
EXTERNAL = re.compile(r'(?:src|href|action)="(?:https?:)?//', re.I)


def fields_without_labels(html: str) -> list[str]:
    ids = re.findall(r'<(?:input|select|textarea)\b(?![^>]*type="(?:hidden|submit)")[^>]*'
                     r'\bid="([^"]+)"', html)
    unnamed = re.findall(r'<(?:input|select|textarea)\b(?![^>]*type="hidden")(?![^>]*\bid=)'
                         r'(?![^>]*\bhidden\b)[^>]*>', html)
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    return [i for i in ids if i not in labelled] + unnamed


async def test_every_page_has_one_h1_labelled_fields_and_strict_headers(any_db) -> None:
    admin = await make_person(any_db.app, role=UserRole.ADMIN, credits_=50)
    async with Browser(any_db.app) as browser:
        for path, title in (("/sign-in", "Sign in"), ("/sign-up", "Sign up")):
            page = await browser.get(path)
            assert h1s(page.text) == [title] and not fields_without_labels(page.text)
        await browser.sign_in(admin.email)
        for path, title in PAGES.items():
            page = await browser.get(path)
            assert page.status_code == 200, path
            assert h1s(page.text) == [title], (path, h1s(page.text))
            assert not fields_without_labels(page.text), (path, fields_without_labels(page.text))
            assert not EXTERNAL.search(page.text), path  # nothing from another origin
            assert "<script>" not in page.text and " on" + "click=" not in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["cache-control"] == "no-store"
        for asset in ("/static/console.css", "/static/console.js", "/static/icon.svg"):
            assert (await browser.get(asset)).status_code == 200
        detail = await browser.get(f"/admin/users/{admin.user_id}")
        assert h1s(detail.text) == [admin.email]
        for empty in ("No generations yet.", "No keys yet.", "No deliveries yet."):
            pages = [await browser.get(p) for p in ("/generations", "/keys", "/webhooks")]
            assert any(empty in p.text for p in pages), empty
    # The JSON API keeps its envelope; unknown console-like paths too.
    answer = await any_db.http.get("/api/v1/admin/users")
    assert answer.json()["error"]["code"] == "missingApiKey"


async def test_thumbnails_are_small_webp_made_once(any_db, tmp_path) -> None:
    person = await make_person(any_db.app, credits_=100, with_key=True)
    made = (await any_db.http.post("/api/v1/images/generations", headers=bearer(person.key),
                                   json={"model": "gpt-image-2", "prompt": "big",
                                         "size": "1536x1024"})).json()
    image = made["images"][0]
    async with Browser(any_db.app) as browser:
        await browser.sign_in(person.email)
        listed = await browser.get("/generations")
        assert f"/thumbs/{image['id']}" in listed.text and image["url"] not in listed.text
        first = await browser.get(f"/thumbs/{image['id']}")
        assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
        picture = Image.open(io.BytesIO(first.content))
        assert picture.format == "WEBP" and max(picture.size) == 256
        assert picture.size == (256, 171)
        assert len(first.content) < 20_000
        storage = any_db.app.state.runtime.storage
        key = image["url"].split("/files/", 1)[1].rsplit("/", 1)[0] + "/thumb-0.webp"
        assert storage.path(key).is_file()  # kept beside the image
        again = await browser.get(f"/thumbs/{image['id']}")
        assert again.content == first.content
        full = await browser.get(f"/images/{image['id']}")
        assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).size == \
            (1536, 1024)


async def test_cancel_a_queued_generation_from_its_page(any_db) -> None:
    person = await make_person(any_db.app, credits_=100)
    rt = any_db.app.state.runtime
    wanted = parse_input({"model": "gpt-image-2", "prompt": "queued", "n": 2}, rt.catalog,
                         reference_count=0)
    async with rt.sessionmaker() as session, session.begin():  # accepted, its job not queued
        user = await session.get(User, person.user_id)
        accepted = await generations.accept(
            session, Principal(key_id=None, user=user), wanted, generation_id=new_id("gen"),
            references=[], fingerprint="x", idempotency_key=None, settings=rt.settings)
    generation_id = accepted.generation.id
    async with Browser(any_db.app) as browser:
        await browser.sign_in(person.email)
        page = await browser.get(f"/generations/{generation_id}")
        assert "16 credits held" in page.text and ">Cancel</button>" in page.text
        assert 'data-testid="balance">84<' in (await browser.get("/credits")).text
        answer = await browser.http.post(f"/generations/{generation_id}/cancel",
                                         data={"csrf_token": csrf_of(page.text)})
        assert answer.status_code == 303
        page = await browser.get(answer.headers["location"])
        assert "canceled and its credits refunded" in page.text
        assert ">Cancel</button>" not in page.text
        again = await browser.http.post(f"/generations/{generation_id}/cancel",
                                        data={"csrf_token": csrf_of(page.text)})
        assert again.headers["location"].endswith("notice=not-cancelable")
        assert 'data-testid="balance">100<' in (await browser.get("/credits")).text
    assert await rt.statuses.status(generation_id) == GenerationStatus.CANCELED
    assert not await audit_problems(make_settings(rt.settings.database_url))


async def test_playground_errors_are_shown_on_the_page(any_db) -> None:
    person = await make_person(any_db.app, credits_=10)
    async with Browser(any_db.app) as browser:
        await browser.sign_in(person.email)
        token = await browser.token("/playground")
        form = {"csrf_token": (None, token), "model": (None, "gpt-image-2"),
                "prompt": (None, "too many"), "n": (None, "4"), "quality": (None, "1K")}
        poor = await browser.http.post("/playground", files=form)
        assert poor.status_code == 402 and "needs 32 credits" in poor.text
        assert "too many" in poor.text  # the prompt is kept in the form
        blank = await browser.http.post("/playground", files={**form, "prompt": (None, "  ")})
        assert blank.status_code == 400 and "prompt must not be empty" in blank.text
        unknown = await browser.http.post("/playground", files={**form, "model": (None, "x")})
        assert unknown.status_code == 400 and "unknown model" in unknown.text
        ok = await browser.http.post("/playground", files={**form, "n": (None, "1")})
        assert ok.status_code == 303
        result = await browser.get(ok.headers["location"])
        assert 'data-testid="cost">8 credits<' in result.text
        assert 'data-testid="balance">2<' in result.text
    async with any_db.session() as session:
        user = await session.scalar(select(User).where(User.id == person.user_id))
    assert user.credits == 2
