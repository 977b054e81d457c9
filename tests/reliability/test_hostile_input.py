"""Hostile input: what an attacker (or a broken client) can send, and what the server does.

Raw-socket and memory cases run against a real `gih serve` in the embedded default (an empty
folder, SQLite, local storage, mock provider), with its own TMPDIR so that leftover upload files
can be seen; the rest run in-process on PostgreSQL. Every refusal must be a 400 in the contract's
envelope (or, for a malformed HTTP request, the HTTP layer's own 400), never a 5xx, quickly, in
bounded memory, with nothing charged and nothing left on disk; and the server's log of each test
holds no traceback, no 5xx and not the test's key. Refused uploads as such (corrupt or mislabelled
images, 17 references, parts without a name) are in tests/test_uploads.py; the 53.5 MB upload's
memory in tests/test_embedded.py; these go further.
"""

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.config import Settings
from tests.conftest import Account, bearer, create_account_sync
from tests.fakes.processes import start_serve, stop_process
from tests.helpers import (
    BASE,
    PNG_BYTES,
    assert_400,
    assert_nothing_charged,
    get,
    held_connections,
    peak_rss_mb,
    reset_peak,
)
from tests.payloads import (
    BASE_PARTS,
    MULTIPART,
    form,
    form_part,
    jpeg_bomb,
    noise_png,
    png_bomb,
    webp_bomb,
)
from tests.waiting import wait_until

CREDITS = 1000


# --- a real `gih serve`, embedded ---------------------------------------------------------

@dataclass
class Api:
    base: str
    port: int
    pid: int
    cwd: Path
    tmp: Path  # the server's TMPDIR: upload temp files live here while a request runs
    log: Path

    def account(self) -> Account:
        settings = Settings(database_url=f"sqlite:///{self.cwd / 'data' / 'gih.db'}")
        return create_account_sync(settings, CREDITS)

    def leftovers(self) -> list[str]:
        return sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*"))

    def open_fds(self) -> tuple[int, int]:
        """(sockets, temp files) the server process holds open; database connections, which
        its pool keeps after a burst, are not counted."""
        links = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                links.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
        return (sum(link.startswith("socket:") for link in links),
                sum(link.startswith(str(self.tmp)) for link in links))


@dataclass
class Caller:
    """The server and a user of this test's own, with a key."""

    api: Api
    key: str
    user_id: str

    @property
    def port(self) -> int:
        return self.api.port

    def state(self) -> tuple[int, int, int]:
        """(balance, generations, ledger rows) of the user."""
        status, body = get(f"{self.api.base}/api/v1/credits", self.key)
        assert status == 200, body
        db = sqlite3.connect(f"file:{self.api.cwd / 'data' / 'gih.db'}?mode=ro", uri=True)
        try:
            generations = db.execute("SELECT count(*) FROM generations WHERE user_id = ?",
                                     (self.user_id,)).fetchone()[0]
            ledger = db.execute("SELECT count(*) FROM credit_ledger WHERE user_id = ?",
                                (self.user_id,)).fetchone()[0]
        finally:
            db.close()
        return body["credits"], generations, ledger


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    cwd = tmp_path_factory.mktemp("hostile")
    tmp = cwd / "tmp"
    tmp.mkdir()
    log = tmp_path_factory.mktemp("hostile-log") / "serve.log"
    process, base = start_serve({"TMPDIR": str(tmp)}, log, workers=None, cwd=cwd,
                                set_base_url=False)
    yield Api(base=base, port=int(base.rsplit(":", 1)[1]), pid=process.pid, cwd=cwd, tmp=tmp,
              log=log)
    stop_process(process)


@pytest.fixture
def caller(api: Api) -> Iterator[Caller]:
    """A user of the test's own; afterwards the server's log of the test must hold no crash,
    no 5xx and not the key."""
    account = api.account()
    offset = api.log.stat().st_size
    yield Caller(api, account.key, account.user_id)
    with open(api.log, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    assert account.key not in text and account.key.removeprefix("gih_live_")[:16] not in text
    assert "Traceback" not in text and "unhandled error" not in text, text[-3000:]
    statuses = [json.loads(line).get("status") for line in text.splitlines()
                if line.startswith("{") and '"event": "request"' in line]
    assert all(s < 500 for s in statuses), statuses


@pytest.fixture
def untouched(caller: Caller) -> Iterator[Caller]:
    """The test's requests are all refused: nothing charged, no generation, no temp file."""
    before = caller.state()
    yield caller
    assert caller.state() == before, "a refused request charged or created something"
    # the request's own clean-up may trail its answer a bit
    wait_until(lambda: caller.api.leftovers() == [], timeout=5,
               what=lambda: f"no upload temp file left: {caller.api.leftovers()}")


def curl(caller: Caller, *args: str, timeout: float = 120) -> tuple[int, dict, int, float]:
    """(status, JSON body, bytes the client managed to upload, seconds) of one curl call."""
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code} %{size_upload} %{time_total}",
         f"{caller.api.base}/api/v1/images/generations", "-H",
         f"Authorization: Bearer {caller.key}",
         *args], capture_output=True, text=True, timeout=timeout)
    body, figures = result.stdout.rsplit("\n", 1)
    status, uploaded, seconds = figures.split()
    return int(status), json.loads(body) if body else {}, int(uploaded), float(seconds)


def assert_envelope_400(status: int, body: dict, param: str | None = None) -> dict:
    assert status == 400, body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == "invalid_request" and error["message"], error
    if param:
        assert error.get("param") == param, error
    return error


def exchange(caller: Caller, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes (requests carry Connection: close)."""
    with socket.create_connection(("127.0.0.1", caller.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def parse_response(raw: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, body


def raw_post(caller: Caller, body: bytes, extra_headers: bytes = b"",
             content_type: bytes = b"application/json") -> bytes:
    return (b"POST /api/v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"Authorization: Bearer " + caller.key.encode() + b"\r\n"
            + b"Content-Type: " + content_type + b"\r\n" + extra_headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body)


def measure(caller: Caller, action) -> tuple[object, float, float]:
    """Run action() and return (its result, seconds, peak RSS growth of the server in MB)."""
    pid = caller.api.pid
    reset_peak(pid)
    before = peak_rss_mb(pid)
    started = time.monotonic()
    result = action()
    seconds = time.monotonic() - started
    return result, seconds, peak_rss_mb(pid) - before


# --- bodies --------------------------------------------------------------------------------

@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_10_mb_json_body_is_answered_before_it_is_all_read(untouched: Caller, transfer: str,
                                                           tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**BASE, "padding": "x" * (10 * 1024 * 1024)}))
    args = ["-H", "Content-Type: application/json", "--data-binary", f"@{big}"]
    if transfer == "chunked":
        args += ["-H", "Transfer-Encoding: chunked"]
    (status, body, _, _), seconds, growth = measure(untouched, lambda: curl(untouched, *args))
    error = assert_envelope_400(status, body)
    assert "larger than" in error["message"]
    assert seconds < 10 and growth < 10


@pytest.mark.parametrize("body", [
    b'{"a":' * 150_000 + b"1" + b"}" * 150_000,
    json.dumps(BASE).encode()[:-1] + b', "extra": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    json.dumps(BASE).encode()[:-1] + b', "n": ' + b'{"n":' * 50_000 + b"1" + b"}" * 50_000
    + b"}",
], ids=["nested objects", "nested in an unknown field", "nested in n"])
async def test_deeply_nested_json(pg, body: bytes) -> None:
    user, key = await pg.user_with_key(100)
    started = time.monotonic()
    response = await pg.http.post("/api/v1/images/generations", content=body,
                                  headers={**bearer(key), "Content-Type": "application/json"})
    assert_400(response)
    assert time.monotonic() - started < 10
    await assert_nothing_charged(pg, user, key, 100)


@pytest.mark.parametrize("body", [
    b'{"model": "gpt-image-2", "prompt": "caf\xe9"}',  # latin-1 inside a string
    b'{"model": "gpt-image-2", "prompt": "\xc0\xafetc"}',  # overlong encoding of "/"
    b'{"model": "gpt-image-2", "prompt": "\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
    b'{"model": "gpt-image-2", "prompt": "cut \xe0\xb8"}',  # a truncated sequence
    b'{"model": "gpt-image-2", "prompt": "\xf8\x88\x80\x80\x80"}',  # 5-byte form
], ids=["latin-1", "overlong", "surrogate bytes", "truncated", "five-byte"])
async def test_invalid_utf8_inside_json_strings(pg, body: bytes) -> None:
    user, key = await pg.user_with_key(100)
    response = await pg.http.post("/api/v1/images/generations", content=body,
                                  headers={**bearer(key), "Content-Type": "application/json"})
    assert_400(response)
    await assert_nothing_charged(pg, user, key, 100)


# --- multipart -----------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["small fields", "references", "100 KB files"])
def test_a_thousand_multipart_parts(untouched: Caller, what: str, tmp_path: Path) -> None:
    """Refused at part 65 (or at the 17th reference, after 16 were streamed to temp files and
    checked). The server then drains what the client is still sending, up to 64 MB, so that the
    client sees the 400 rather than a reset; past that it stops reading."""
    if what == "small fields":
        parts = [form_part(f"field{i}", b"v" * 20) for i in range(1000)]
        expected = "too many multipart parts"
    elif what == "references":  # every one a valid PNG
        parts = [form_part("reference_image", PNG_BYTES, f"{i}.png", "image/png")
                 for i in range(1000)]
        expected = "at most 16 reference images"
    else:  # 100 MB in all
        parts = [form_part(f"file{i}", b"\0" * 100 * 1024, f"{i}.bin") for i in range(1000)]
        expected = "too many multipart parts"
    path = tmp_path / "parts.bin"
    path.write_bytes(form(*BASE_PARTS, *parts))
    (status, body, uploaded, _), seconds, growth = measure(untouched, lambda: curl(
        untouched, "-H", f"Content-Type: {MULTIPART}", "--data-binary", f"@{path}"))
    error = assert_envelope_400(status, body)
    assert expected in error["message"]
    assert seconds < 15 and growth < 10
    if what == "100 KB files":  # the server stopped reading long before the 100 MB
        assert uploaded < 90 * 1024 * 1024


# --- reference images -----------------------------------------------------------------------

BOMBS = {
    "png": (png_bomb, "100000x100000 pixels, more than the 100000000 pixel limit"),
    # above our limit (100 M pixels), below the one Pillow would apply itself (~179 M)
    "png, 12000x10000": (lambda: png_bomb(12_000, 10_000),
                         "12000x10000 pixels, more than the 100000000 pixel limit"),
    "jpeg": (jpeg_bomb, "65500x65500 pixels, more than the 100000000 pixel limit"),
    # (Pillow's WebP decoder refuses a canvas this size itself, as "not a decodable image")
    "webp": (webp_bomb, "(268435456 pixels) exceeds limit"),
}


@pytest.mark.parametrize("image", list(BOMBS))
def test_decompression_bombs_are_refused_quickly(untouched: Caller, image: str,
                                                  tmp_path: Path) -> None:
    make, message = BOMBS[image]
    path = tmp_path / "bomb.img"
    path.write_bytes(make())
    (status, body, _, _), seconds, growth = measure(untouched, lambda: curl(
        untouched, "-F", "model=gpt-image-2", "-F", "prompt=x",
        "-F", f"reference_image=@{path}"))
    error = assert_envelope_400(status, body, "reference_image")
    assert error["message"].startswith("reference_image #1 is ") and message in error["message"]
    assert seconds < 5 and growth < 20


@pytest.fixture(scope="module")
def blob_51_mb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG signature, then 51 MB of noise."""
    blob = tmp_path_factory.mktemp("blob") / "51mb.png"
    with open(blob, "wb") as out:
        out.write(PNG_BYTES)
        out.write(os.urandom(51 * 1024 * 1024))
    return blob


@pytest.mark.parametrize("how", ["chunked reference", "unknown file field", "text field"])
def test_51_mb_parts_stream_past_with_bounded_memory(untouched: Caller, how: str,
                                                     blob_51_mb: Path) -> None:
    args = {
        "chunked reference": ["-H", "Transfer-Encoding: chunked",
                              "-F", f"reference_image=@{blob_51_mb};type=image/png"],
        "unknown file field": ["-F", f"attachment=@{blob_51_mb}"],
        "text field": ["-F", f"prompt2=<{blob_51_mb}"],
    }[how]
    (status, body, _, _), seconds, growth = measure(untouched, lambda: curl(
        untouched, "-F", "model=gpt-image-2", "-F", "prompt=x", *args))
    error = assert_envelope_400(status, body)
    assert "limit" in error["message"] or "longer than" in error["message"], error
    assert growth < 20 and seconds < 30


def test_200_mb_reference_is_refused_without_reading_it_all(untouched: Caller,
                                                            tmp_path: Path) -> None:
    blob = tmp_path / "200mb.png"
    with open(blob, "wb") as out:
        out.write(PNG_BYTES)
        out.truncate(200 * 1024 * 1024)  # sparse: no 200 MB written to disk
    (status, body, uploaded, _), seconds, growth = measure(untouched, lambda: curl(
        untouched, "-F", "model=gpt-image-2", "-F", "prompt=x", "-F", f"reference_image=@{blob}"))
    assert_envelope_400(status, body, "reference_image")
    assert uploaded < 150 * 1024 * 1024  # the server stopped reading
    assert growth < 20 and seconds < 30


# --- headers -------------------------------------------------------------------------------

INVALID = json.dumps({"model": "no-such-model", "prompt": "x"}).encode()


@pytest.mark.parametrize("header", [
    b"Idempotency-Key: abc\r\nX-Evil: injected\r\n",
    b"Idempotency-Key: abc\nX-Evil: injected\r\n",
    b"Idempotency-Key: abc\rX-Evil: injected\r\n",
    b"Idempotency-Key: ab\x00c\r\n",
    b"Idempotency-Key: abc\r\n X-Evil: injected\r\n",
    b"Idempotency-Key: a\x7fb\r\n",
    b"Idempotency-Key: caf\xc3\xa9\r\n",
    b"Idempotency-Key: a\tb\r\n",
    b"Idempotency-Key: " + b"k" * 256 + b"\r\n",
    b"Idempotency-Key: \r\n",
    b"X-Request-ID: a\rX-Evil: injected\r\n",
    b"X-Request-ID: a b\r\n",
], ids=["CRLF", "bare LF", "bare CR", "NUL", "obs-fold", "DEL", "UTF-8", "TAB", "256 chars",
        "empty", "request id CR", "request id space"])
def test_header_injection_is_refused_and_never_reflected(untouched: Caller,
                                                        header: bytes) -> None:
    raw = exchange(untouched, raw_post(untouched, INVALID, header))
    assert raw.count(b"HTTP/1.1 ") == 1, raw  # one response, not a split one
    status, headers, body = parse_response(raw)
    assert status == 400, raw
    assert "x-evil" not in headers and b"injected" not in raw
    if headers["content-type"][0].startswith("application/json"):
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_request" and set(json.loads(body)) == {"error"}
        if b"X-Request-ID" in header:
            assert len(headers["x-request-id"]) == 1
            assert headers["x-request-id"][0] not in header.decode("latin-1")
    else:  # the HTTP parser refused the request itself, before any application code ran
        assert body == b"Invalid HTTP request received.", raw
    assert get(f"{untouched.api.base}/healthz")[0] == 200


def test_idempotency_key_is_never_echoed(caller: Caller) -> None:
    raw = exchange(caller, raw_post(caller, json.dumps({**BASE, "async": True}).encode(),
                                    b"Idempotency-Key: echo-me-not-42\r\n"))
    status, headers, _ = parse_response(raw)
    assert status == 202
    assert "echo-me-not-42" not in "".join(v for vs in headers.values() for v in vs)


# --- prompts -------------------------------------------------------------------------------

UNICODE_PROMPTS = {
    "emoji ZWJ sequences": "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 "
                           "\U0001F3F3\uFE0F\u200D\U0001F308 \U0001F1F9\U0001F1ED",
    "right-to-left": "\u05E9\u05DC\u05D5\u05DD \u0645\u0631\u062D\u0628\u0627 \u202Eevil\u202C",
    "combining marks": "Z\u0351\u036B\u0343\u036A\u0302\u036B\u033D\u034F\u0334\u0319a"
                       "\u0300\u0301\u0302\u0303lgo",
    "CJK and Thai": "\u732B\u304C\u597D\u304D \u0E41\u0E21\u0E27 \uD55C\uAD6D\uC5B4",
    "controls and invisible": "a\u200Bb\u2060c\uFEFFd\u0007e\u001Bf",
    "astral plane": "\U0001D4AF\U0001D4C7\U0001D4B6 \U00020000 \U0010FFFD",
}


@pytest.mark.parametrize("name", list(UNICODE_PROMPTS))
async def test_unicode_prompts_round_trip(pg, name: str) -> None:
    _, key = await pg.user_with_key(100)
    prompt = UNICODE_PROMPTS[name]
    response = await pg.http.post("/api/v1/images/generations", headers=bearer(key),
                                  json={**BASE, "prompt": prompt, "async": True})
    assert response.status_code == 202, response.text
    assert response.json()["prompt"] == prompt
    again = await pg.http.get(f"/api/v1/generations/{response.json()['id']}", headers=bearer(key))
    assert again.json()["prompt"] == prompt


@pytest.mark.parametrize("prompt", ["a\u0000b", "\u0000"], ids=["NUL inside", "only NUL"])
async def test_nul_in_a_prompt_is_refused(pg, prompt: str) -> None:
    """PostgreSQL text cannot hold U+0000: a 400 naming the field, nothing charged; not 500."""
    user, key = await pg.user_with_key(100)
    response = await pg.http.post("/api/v1/images/generations", headers=bearer(key),
                                  json={**BASE, "prompt": prompt, "async": True})
    assert_400(response, "prompt")
    await assert_nothing_charged(pg, user, key, 100)


@pytest.mark.parametrize("field", ["prompt", "model", "size", "quality"])
async def test_lone_surrogates_are_refused(pg, field: str) -> None:
    """`"\\ud800"` is valid JSON but not a Unicode string: it cannot be stored or encoded as
    UTF-8, so it must be a 400, not a crash in the database driver."""
    user, key = await pg.user_with_key(100)
    body = json.dumps({**BASE, field: "a-LONE"}).replace("LONE", "\\ud800").encode()
    assert b'-\\ud800"' in body
    response = await pg.http.post("/api/v1/images/generations", content=body,
                                  headers={**bearer(key), "Content-Type": "application/json"})
    assert_400(response, field)
    await assert_nothing_charged(pg, user, key, 100)


LIMIT = 32_000
LIMIT_CASES = {
    "32,000 x": ("x" * LIMIT, True),
    "32,001 x": ("x" * (LIMIT + 1), False),
    "32,000 astral emoji (64,000 UTF-16 units, 128,000 bytes)": ("\U0001F408" * LIMIT, True),
    "32,001 astral emoji": ("\U0001F408" * (LIMIT + 1), False),
    "16,000 e + combining acute (32,000 code points)": ("e\u0301" * (LIMIT // 2), True),
    "16,000 e + combining acute, one more mark": ("e\u0301" * (LIMIT // 2) + "\u0301", False),
    "32,000 after trimming 1,000 spaces and newlines": (
        " \n\t" * 333 + " " + "y" * LIMIT + "\r\n\u3000\u00a0" * 100, True),
    "32,001 after trimming": ("  " + "y" * (LIMIT + 1) + "  ", False),
    "only Unicode whitespace": ("\u3000\u00a0\u2003\u2029\n\t", False),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
async def test_prompt_limit_is_32000_characters_after_trimming(pg, case: str) -> None:
    user, key = await pg.user_with_key(100)
    prompt, accepted = LIMIT_CASES[case]
    response = await pg.http.post("/api/v1/images/generations", headers=bearer(key),
                                  json={**BASE, "prompt": prompt, "async": True})
    if accepted:
        assert response.status_code == 202, response.text
        assert response.json()["prompt"] == prompt.strip()
        assert len(response.json()["prompt"]) <= LIMIT
    else:
        assert_400(response, "prompt")
        await assert_nothing_charged(pg, user, key, 100)


# --- slow and vanishing clients ------------------------------------------------------------

def start_partial(caller: Caller, body: bytes, content_type: bytes,
                  fraction: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", caller.port), timeout=10)
    request = raw_post(caller, body, content_type=content_type)
    sock.sendall(request[:len(request) - int(len(body) * (1 - fraction))])
    return sock


def test_clients_that_stall_mid_body_and_vanish(untouched: Caller) -> None:
    """40 clients send half a body and stall (JSON, and multipart stopping inside a reference
    image); a normal client is still served meanwhile; then they all close, and the server is as
    before: healthy, nothing charged, no temp files, no leaked file descriptors."""
    api = untouched.api
    fds_before = api.open_fds()
    json_body = json.dumps({**BASE, "prompt": "p" * 30_000}).encode()
    form_body = form(*BASE_PARTS, form_part("reference_image", noise_png(512), "r.png",
                                            "image/png"))
    stalled: list[socket.socket] = []
    ports: set[int] = set()

    def held() -> int:  # how many of the stalled clients the server holds a connection of
        return len(ports & set(held_connections([api.pid], api.port)))

    try:
        for i in range(40):
            if i % 2:
                stalled.append(start_partial(untouched, json_body, b"application/json", 0.5))
            else:
                stalled.append(start_partial(untouched, form_body, MULTIPART.encode(), 0.6))
            ports.add(stalled[-1].getsockname()[1])
        # the server has taken in all 40 half bodies, the 20 references on disk
        wait_until(lambda: held() == 40 and api.open_fds()[1] == 20, timeout=20, interval=0.1,
                   what=lambda: f"40 stalled uploads held: {held()} connections, "
                                f"{api.open_fds()} (sockets, temp files); before {fds_before}")
        status, models = get(f"{api.base}/api/v1/models")
        started = time.monotonic()
        status, body = get(f"{api.base}/api/v1/credits", untouched.key)
        assert status == 200 and time.monotonic() - started < 5
        assert models["data"][0]["id"] == "gpt-image-2"
        stalled_fds = api.open_fds()
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: held() == 0 and api.open_fds()[1] == 0, timeout=10, interval=0.1,
               what=lambda: f"the stalled uploads released: {held()} connections, "
                            f"{api.open_fds()}; before {fds_before}, stalled {stalled_fds}")
    fds_after = api.open_fds()
    assert stalled_fds[0] >= fds_after[0] + 40 and stalled_fds[1] == 20
    assert fds_after[0] <= fds_before[0] and fds_after[1] == 0
    assert get(f"{api.base}/healthz")[0] == 200


def test_a_client_that_stops_sending_and_closes_while_its_reference_streams(
        caller: Caller) -> None:
    """The server must drop a half-uploaded reference at once when the client goes away, and
    still serve the next request normally (charging only that one)."""
    api = caller.api
    balance, generations, _ = caller.state()
    big = noise_png(2048)  # ~12 MB of incompressible PNG
    body = form(*BASE_PARTS, form_part("reference_image", big, "big.png", "image/png"))
    sock = start_partial(caller, body, MULTIPART.encode(), 0.5)
    wait_until(api.leftovers, timeout=5, what="the reference streaming to a temp file")
    sock.close()  # ...and the client vanishes
    wait_until(lambda: api.leftovers() == [], timeout=5,
               what=lambda: f"the half upload removed: {api.leftovers()}")
    status, ok, _, _ = curl(caller, "-H", "Content-Type: application/json",
                            "-d", json.dumps({**BASE, "size": "1024x1024"}))
    assert status == 200, ok
    assert caller.state()[:2] == (balance - 8, generations + 1)
