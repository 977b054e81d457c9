"""The console in a real browser (Debian's Chromium, driven by Playwright for Python), against the
embedded default and the production stack (`gih serve --workers 2` on PostgreSQL, Redis, S3 and
the OpenAI fake, with the session's `gih worker`):

- sign up -> create a key -> its raw key is shown once (gone after a reload) -> the key works
  with curl on /api/v1/credits -> revoke it in the page -> 401;
- the Playground generates an image that appears on Generations with its cost, and the Credits
  balance moved by exactly that;
- an admin grants credits in the Users page; the user's balance and ledger show it;
- no page breaks the Content-Security-Policy (no script or style refused);
- screenshots of every page at 1280x800 and 390x844 (tests/artifacts/console/), from which the
  README's docs/console-keys.png and docs/console-generations.png are made (< 300 KB each).

Playwright's own browser download cannot work offline: the browser is /usr/bin/chromium,
installed here with apt-get if it is missing.
"""

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import playwright.sync_api as playwright_sync  # a dev dependency: missing, the module fails
import pytest

from tests.conftest import REPO
from tests.fakes.processes import GIH, app_env, start_serve, stop_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = REPO / "tests" / "artifacts" / "console"
README_SHOTS = {"keys": REPO / "docs" / "console-keys.png",
                "generations": REPO / "docs" / "console-generations.png"}
MAX_README_PNG = 300 * 1024
PASSWORD = "browser test password"


def ensure_chromium() -> Path:
    """Debian's chromium, installed now if it is missing (CI machines start without it)."""
    if not CHROMIUM.exists():
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=600, check=True)
            subprocess.run(install, env=env, capture_output=True, timeout=900, check=True)
    assert CHROMIUM.exists(), "chromium could not be installed"
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(prod_env: dict[str, str],
            session_worker: object) -> Iterator["playwright_sync.Browser"]:
    """One browser for the module. Playwright's sync API keeps an event loop running in this
    thread until it stops, so what needs asyncio.run (the production stack's database, built
    by the migrations) is set up first, and the browser is gone before other modules run."""
    executable = ensure_chromium()
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable),
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Server:
    kind: str  # embedded | production
    base: str
    env: dict[str, str]  # for `gih` against the same database

    def gih(self, *args: str, stdin: str | None = None) -> dict:
        done = subprocess.run([GIH, *args, "--json"], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _serve(env: dict[str, str], folder: Path, kind: str, **options: object) -> Iterator[Server]:
    process, base = start_serve(env, folder / "serve.log", cwd=folder, **options)  # type: ignore[arg-type]
    try:
        yield Server(kind, base, app_env({**env, "GIH_PUBLIC_BASE_URL": base}))
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`gih serve` with only a folder of its own: sign-up is open by default here."""
    folder = tmp_path_factory.mktemp("console-embedded")
    env = {"GIH_DATABASE_URL": f"sqlite:///{folder}/data/gih.db",
           "GIH_LOCAL_STORAGE_DIR": str(folder / "images"), "GIH_SIGNUP_CREDITS": "100"}
    yield from _serve(env, folder, "embedded", workers=None)


@pytest.fixture(scope="module")
def production_server(prod_env: dict[str, str], session_worker: object,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console-production")
    env = {**prod_env, "GIH_SIGNUP": "open", "GIH_SIGNUP_CREDITS": "100"}
    yield from _serve(env, folder, "production", workers=2)


@pytest.fixture(params=["embedded", "production"])
def server(request: pytest.FixtureRequest) -> Server:
    """Both servers live for the whole module, whatever order the tests run in."""
    return request.getfixturevalue(f"{request.param}_server")  # type: ignore[no-any-return]


@pytest.fixture
def ready(server: Server, request: pytest.FixtureRequest) -> Server:
    if server.kind == "production":
        request.getfixturevalue("worker")  # the session's gih worker, running
        request.getfixturevalue("openai_fake")  # reset to its default behaviour
    return server


@dataclass
class Tab:
    page: "playwright_sync.Page"
    base: str
    refused: list[str]  # console messages of the CSP refusing something

    def go(self, path: str) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.status < 400, (path, response and
                                                                 response.status)

    def shot(self, name: str, server: Server) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        width = self.page.viewport_size["width"] if self.page.viewport_size else 0
        path = ARTIFACTS / f"{server.kind}-{name}-{width}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def tab(browser, ready: Server) -> Iterator[Tab]:
    context = browser.new_context(viewport=DESKTOP, locale="en-GB", timezone_id="Europe/Paris")
    context.set_default_timeout(30_000)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None)
    yield Tab(page, ready.base, refused)
    context.close()
    assert not refused, refused


def sign_up(tab: Tab, email: str) -> None:
    tab.go("/")
    tab.page.get_by_role("link", name="Sign up").click()
    tab.page.get_by_label("Email").fill(email)
    tab.page.get_by_label("Password").fill(PASSWORD)
    tab.page.get_by_role("button", name="Sign up").click()
    tab.page.wait_for_url("**/keys**")


def sign_in(tab: Tab, email: str, password: str = PASSWORD) -> None:
    tab.go("/sign-in")
    tab.page.get_by_label("Email").fill(email)
    tab.page.get_by_label("Password").fill(password)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_url("**/keys**")


def sign_out(tab: Tab) -> None:
    tab.page.get_by_role("button", name="Sign out").click()
    tab.page.wait_for_url("**/sign-in**")


def email(kind: str) -> str:
    return f"{kind}{time.monotonic_ns()}@example.com"


def curl_credits(base: str, key: str) -> tuple[int, dict]:
    done = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", f"{base}/api/v1/credits",
                           "-H", f"Authorization: Bearer {key}"],
                          capture_output=True, text=True, timeout=30, check=True)
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def balance_on_credits_page(tab: Tab) -> int:
    tab.go("/credits")
    return int(tab.page.get_by_test_id("balance").inner_text().replace(",", ""))


def test_sign_up_create_a_key_use_it_revoke_it(tab: Tab, ready: Server) -> None:
    page = tab.page
    sign_up(tab, email("keys"))
    assert page.get_by_role("heading", level=1).inner_text() == "API keys"
    page.get_by_label("Name").fill("curl test")
    page.get_by_role("button", name="Create key").click()
    raw = page.get_by_label("Secret key").input_value()
    assert raw.startswith("gih_live_") and len(raw) == 41
    assert page.get_by_role("button", name="Copy").is_visible()
    assert page.url.endswith("/keys")  # the address no longer re-posts the form
    page.reload()
    assert page.get_by_label("Secret key").count() == 0 and raw not in page.content()
    assert page.get_by_role("cell", name="curl test", exact=True).is_visible()

    status, body = curl_credits(ready.base, raw)
    assert status == 200 and body["credits"] == 100, body

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke curl test").click()
    page.wait_for_url("**/keys?notice=revoked")
    assert page.get_by_text("revoked", exact=True).first.is_visible()
    status, body = curl_credits(ready.base, raw)
    assert status == 401 and body["error"]["code"] == "invalidApiKey"


def test_the_playground_charges_what_generations_shows(tab: Tab, ready: Server) -> None:
    page = tab.page
    sign_up(tab, email("play"))
    before = balance_on_credits_page(tab)
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Prompt").fill("A lighthouse at dusk, cinematic")
    page.get_by_label("Aspect ratio").select_option("16:9")
    page.get_by_label("Tier").select_option("1K")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url("**/playground?generation=*", timeout=90_000)
    cost_text = page.get_by_test_id("cost").inner_text()
    assert cost_text.endswith("credits") and "held" not in cost_text, cost_text
    cost = int(cost_text.split()[0])
    assert cost == 8  # 1 image at 1K
    generation_id = page.url.rsplit("=", 1)[1]
    thumb = page.locator(".result img").first
    assert thumb.evaluate("img => img.complete && img.naturalWidth > 0")

    page.get_by_role("link", name="Generations").click()
    tile = page.locator(f'a[href="/generations/{generation_id}"]')
    assert tile.is_visible()
    assert tile.get_by_test_id("cost").inner_text() == f"{cost} credits"
    image = tile.locator("img")
    assert image.evaluate("img => img.complete && img.naturalWidth > 0 && img.naturalWidth <= 256")
    assert balance_on_credits_page(tab) == before - cost
    assert page.get_by_role("cell", name="charge").first.is_visible()

    tab.go(f"/generations/{generation_id}")
    assert page.get_by_role("heading", level=1).inner_text() == "Generation"
    assert page.get_by_text("A lighthouse at dusk, cinematic").is_visible()
    assert page.get_by_test_id("cost").inner_text() == f"{cost} credits"


def test_an_admin_grants_credits_in_the_users_page(browser, tab: Tab, ready: Server) -> None:
    admin = email("admin")
    ready.gih("users", "create", admin, "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    customer = email("customer")
    ready.gih("users", "create", customer, "--credits", "5", "--password-stdin",
              stdin=PASSWORD + "\n")
    page = tab.page
    sign_in(tab, admin)
    page.get_by_role("link", name="Users").click()
    page.get_by_label("Search").fill(customer)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=customer).click()
    assert page.get_by_role("heading", level=1).inner_text() == customer
    page.get_by_label("Credits", exact=True).fill("250")
    page.get_by_label("Note (optional)").fill("Invoice 1042")
    page.get_by_role("button", name="Grant credits").click()
    page.wait_for_url("**notice=granted")
    assert page.get_by_test_id("balance").inner_text() == "255"
    assert page.get_by_role("row").filter(has_text="Invoice 1042").is_visible()
    sign_out(tab)

    sign_in(tab, customer)
    assert balance_on_credits_page(tab) == 255
    row = page.get_by_role("row").filter(has_text="Invoice 1042")
    assert row.get_by_role("cell", name="+250").is_visible()


PAGES = [("sign-in", "/sign-in", "Sign in"), ("sign-up", "/sign-up", "Sign up"),
         ("keys", "/keys", "API keys"), ("credits", "/credits", "Credits"),
         ("generations", "/generations", "Generations"), ("generation", None, "Generation"),
         ("playground", None, "Playground"), ("webhooks", "/webhooks", "Webhooks"),
         ("account", "/account", "Account"), ("users", "/admin/users", "Users"),
         ("user", None, None), ("usage", "/admin/usage", "Usage")]


def test_every_page_at_desktop_and_phone_sizes(browser, tab: Tab, ready: Server) -> None:
    """A populated admin account; each page once per viewport, with one h1 naming it and no
    sideways scrolling on the phone."""
    admin = email("owner")
    ready.gih("users", "create", admin, "--admin", "--credits", "2000", "--password-stdin",
              stdin=PASSWORD + "\n")
    page = tab.page
    sign_in(tab, admin)
    for name in ("Production server", "Staging"):
        page.get_by_label("Name").fill(name)
        if name == "Staging":
            page.get_by_text("Limits (optional)").click()
            page.get_by_label("Requests per minute").fill("60")
            page.get_by_label("Credit limit", exact=True).fill("500")
            page.get_by_label("Credit limit resets").select_option("monthly")
            page.get_by_label("Expiry").select_option("90")
        page.get_by_role("button", name="Create key").click()
        page.get_by_label("Secret key").wait_for()
    prompts = [("A transparent perfume bottle on black marble", "1:1", "1"),
               ("A red bicycle against a pastel wall", "3:2", "2"),
               ("A lighthouse at dusk, cinematic", "16:9", "1")]
    for prompt, ratio, n in prompts:
        tab.go("/playground")
        page.get_by_label("Prompt").fill(prompt)
        page.get_by_label("Aspect ratio").select_option(ratio)
        page.get_by_label("Number of images").select_option(n)
        page.get_by_role("button", name="Generate").click()
        page.wait_for_url("**/playground?generation=*", timeout=90_000)
    playground = page.url.removeprefix(ready.base)
    generation = "/generations/" + playground.rsplit("=", 1)[1]
    tab.go("/admin/users")
    user_path = page.get_by_role("link", name=admin).get_attribute("href")
    paths = {"generation": generation, "playground": playground, "user": user_path}

    shots: dict[str, Path] = {}
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        for name, path, heading in PAGES:
            if name in ("sign-in", "sign-up"):
                continue
            tab.go(path or paths[name])
            titles = page.get_by_role("heading", level=1).all_inner_texts()
            assert titles == [heading or admin], (name, titles)
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 1, (name, viewport, overflow)
            shots[f"{name}-{viewport['width']}"] = tab.shot(name, ready)
    # Signed out: the sign-in and sign-up pages.
    anonymous = browser.new_context(viewport=DESKTOP)
    other = Tab(anonymous.new_page(), ready.base, tab.refused)
    for viewport in (DESKTOP, PHONE):
        other.page.set_viewport_size(viewport)
        for name, path, heading in PAGES[:2]:
            other.go(path or "")
            assert other.page.get_by_role("heading", level=1).all_inner_texts() == [heading]
            shots[f"{name}-{viewport['width']}"] = other.shot(name, ready)
    anonymous.close()
    assert len(shots) == 2 * len(PAGES)
    for path in shots.values():
        assert path.stat().st_size > 5_000, path  # not blank
    if ready.kind == "embedded":  # the README's pictures, from this run
        for name, target in README_SHOTS.items():
            shutil.copyfile(shots[f"{name}-1280"], target)
            assert target.stat().st_size < MAX_README_PNG, (target, target.stat().st_size)
