"""Webhooks in the embedded mode (SQLite, jobs and sweep in-process; the OpenAI fake upstream):
signed events delivered at least once to a real receiver on 127.0.0.1, retries, timeouts, 410,
the connect-time SSRF guard, secret rotation, and `gih webhooks`.

`Receiver` is the receiver: a threaded HTTP server that records every request and answers what
it is told (200, 500, 410, a redirect, or nothing at all for a while); `down()`/`up()` close
and reopen its port. The production path is in tests/test_webhooks_production.py.
"""

import asyncio
import ipaddress
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import func, select, text, update
from standardwebhooks import Webhook, WebhookVerificationError

from app.db import utcnow
from app.models import WebhookAttempt, WebhookEvent, WebhookSecret
from app.webhooks import jobs as webhook_jobs
from app.webhooks import ssrf
from app.webhooks.policy import get_policy
from tests.conftest import (
    REPO,
    TEST_SECRET,
    Client,
    bearer,
    make_settings,
    poll,
    running_client,
)
from tests.fakes.processes import GIH, app_env, free_port, stop_process, wait_for_port
from tests.helpers import run_json
from tests.waiting import wait_until_async

PROMPT = "A cinematic product photo of a perfume bottle"
HANG_S = 60.0  # a hanging answer waits this long at most (or until released)


# --- the receiver ------------------------------------------------------------------------------

@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, Any]:
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """Records every POST; answers from `script` (one answer per request, in order), then
    `answer`: an HTTP status, "hang" (nothing, until released or HANG_S), or "redirect:URL"."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answer: str = "200"
        self.script: list[str] = []
        self.received: list[Delivery] = []
        self.answered: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _next_answer(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else self.answer

    def up(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(Delivery(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        time.monotonic()))
                answer = receiver._next_answer()
                if answer == "hang":
                    receiver.release.wait(HANG_S)
                    answer = "200"
                try:
                    if answer.startswith("redirect:"):
                        self.send_response(302)
                        self.send_header("Location", answer.removeprefix("redirect:"))
                    else:
                        self.send_response(int(answer))
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    with receiver.lock:
                        receiver.answered.append(answer)
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None
            self.release = threading.Event()

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return len([d for d in self.received if path is None or d.path == path])

    async def wait_for(self, n: int, *, timeout: float = 30,
                       path: str | None = None) -> list[Delivery]:
        await wait_until_async(lambda: self.count(path) >= n, timeout=timeout,
                               what=lambda: f"{n} deliveries (got {self.count(path)})")
        with self.lock:
            return [d for d in self.received if path is None or d.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().up()
    yield server
    server.down()


# --- the app -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fresh_policy() -> Iterator[None]:
    """The delivery policy is read from GIH_WEBHOOK_* again after each test (and its
    monkeypatched environment) is done."""
    yield
    get_policy.cache_clear()


def set_policy(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"GIH_WEBHOOK_{name.upper()}", value)
    get_policy.cache_clear()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 0.3 s instead of 5 s, 1 min, ...; the 15 s timeout as it is."""
    set_policy(monkeypatch, retry_delays_s="0.3")


@pytest.fixture
def upstream_env(openai_fake, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_fake.base_url)
    return openai_fake


def embedded_settings(sqlite_url: str, tmp_path: Path, **overrides: object):
    values: dict[str, object] = {
        "local_storage_dir": tmp_path / "images", "provider": "openai",
        "provider_timeout_s": 10, "provider_max_retries": 0, "webhook_allow_private": True,
        "sweep_interval_s": 0.5}
    values.update(overrides)
    return make_settings(sqlite_url, **values)


@pytest.fixture
async def app(sqlite_url: str, tmp_path: Path, upstream_env) -> AsyncIterator[Client]:
    """The embedded app, allowed to call the receiver on 127.0.0.1."""
    async with running_client(embedded_settings(sqlite_url, tmp_path)) as client:
        yield client


def audit_and_no_pending_event(*database_urls: str) -> None:
    """`gih credits audit` is clean, and no event is left to be retried (by the apps of the
    modules that run next on the same databases)."""
    for url in database_urls:
        env = app_env({"GIH_DATABASE_URL": url, "GIH_SECRET_KEY": TEST_SECRET})
        done = subprocess.run([GIH, "credits", "audit"], capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        events = run_json("webhooks", "deliveries", "--limit", "10000", env=env)
        assert [e["id"] for e in events if e["status"] == "pending"] == [], url


@pytest.fixture(scope="module", autouse=True)
def audit_after_module(pg_url: str, sqlite_url: str) -> Iterator[None]:
    yield
    audit_and_no_pending_event(pg_url, sqlite_url)


async def submit(client: Client, key: str, **fields: object):
    body = {"model": "gpt-image-2", "prompt": PROMPT, "size": "1024x1024", **fields}
    return await client.http.post("/api/v1/images/generations", json=body, headers=bearer(key),
                                  timeout=60)


async def secret_of(client: Client, key: str) -> str:
    response = await client.http.get("/api/v1/webhooks/secret", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()["secret"]


def without_query(value: Any) -> Any:
    """The generation object with the query string of every URL dropped (presigned URLs are
    signed afresh on every read)."""
    if isinstance(value, dict):
        return {k: without_query(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_query(v) for v in value]
    if isinstance(value, str) and value.startswith(("http://", "https://")) and "?" in value:
        return urlunsplit(urlsplit(value)._replace(query=""))
    return value


async def event_of(client: Client, generation_id: str) -> WebhookEvent:
    async with client.session() as session:
        event = await session.scalar(select(WebhookEvent)
                                     .where(WebhookEvent.generation_id == generation_id))
    assert event is not None
    return event


async def attempts_of(client: Client, event_id: str) -> list[WebhookAttempt]:
    async with client.session() as session:
        return list(await session.scalars(select(WebhookAttempt)
                                          .where(WebhookAttempt.event_id == event_id)
                                          .order_by(WebhookAttempt.id)))


async def settled_event(client: Client, generation_id: str, *, timeout: float = 30,
                        status: str = "delivered") -> WebhookEvent:
    async def reached() -> WebhookEvent | None:
        event = await event_of(client, generation_id)
        return event if event.status == status else None

    return await wait_until_async(reached, timeout=timeout, interval=0.1,
                                  what=f"the event of {generation_id} {status}")


async def assert_one_verified_event(client: Client, key: str, receiver: Receiver,
                                    generation_id: str, kind: str,
                                    path: str = "/hook") -> Delivery:
    """Exactly one delivery, verified with the user's secret, whose data is the generation as
    GET returns it; and nothing more arrives."""
    [delivery] = await receiver.wait_for(1, path=path)
    payload = delivery.verify(await secret_of(client, key))
    assert payload["type"] == kind
    assert payload["timestamp"].endswith("Z") and len(payload["timestamp"]) == 24
    got = await client.http.get(f"/api/v1/generations/{generation_id}", headers=bearer(key))
    assert without_query(payload["data"]) == without_query(got.json())
    assert delivery.id.startswith("msg_")
    event = await settled_event(client, generation_id)
    assert (event.id, event.attempts, event.last_status) == (delivery.id, 1, 200)
    await asyncio.sleep(1.2)  # two sweep rounds: nothing is sent again
    assert receiver.count(path) == 1
    return delivery


# --- one event per final status ----------------------------------------------------------------

async def test_succeeded_generation_delivers_one_verified_event(app: Client,
                                                                receiver: Receiver) -> None:
    _, key = await app.user_with_key(100)
    response = await submit(app, key, webhook_url=receiver.url())
    assert response.status_code == 200, response.text
    body = response.json()
    delivery = await assert_one_verified_event(app, key, receiver, body["id"],
                                               "generation.succeeded")
    data = delivery.json["data"]
    assert data["status"] == "succeeded" and len(data["images"]) == 1
    assert delivery.headers["content-type"] == "application/json"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 30


async def test_failed_generation_delivers_one_verified_event(app: Client, receiver: Receiver,
                                                             upstream_env) -> None:
    _, key = await app.user_with_key(100)
    upstream_env.configure(fail_status=400, fail_code="moderation_blocked")
    response = await submit(app, key, webhook_url=receiver.url(), **{"async": True})
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    delivery = await assert_one_verified_event(app, key, receiver, generation_id,
                                               "generation.failed")
    assert delivery.json["data"]["error"]["code"] == "generationFailed"
    assert (await app.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"] == 100


async def test_canceled_generation_delivers_one_verified_event(
        sqlite_url: str, tmp_path: Path, upstream_env, receiver: Receiver) -> None:
    """One job at a time: a slow generation holds the only slot, so the next one stays queued
    and can be canceled (deliveries have slots of their own)."""
    upstream_env.configure(latency_ms=4000)
    settings = embedded_settings(sqlite_url, tmp_path, job_concurrency=1)
    async with running_client(settings) as client:
        _, key = await client.user_with_key(100)
        blocker = await submit(client, key, **{"async": True})
        queued = await submit(client, key, webhook_url=receiver.url(), **{"async": True})
        generation_id = queued.json()["id"]
        canceled = await client.http.post(f"/api/v1/generations/{generation_id}/cancel",
                                          headers=bearer(key))
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        delivery = await assert_one_verified_event(client, key, receiver, generation_id,
                                                   "generation.canceled")
        assert delivery.json["data"]["status"] == "canceled"
        await poll(client, key, blocker.json()["id"], timeout=30)


async def test_only_the_events_asked_for_are_sent(app: Client, receiver: Receiver) -> None:
    _, key = await app.user_with_key(100)
    response = await submit(app, key, webhook_url=receiver.url(),
                            webhook_events=["generation.failed"])
    assert response.status_code == 200, response.text
    await asyncio.sleep(1.2)
    assert receiver.count() == 0
    async with app.session() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.generation_id == response.json()["id"])) == 0


# --- retries -----------------------------------------------------------------------------------

async def test_receiver_down_then_up_is_delivered_on_a_retry(
        app: Client, receiver: Receiver, fast_retries) -> None:
    _, key = await app.user_with_key(100)
    receiver.down()
    response = await submit(app, key, webhook_url=receiver.url())
    generation_id = response.json()["id"]

    async def refused_twice() -> bool:
        event = await event_of(app, generation_id)
        return len(await attempts_of(app, event.id)) >= 2

    await wait_until_async(refused_twice, timeout=20, what="two refused attempts")
    receiver.up()
    await settled_event(app, generation_id)
    [delivery] = receiver.received
    event = await event_of(app, generation_id)
    assert delivery.id == event.id
    delivery.verify(await secret_of(app, key))
    attempts = await attempts_of(app, event.id)
    assert [a.status_code for a in attempts][-1] == 200
    assert all(a.status_code is None and "ConnectError" in (a.error or "")
               for a in attempts[:-1]), [(a.status_code, a.error) for a in attempts]
    assert event.attempts == len(attempts) >= 3


async def test_every_retry_carries_the_same_webhook_id(app: Client, receiver: Receiver,
                                                       fast_retries) -> None:
    _, key = await app.user_with_key(100)
    receiver.script = ["500", "503", "200"]
    response = await submit(app, key, webhook_url=receiver.url())
    event = await settled_event(app, response.json()["id"])
    deliveries = receiver.received
    assert [d.id for d in deliveries] == [event.id] * 3
    secret = await secret_of(app, key)
    for delivery in deliveries:  # each attempt signed afresh, at its own time
        delivery.verify(secret)
    attempts = await attempts_of(app, event.id)
    assert [(a.status_code, a.error) for a in attempts] == [
        (500, "HTTP 500: ok"), (503, "HTTP 503: ok"), (200, None)]


async def test_410_gone_stops_at_once(app: Client, receiver: Receiver, fast_retries) -> None:
    _, key = await app.user_with_key(100)
    receiver.answer = "410"
    response = await submit(app, key, webhook_url=receiver.url())
    event = await settled_event(app, response.json()["id"], status="gone")
    await asyncio.sleep(1.5)  # retries would come every 0.3 s
    assert receiver.count() == 1
    assert (event.attempts, event.last_status, event.next_attempt_at) == (1, 410, None)


async def test_retries_end_after_the_window(app: Client, receiver: Receiver,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    set_policy(monkeypatch, retry_delays_s="0.3", retry_window_s="1.5")
    _, key = await app.user_with_key(100)
    receiver.answer = "500"
    response = await submit(app, key, webhook_url=receiver.url())
    event = await settled_event(app, response.json()["id"], status="failed")
    tries = receiver.count()
    assert 3 <= tries == event.attempts and event.next_attempt_at is None
    assert event.last_status == 500
    await asyncio.sleep(1)
    assert receiver.count() == tries


async def test_a_hanging_receiver_times_out_at_15_s_and_is_retried(
        app: Client, receiver: Receiver, fast_retries) -> None:
    """The default timeout: 15 s (the only test that waits for it)."""
    assert get_policy().timeout_s == 15
    _, key = await app.user_with_key(100)
    receiver.script = ["hang"]
    response = await submit(app, key, webhook_url=receiver.url())
    started = time.monotonic()
    event = await settled_event(app, response.json()["id"], timeout=40)
    receiver.release.set()
    assert receiver.count() == 2
    first, second = await attempts_of(app, event.id)
    assert first.status_code is None and first.error == "timed out after 15 s"
    assert 14_900 <= first.duration_ms <= 16_500, first.duration_ms
    assert second.status_code == 200
    assert time.monotonic() - started < 25


def no_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the process died between the commit that ended a generation and the queueing of
    its delivery."""
    async def lost(*_args: object) -> None:
        return None

    monkeypatch.setattr(webhook_jobs, "dispatch", lost)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_jobs_of_one_attempt_at_once_send_it_once(
        database: str, sqlite_url: str, pg_url: str, tmp_path: Path, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Five jobs of the same attempt at once (duplicate enqueues, arq running a job again),
    and one of the next attempt: one claims the attempt, the others do nothing; while it is
    out, a later one does nothing either."""
    no_dispatch(monkeypatch)
    settings = make_settings(pg_url if database == "postgresql" else sqlite_url,
                             local_storage_dir=tmp_path / "images", webhook_allow_private=True,
                             sweep_interval_s=3600)  # no sweep after the first round
    async with running_client(settings) as client:
        rt = client.app.state.runtime
        _, key = await client.user_with_key(100)
        receiver.script = ["hang"]  # the first delivery holds its claim while it waits
        response = await submit(client, key, webhook_url=receiver.url())
        event = await event_of(client, response.json()["id"])
        assert (event.status, event.attempts) == ("pending", 0)
        racing = [asyncio.create_task(webhook_jobs.run_delivery(rt, event.id, n))
                  for n in (1, 1, 1, 1, 1, 2)]
        await receiver.wait_for(1)
        await asyncio.sleep(0.5)
        again = [webhook_jobs.run_delivery(rt, event.id, n) for n in (1, 2)]
        await asyncio.gather(*again)
        assert receiver.count() == 1
        receiver.release.set()
        await asyncio.gather(*racing)
        event = await settled_event(client, event.generation_id)
        assert receiver.count() == 1 and len(await attempts_of(client, event.id)) == 1
        assert event.attempts == 1


async def test_the_sweep_delivers_an_event_whose_dispatch_was_lost(
        app: Client, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process died between the commit that ended the generation and the queueing of its
    delivery: the event row is there, due; the sweep sends it."""
    no_dispatch(monkeypatch)
    _, key = await app.user_with_key(100)
    response = await submit(app, key, webhook_url=receiver.url())
    await assert_one_verified_event(app, key, receiver, response.json()["id"],
                                    "generation.succeeded")


# --- SSRF --------------------------------------------------------------------------------------

REFUSED_AT_SUBMIT = ["http://127.0.0.1/", "http://10.0.0.1/", "http://[::1]/",
                     "http://169.254.169.254/", "http://localhost/", "http://[::ffff:127.0.0.1]/",
                     "http://0.0.0.0/", "http://192.168.1.1:8080/x", "http://[fe80::1]/",
                     "http://100.64.0.1/", "http://224.0.0.1/", "http://2130706433/",
                     "http://[64:ff9b::a00:1]/", "http://[2002:7f00:1::]/"]


@pytest.mark.parametrize("url", REFUSED_AT_SUBMIT)
async def test_non_public_targets_are_refused_at_submit(sqlite_url: str, tmp_path: Path,
                                                        url: str) -> None:
    settings = make_settings(sqlite_url, local_storage_dir=tmp_path / "images")
    assert settings.webhook_allow_private is False
    async with running_client(settings) as client:
        _, key = await client.user_with_key(100)
        response = await submit(client, key, webhook_url=url)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and error["param"] == "webhook_url"
        assert "non-public" in error["message"]
        fields = {"model": "gpt-image-2", "prompt": PROMPT, "webhook_url": url}
        form = await client.http.post("/api/v1/images/generations", headers=bearer(key),
                                      files={k: (None, v) for k, v in fields.items()})
        assert form.status_code == 400, form.text
        assert form.json()["error"]["param"] == "webhook_url"
        compat = await client.http.post("/v1/images/generations", headers=bearer(key),
                                        json={"prompt": PROMPT, "webhook_url": url})
        assert compat.status_code == 400, compat.text
        assert (await client.http.get("/api/v1/credits",
                                      headers=bearer(key))).json()["credits"] == 100


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("8.8.8.8", True), ("2606:4700::1111", True),
    ("::ffff:8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("255.255.255.255", False), ("224.0.0.251", False),
    ("240.0.0.1", False), ("198.18.0.1", False), ("::1", False), ("::", False),
    ("fe80::1", False), ("fc00::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::ffff:0:7f00:1", False), ("64:ff9b::7f00:1", False),
    ("2002:a00:1::", False), ("2001:db8::1", False)])
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert ssrf.is_public(ipaddress.ip_address(address)) is public


async def test_an_unresolvable_host_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    async with running_client(make_settings(sqlite_url,
                                            local_storage_dir=tmp_path / "images")) as client:
        _, key = await client.user_with_key(100)
        response = await submit(client, key, webhook_url="http://no-such-host.invalid/hook")
        assert response.status_code == 400, response.text
        assert "does not resolve" in response.json()["error"]["message"]


async def test_dns_rebinding_is_refused_at_connect_time(
        sqlite_url: str, tmp_path: Path, upstream_env, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch, fast_retries) -> None:
    """A name that is public when the request is checked and loopback when the event is sent
    (DNS rebinding): the connection is never made."""
    answers = {"first": True}

    async def rebinding(host: str, port: int) -> list[ssrf.IPAddress]:
        if host != "rebind.example":
            return await real_resolve(host, port)
        if answers.pop("first", False):  # the check at submit: a public address
            return [ipaddress.ip_address("93.184.216.34")]
        return [ipaddress.ip_address("127.0.0.1")]  # ... then the receiver's

    real_resolve = ssrf.resolve
    monkeypatch.setattr(ssrf, "resolve", rebinding)
    url = f"http://rebind.example:{receiver.port}/hook"
    async with running_client(embedded_settings(sqlite_url, tmp_path,
                                                webhook_allow_private=False)) as client:
        _, key = await client.user_with_key(100)
        response = await submit(client, key, webhook_url=url)
        assert response.status_code == 200, response.text

        async def refused_twice() -> bool:
            event = await event_of(client, response.json()["id"])
            return len(await attempts_of(client, event.id)) >= 2

        await wait_until_async(refused_twice, timeout=20, what="two refused attempts")
        event = await event_of(client, response.json()["id"])
        assert receiver.count() == 0
        assert event.status == "pending" and event.last_status is None
        assert event.last_error == \
            "refused: webhook_url points to a non-public address: rebind.example (127.0.0.1)"
        async with client.session() as session, session.begin():  # no retry after this test
            await session.execute(update(WebhookEvent).where(WebhookEvent.id == event.id)
                                  .values(status="failed", next_attempt_at=None))


async def test_a_redirect_is_not_followed(app: Client, receiver: Receiver,
                                          fast_retries) -> None:
    """A 302 to loopback (the receiver's own /stolen): not followed, a failed attempt, and
    retried."""
    _, key = await app.user_with_key(100)
    target = receiver.url("/stolen")
    receiver.script = [f"redirect:{target}", f"redirect:{target}"]
    response = await submit(app, key, webhook_url=receiver.url())
    event = await settled_event(app, response.json()["id"])
    assert receiver.count("/stolen") == 0 and receiver.count("/hook") == 3
    attempts = await attempts_of(app, event.id)
    assert [a.status_code for a in attempts] == [302, 302, 200]
    assert attempts[0].error == f"HTTP 302 (redirect to {target} not followed)"


# --- secrets -----------------------------------------------------------------------------------

async def test_rotation_signs_with_both_secrets_for_24_h(app: Client, receiver: Receiver) -> None:
    user, key = await app.user_with_key(100)
    first = await app.http.get("/api/v1/webhooks/secret", headers=bearer(key))
    assert first.status_code == 200
    old = first.json()
    assert set(old) == {"object", "secret", "created_at"} and old["object"] == "webhook_secret"
    assert old["secret"].startswith("whsec_") and len(old["secret"]) == 6 + 44
    rotated = await app.http.post("/api/v1/webhooks/secret/rotate", headers=bearer(key))
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["object"] == "webhook_secret" and new["secret"] != old["secret"]
    assert await secret_of(app, key) == new["secret"]

    response = await submit(app, key, webhook_url=receiver.url("/overlap"))
    [during] = await receiver.wait_for(1, path="/overlap")
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verify(old["secret"]) == during.verify(new["secret"])
    await settled_event(app, response.json()["id"])

    async with app.session() as session, session.begin():  # 24 h later
        await session.execute(update(WebhookSecret).where(
            WebhookSecret.user_id == user.id, WebhookSecret.retired_at.is_not(None))
            .values(retired_at=utcnow() - timedelta(hours=24, seconds=1)))
    response = await submit(app, key, webhook_url=receiver.url("/after"))
    [after] = await receiver.wait_for(1, path="/after")
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    after.verify(new["secret"])
    with pytest.raises(WebhookVerificationError):
        after.verify(old["secret"])
    with pytest.raises(WebhookVerificationError):  # and a tampered body fails
        Webhook(new["secret"]).verify(after.body.replace(b"succeeded", b"failed"),
                                      after.headers)


async def test_secrets_are_per_user_stable_and_never_stored(app: Client) -> None:
    user, key = await app.user_with_key(0)
    _, other = await app.user_with_key(0)
    mine = await secret_of(app, key)
    assert await secret_of(app, key) == mine != await secret_of(app, other)
    async with app.session() as session:
        rows = (await session.execute(text("SELECT * FROM webhook_secrets"))).all()
    dump = json.dumps([list(map(str, row)) for row in rows])
    assert user.id in dump
    body = mine.removeprefix("whsec_")
    assert body not in dump and body[:16] not in dump and TEST_SECRET not in dump


async def test_webhook_endpoints_need_a_key(app: Client) -> None:
    for method, path in (("GET", "/api/v1/webhooks/secret"),
                         ("POST", "/api/v1/webhooks/secret/rotate")):
        response = await app.http.request(method, path)
        assert response.status_code == 401 and response.json()["error"]["code"] == \
            "missingApiKey"
        assert response.headers["www-authenticate"] == "Bearer"


# --- gih webhooks ------------------------------------------------------------------------------

def cli_env(settings) -> dict[str, str]:
    return app_env({"GIH_DATABASE_URL": settings.database_url, "GIH_SECRET_KEY": TEST_SECRET,
                    "GIH_LOCAL_STORAGE_DIR": str(settings.local_storage_dir),
                    "GIH_PUBLIC_BASE_URL": "http://testserver", "GIH_PROVIDER": "mock",
                    "GIH_WEBHOOK_ALLOW_PRIVATE": "true"})


async def test_cli_secret_deliveries_and_redeliver(app: Client, receiver: Receiver) -> None:
    user, key = await app.user_with_key(100)
    env = cli_env(app.app.state.runtime.settings)
    shown = await asyncio.to_thread(run_json, "webhooks", "secret", user.email, env=env)
    assert shown["secret"] == await secret_of(app, key) and shown["email"] == user.email

    receiver.answer = "410"
    response = await submit(app, key, webhook_url=receiver.url())
    generation_id = response.json()["id"]
    gone = await settled_event(app, generation_id, status="gone")
    listed = await asyncio.to_thread(run_json, "webhooks", "deliveries", "--user", user.email,
                                     "--failed", env=env)
    assert [(d["id"], d["status"], d["tries"], d["last_status"], d["url"]) for d in listed] == \
        [(gone.id, "gone", 1, 410, receiver.url())]

    receiver.answer = "200"
    redelivered = await asyncio.to_thread(run_json, "webhooks", "redeliver", gone.id, env=env)
    assert (redelivered["status"], redelivered["tries"], redelivered["last_status"]) == \
        ("delivered", 2, 200)
    first, again = receiver.received
    assert again.id == first.id == gone.id
    payload = again.verify(shown["secret"])
    got = await app.http.get(f"/api/v1/generations/{generation_id}", headers=bearer(key))
    assert payload["data"] == got.json()
    listed = await asyncio.to_thread(run_json, "webhooks", "deliveries", "--user", user.email,
                                     env=env)
    assert [d["status"] for d in listed] == ["delivered"]
    # in a thread: the in-process app must go on (a job of its may hold SQLite's write lock)
    human = await asyncio.to_thread(subprocess.run, [GIH, "webhooks", "deliveries", "--user",
                                                     user.email],
                                    env=env, capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and gone.id in human.stdout and "delivered" in human.stdout
    unknown = subprocess.run([GIH, "webhooks", "redeliver", "msg_nope"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "no webhook event" in unknown.stderr


# --- the README's receiver ---------------------------------------------------------------------

def readme_python(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    block = text[text.index(f"<!-- {marker} -->"):text.index(f"<!-- /{marker} -->")]
    return block.split("```python\n", 1)[1].rsplit("```", 1)[0]


async def test_the_readme_receiver_verifies_what_is_sent(app: Client, tmp_path: Path) -> None:
    _, key = await app.user_with_key(100)
    port = free_port()
    script = tmp_path / "receiver.py"
    script.write_text(readme_python("webhook-receiver"))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, start_new_session=True,
        env=app_env({"GIH_WEBHOOK_SECRET": await secret_of(app, key), "PORT": str(port)}))
    try:
        await asyncio.to_thread(wait_for_port, port)
        forged = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=b'{"type": "generation.succeeded"}',
            headers={"webhook-id": "msg_forged", "webhook-timestamp": str(int(time.time())),
                     "webhook-signature": "v1,c2lnbmVkIGJ5IG5vYm9keQ=="})
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, forged, timeout=10)
        assert refused.value.code == 400
        response = await submit(app, key, webhook_url=f"http://127.0.0.1:{port}/gih")
        event = await settled_event(app, response.json()["id"])
        assert event.last_status == 204
        await webhook_jobs.redeliver(app.app.state.runtime, event.id)  # the same event again
    finally:
        stop_process(process, 5)
    output = process.stdout.read() if process.stdout else ""
    assert output.splitlines() == [f"generation.succeeded {response.json()['id']} succeeded"]
