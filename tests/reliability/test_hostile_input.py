"""Hostile input: what an attacker (or a broken client) can send, and what the server does.

Raw-socket and memory cases run against a real `gih serve` in the embedded default (an empty
folder, SQLite, local storage, mock provider), with its own TMPDIR so that leftover upload files
can be seen; the rest run in-process on PostgreSQL. Every refusal must be a 400 in the contract's
envelope (or, for a malformed HTTP request, the HTTP layer's own 400), never a 5xx, quickly, in
bounded memory, with nothing charged and nothing left on disk. The plain cases (a 10 MB JSON
body, `[[[...`, 17 references, a 2000-byte PNG, the 53.5 MB upload's memory) are in
tests/test_generation_requests.py and tests/test_embedded.py; these go further.
"""

import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from app.models import Generation
from tests.conftest import bearer
from tests.fakes.processes import wait_until_answering
from tests.test_cli import GIH, clean_env, free_port, get, run_json
from tests.test_embedded import peak_rss_mb, reset_peak
from tests.test_generation_requests import (
    BASE,
    PNG_BYTES,
    assert_400,
    assert_nothing_charged,
    jpeg_bytes,
    webp_bytes,
)

CREDITS = 1000
FIGURES: dict[str, str] = {}


# --- a real `gih serve`, embedded ---------------------------------------------------------

@dataclass
class Api:
    base: str
    port: int
    key: str
    user_id: str
    pid: int
    cwd: Path
    tmp: Path  # the server's TMPDIR: upload temp files live here while a request runs
    log: Path
    env: dict[str, str]

    def state(self) -> tuple[int, int, int]:
        """(balance, generations, ledger rows) of the test user."""
        status, body = get(f"{self.base}/api/v1/credits", self.key)
        assert status == 200, body
        db = sqlite3.connect(f"file:{self.cwd / 'data' / 'gih.db'}?mode=ro", uri=True)
        try:
            generations = db.execute("SELECT count(*) FROM generations WHERE user_id = ?",
                                     (self.user_id,)).fetchone()[0]
            ledger = db.execute("SELECT count(*) FROM credit_ledger WHERE user_id = ?",
                                (self.user_id,)).fetchone()[0]
        finally:
            db.close()
        return body["credits"], generations, ledger

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


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    cwd = tmp_path_factory.mktemp("hostile")
    tmp = cwd / "tmp"
    tmp.mkdir()
    log = cwd / "serve.log"
    env = clean_env(TMPDIR=str(tmp))
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([GIH, "serve", "--port", str(port)], cwd=cwd, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(process, f"{base}/api/v1/models", log)
    user = run_json("users", "create", "hostile@example.com", "--credits", str(CREDITS),
                    env=env, cwd=cwd)
    key = run_json("keys", "create", "hostile@example.com", env=env, cwd=cwd)["key"]
    yield Api(base=base, port=port, key=key, user_id=user["id"], pid=process.pid, cwd=cwd,
              tmp=tmp, log=log, env=env)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)


@pytest.fixture
def untouched(api: Api) -> Iterator[Api]:
    """The test's requests are all refused: nothing charged, no generation, no temp file."""
    before = api.state()
    yield api
    assert api.state() == before, "a refused request charged or created something"
    deadline = time.monotonic() + 5  # the request's own clean-up may trail its answer a bit
    while api.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.leftovers() == [], "upload temp files were left behind"


def curl(api: Api, *args: str, timeout: float = 120) -> tuple[int, dict, int, float]:
    """(status, JSON body, bytes the client managed to upload, seconds) of one curl call."""
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code} %{size_upload} %{time_total}",
         f"{api.base}/api/v1/images/generations", "-H", f"Authorization: Bearer {api.key}",
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


def exchange(api: Api, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes (requests carry Connection: close)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=timeout) as sock:
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


def raw_post(api: Api, body: bytes, extra_headers: bytes = b"",
             content_type: bytes = b"application/json") -> bytes:
    return (b"POST /api/v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"Authorization: Bearer " + api.key.encode() + b"\r\n"
            + b"Content-Type: " + content_type + b"\r\n" + extra_headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body)


def measure(api: Api, name: str, action) -> tuple[object, float, float]:
    """Run action() and return (its result, seconds, peak RSS growth of the server in MB)."""
    reset_peak(api.pid)
    before = peak_rss_mb(api.pid)
    started = time.monotonic()
    result = action()
    seconds = time.monotonic() - started
    growth = peak_rss_mb(api.pid) - before
    FIGURES[name] = f"{seconds:.2f} s, server peak RSS +{growth:.1f} MB"
    print(f"\n{name}: {FIGURES[name]}")
    return result, seconds, growth


# --- images --------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height RGB, with a few hundred bytes of IDAT."""
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9)) + png_chunk(b"IEND", b""))


def jpeg_bomb() -> bytes:
    """A small JPEG whose frame header (SOF0) claims 65500x65500."""
    data = bytearray(jpeg_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def webp_bomb() -> bytes:
    """A WebP whose extended header (VP8X) claims a 16384x16384 canvas."""
    small = webp_bytes()
    vp8x = (b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0"
            + (16383).to_bytes(3, "little") + (16383).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + small[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def noise_png(size: int = 128) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(out, "PNG")
    return out.getvalue()


# --- bodies --------------------------------------------------------------------------------

@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_10_mb_json_body_is_answered_before_it_is_all_read(untouched: Api,
                                                           transfer: str) -> None:
    api = untouched
    big = api.cwd / "big.json"
    big.write_text(json.dumps({**BASE, "padding": "x" * (10 * 1024 * 1024)}))
    args = ["-H", "Content-Type: application/json", "--data-binary", f"@{big}"]
    if transfer == "chunked":
        args += ["-H", "Transfer-Encoding: chunked"]
    (status, body, uploaded, _), seconds, growth = measure(
        api, f"10 MB JSON body ({transfer})", lambda: curl(api, *args))
    error = assert_envelope_400(status, body)
    assert "larger than" in error["message"]
    print(f"  the client had sent {uploaded / 2**20:.1f} MB of 10 MB when the 400 came")
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

def form_part(name: str | None, value: bytes, filename: str | None = None,
              content_type: str | None = None, disposition: bool = True) -> bytes:
    headers = []
    if disposition:
        params = "form-data" + (f'; name="{name}"' if name is not None else "")
        params += f'; filename="{filename}"' if filename is not None else ""
        headers.append(f"Content-Disposition: {params}")
    if content_type:
        headers.append(f"Content-Type: {content_type}")
    return (b"--hostile\r\n" + "\r\n".join(headers).encode() + b"\r\n\r\n" + value + b"\r\n")


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--hostile--\r\n"


BASE_PARTS = (form_part("model", b"gpt-image-2"), form_part("prompt", b"hostile"))
MULTIPART = "multipart/form-data; boundary=hostile"


@pytest.mark.parametrize("what", ["small fields", "references", "100 KB files"])
def test_a_thousand_multipart_parts(untouched: Api, what: str) -> None:
    """Refused at part 65 (or at the 17th reference, after 16 were streamed to temp files and
    checked). The server then drains what the client is still sending, up to 64 MB, so that the
    client sees the 400 rather than a reset; past that it stops reading."""
    api = untouched
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
    path = api.cwd / "parts.bin"
    path.write_bytes(form(*BASE_PARTS, *parts))
    size = path.stat().st_size
    (status, body, uploaded, _), seconds, growth = measure(
        api, f"1,000 multipart parts, {what} ({size / 2**20:.1f} MB)",
        lambda: curl(api, "-H", f"Content-Type: {MULTIPART}", "--data-binary", f"@{path}"))
    path.unlink()
    error = assert_envelope_400(status, body)
    assert expected in error["message"]
    assert seconds < 15 and growth < 10
    if what == "100 KB files":
        print(f"  the server stopped reading after {uploaded / 2**20:.0f} MB of "
              f"{size / 2**20:.0f} MB")
        assert uploaded < 90 * 1024 * 1024


@pytest.mark.parametrize("part", [
    form_part(None, b"value"),
    form_part(None, PNG_BYTES, filename="a.png", content_type="image/png"),
    form_part("", b"value"),
    form_part("x", b"value", disposition=False),
], ids=["text part without name", "file part without name", "empty name",
        "no Content-Disposition"])
async def test_multipart_part_without_a_name(pg, part: bytes) -> None:
    user, key = await pg.user_with_key(100)
    response = await pg.http.post("/api/v1/images/generations", content=form(*BASE_PARTS, part),
                                  headers={**bearer(key), "Content-Type": MULTIPART})
    assert_400(response)
    assert "without a name" in response.json()["error"]["message"]
    await assert_nothing_charged(pg, user, key, 100)


# --- reference images -----------------------------------------------------------------------

@pytest.mark.parametrize("image", ["png", "jpeg", "webp"])
def test_decompression_bombs_are_refused_quickly(untouched: Api, image: str) -> None:
    api = untouched
    data = {"png": png_bomb, "jpeg": jpeg_bomb, "webp": webp_bomb}[image]()
    path = api.cwd / f"bomb.{image}"
    path.write_bytes(data)
    (status, body, _, _), seconds, growth = measure(
        api, f"{image} bomb ({len(data)} bytes)",
        lambda: curl(api, "-F", "model=gpt-image-2", "-F", "prompt=x",
                     "-F", f"reference_image=@{path}"))
    error = assert_envelope_400(status, body, "reference_image")
    assert "pixel" in error["message"] or "decod" in error["message"], error
    assert seconds < 5 and growth < 20


def truncated_cases() -> dict[str, bytes]:
    png = noise_png()
    ihdr_end = 8 + 25
    idat = png.index(b"IDAT")
    corrupt_crc = bytearray(png)
    corrupt_crc[idat + 4 + struct.unpack(">I", png[idat - 4:idat])[0]] ^= 0xFF
    return {
        "png: signature and IHDR only": png[:ihdr_end],
        "png: cut inside IDAT": png[:idat + 40],
        "png: no IEND": png[:-12],
        "png: IDAT CRC wrong": bytes(corrupt_crc),
        "png: signature only": png[:8],
        "jpeg: first 200 bytes": jpeg_bytes()[:200],
        "webp: RIFF header only": webp_bytes()[:16],
        "jpeg magic, then text": b"\xff\xd8\xff" + b"not really a jpeg" * 10,
    }


@pytest.mark.parametrize("case", list(truncated_cases()))
async def test_truncated_and_corrupt_references(pg, case: str) -> None:
    user, key = await pg.user_with_key(100)
    data = truncated_cases()[case]
    response = await pg.http.post(
        "/api/v1/images/generations", headers=bearer(key), data=BASE,
        files=[("reference_image", ("ref.png", data, "image/png"))])
    assert_400(response, "reference_image")
    await assert_nothing_charged(pg, user, key, 100)


async def test_references_go_by_content_whatever_they_are_called(pg) -> None:
    _, key = await pg.user_with_key(100)
    files = [
        ("reference_image", ("photo.jpg", PNG_BYTES, "image/jpeg")),
        ("reference_image", ("../../../../escape.webp", jpeg_bytes(), "application/octet-stream")),
        ("reference_image[]", ("no-extension", webp_bytes(), "text/plain")),
        ("reference_image", ("\x01name\x7f.png\r\nX-Evil: 1", PNG_BYTES, "image/png")),
    ]
    response = await pg.http.post("/api/v1/images/generations", headers=bearer(key),
                                  data={**BASE, "size": "1024x1024"}, files=files)
    assert response.status_code == 200, response.text
    async with pg.session() as session:
        generation = await session.scalar(select(Generation)
                                          .where(Generation.id == response.json()["id"]))
        assert generation.reference_count == 4


async def test_a_gif_called_png_is_refused(pg) -> None:
    user, key = await pg.user_with_key(100)
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    response = await pg.http.post(
        "/api/v1/images/generations", headers=bearer(key), data=BASE,
        files=[("reference_image", ("pic.png", gif.getvalue(), "image/png"))])
    assert_400(response, "reference_image")
    await assert_nothing_charged(pg, user, key, 100)


@pytest.mark.parametrize("how", ["chunked reference", "unknown file field", "text field"])
def test_51_mb_parts_stream_past_with_bounded_memory(untouched: Api, how: str) -> None:
    api = untouched
    blob = api.cwd / "51mb.png"
    if not blob.exists():
        with open(blob, "wb") as out:
            out.write(PNG_BYTES)
            out.write(os.urandom(51 * 1024 * 1024))
    args = {
        "chunked reference": ["-H", "Transfer-Encoding: chunked",
                              "-F", f"reference_image=@{blob};type=image/png"],
        "unknown file field": ["-F", f"attachment=@{blob}"],
        "text field": ["-F", f"prompt2=<{blob}"],
    }[how]
    (status, body, _, _), seconds, growth = measure(
        api, f"51 MB {how}", lambda: curl(api, "-F", "model=gpt-image-2", "-F", "prompt=x",
                                          *args))
    error = assert_envelope_400(status, body)
    assert "limit" in error["message"] or "longer than" in error["message"], error
    assert growth < 20 and seconds < 30


def test_200_mb_reference_is_refused_without_reading_it_all(untouched: Api) -> None:
    api = untouched
    blob = api.cwd / "200mb.png"
    with open(blob, "wb") as out:
        out.write(PNG_BYTES)
        out.truncate(200 * 1024 * 1024)  # sparse: no 200 MB written to disk
    (status, body, uploaded, _), seconds, growth = measure(
        api, "200 MB reference", lambda: curl(api, "-F", "model=gpt-image-2",
                                              "-F", "prompt=x", "-F", f"reference_image=@{blob}"))
    assert_envelope_400(status, body, "reference_image")
    print(f"  the server stopped reading after {uploaded / 2**20:.0f} MB of 200 MB")
    assert uploaded < 150 * 1024 * 1024
    assert growth < 20 and seconds < 30
    blob.unlink()


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
def test_header_injection_is_refused_and_never_reflected(untouched: Api, header: bytes) -> None:
    api = untouched
    raw = exchange(api, raw_post(api, INVALID, header))
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
    assert get(f"{api.base}/healthz")[0] == 200


def test_idempotency_key_is_never_echoed(api: Api) -> None:
    raw = exchange(api, raw_post(api, json.dumps({**BASE, "async": True}).encode(),
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

def start_partial(api: Api, body: bytes, content_type: bytes, fraction: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    request = raw_post(api, body, content_type=content_type)
    sock.sendall(request[:len(request) - int(len(body) * (1 - fraction))])
    return sock


def test_clients_that_stall_mid_body_and_vanish(untouched: Api) -> None:
    """40 clients send half a body and stall (JSON, and multipart stopping inside a reference
    image); a normal client is still served meanwhile; then they all close, and the server is as
    before: healthy, nothing charged, no temp files, no leaked file descriptors."""
    api = untouched
    fds_before = api.open_fds()
    json_body = json.dumps({**BASE, "prompt": "p" * 30_000}).encode()
    form_body = form(*BASE_PARTS, form_part("reference_image", noise_png(512), "r.png",
                                            "image/png"))
    stalled = []
    for i in range(40):
        if i % 2:
            stalled.append(start_partial(api, json_body, b"application/json", 0.5))
        else:
            stalled.append(start_partial(api, form_body, MULTIPART.encode(), 0.6))
    def all_in() -> bool:  # the server has taken in all 40 half bodies
        sockets, files = api.open_fds()
        return sockets >= fds_before[0] + 40 and files == 20

    deadline = time.monotonic() + 20
    while not all_in() and time.monotonic() < deadline:
        time.sleep(0.1)
    status, models = get(f"{api.base}/api/v1/models")
    started = time.monotonic()
    status, body = get(f"{api.base}/api/v1/credits", api.key)
    assert status == 200 and time.monotonic() - started < 5
    assert models["data"][0]["id"] == "gpt-image-2"
    stalled_fds = api.open_fds()
    for sock in stalled:
        sock.close()
    def all_gone() -> bool:  # (a keep-alive socket open before may have closed meanwhile)
        sockets, files = api.open_fds()
        return sockets <= fds_before[0] and files == 0

    deadline = time.monotonic() + 10
    while not all_gone() and time.monotonic() < deadline:
        time.sleep(0.2)
    fds_after = api.open_fds()
    FIGURES["stalled clients"] = (
        f"server (sockets, temp files) open: {fds_before} before, {stalled_fds} with 40 "
        f"stalled uploads, {fds_after} after they closed")
    print(f"\nstalled clients: {FIGURES['stalled clients']}")
    assert stalled_fds[0] >= fds_after[0] + 40 and stalled_fds[1] == 20
    assert fds_after[0] <= fds_before[0] and fds_after[1] == 0
    assert get(f"{api.base}/healthz")[0] == 200


def test_a_client_that_stops_sending_and_closes_while_its_reference_streams(api: Api) -> None:
    """The server must drop a half-uploaded reference at once when the client goes away, and
    still serve the next request normally (charging only that one)."""
    balance, generations, _ = api.state()
    big = noise_png(2048)  # ~12 MB of incompressible PNG
    body = form(*BASE_PARTS, form_part("reference_image", big, "big.png", "image/png"))
    sock = start_partial(api, body, MULTIPART.encode(), 0.5)
    deadline = time.monotonic() + 5
    while not api.leftovers() and time.monotonic() < deadline:  # the upload is on disk...
        time.sleep(0.05)
    assert api.leftovers(), "the reference was expected to stream to a temp file"
    sock.close()  # ...and the client vanishes
    deadline = time.monotonic() + 5
    while api.leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.leftovers() == []
    status, ok, _, _ = curl(api, "-H", "Content-Type: application/json",
                            "-d", json.dumps({**BASE, "size": "1024x1024"}))
    assert status == 200, ok
    assert api.state()[:2] == (balance - 8, generations + 1)


def test_server_log_has_no_crash(api: Api) -> None:
    """After everything above: no 500, no traceback in the server's log, and no key."""
    text = api.log.read_text()
    assert api.key not in text and api.key.removeprefix("gih_live_")[:16] not in text
    assert "Traceback" not in text and "unhandled error" not in text
    statuses = [json.loads(line).get("status") for line in text.splitlines()
                if line.startswith("{") and '"event": "request"' in line]
    assert statuses and all(s < 500 for s in statuses), statuses
    print("\nfigures:\n" + "\n".join(f"  {k}: {v}" for k, v in FIGURES.items()))
