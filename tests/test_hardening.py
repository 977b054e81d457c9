"""Defects found by hostile testing against the embedded server (issue 10, part 3): each test
failed before its fix."""

import io
import json
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import Client, bearer, make_settings, running_client
from tests.fakes.processes import GIH, app_env, start_serve
from tests.waiting import wait_until_async

BASE = {"model": "gpt-image-2", "prompt": "a lighthouse at dusk", "size": "1024x1024"}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


# 1. n must be ASCII digits ------------------------------------------------------------------

@pytest.mark.parametrize("n", ["²", "٣", "１", "3\u200b"])
async def test_n_accepts_only_ascii_digits(any_db: Client, n: str) -> None:
    user, key = await any_db.user_with_key(100)
    as_form = {name: (None, value) for name, value in {**BASE, "n": n}.items()}
    for send in ({"json": {**BASE, "n": n}}, {"files": as_form}):
        response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                          **send)  # type: ignore[arg-type]
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {"message": "n must be an integer",
                                            "code": "invalid_request", "param": "n"}
    balance = await any_db.http.get("/api/v1/credits", headers=bearer(key))
    assert balance.json()["credits"] == 100


# 2. and 3. ids and file names that cannot exist are 404, never 500 or 503 --------------------

@pytest.mark.parametrize("path", ["%00", "gen_%00abc", "gen_" + "A" * 300, "gen_abc%2F..",
                                  "gen_\u00e9t\u00e9"])
async def test_impossible_generation_ids_are_not_found(pg: Client, path: str) -> None:
    _, key = await pg.user_with_key(0)
    response = await pg.http.get(f"/api/v1/generations/{path}", headers=bearer(key))
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "notFound"


@pytest.mark.parametrize("name", ["%00", "a" * 300, "generations/%00/x.png",
                                  "generations/gen_x/" + "f" * 24 + "/" + "9" * 300 + ".png"])
async def test_impossible_file_names_are_not_found(tmp_path: Path, sqlite_url: str,
                                                   name: str) -> None:
    settings = make_settings(sqlite_url, local_storage_dir=tmp_path / "images")
    async with running_client(settings) as client:
        response = await client.http.get(f"/files/{name}")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "notFound"


# 5. reference images are deleted once the generation is final ---------------------------------

async def test_references_are_deleted_when_the_generation_ends(tmp_path: Path,
                                                               sqlite_url: str) -> None:
    images = tmp_path / "images"
    async with running_client(make_settings(sqlite_url, local_storage_dir=images)) as client:
        _, key = await client.user_with_key(100)
        response = await client.http.post(
            "/api/v1/images/generations", headers=bearer(key), data=BASE,
            files=[("reference_image", ("a.png", png(), "image/png")),
                   ("reference_image", ("b.png", png(), "image/png"))])
        assert response.status_code == 200, response.text
        gen_id = response.json()["id"]
        # deleted by the job's last step, which may end just after the answer went out
        await wait_until_async(lambda: not list(images.rglob("reference-*")), timeout=10,
                               what="the references deleted")
        # the delivered image (the shared SQLite file may hold another test's unfinished
        # generation, which the sweep at start runs: its image lands in its own folder)
        assert [p.name for p in images.rglob("*.png") if gen_id in p.parts] == ["0.png"]
        assert (await client.http.get(response.json()["images"][0]["url"])).status_code == 200
        async with client.session() as session:
            from sqlalchemy import func, select

            from app.models import ReferenceImage
            left = await session.scalar(select(func.count()).select_from(ReferenceImage)
                                        .where(ReferenceImage.generation_id == gen_id))
        assert left == 0


async def test_a_refused_upload_leaves_no_folder(tmp_path: Path, sqlite_url: str) -> None:
    images = tmp_path / "images"
    async with running_client(make_settings(sqlite_url, local_storage_dir=images)) as client:
        _, key = await client.user_with_key(3)  # short of the 8 credits needed: 402
        response = await client.http.post(
            "/api/v1/images/generations", headers=bearer(key), data=BASE,
            files=[("reference_image", ("a.png", png(), "image/png"))])
        assert response.status_code == 402, response.text
        leftovers = [p for p in images.rglob("*")] if images.exists() else []
        assert leftovers == []


# 6. no redirect to a host the client chose ----------------------------------------------------

async def test_a_trailing_slash_is_not_found_and_never_redirects(any_db: Client) -> None:
    _, key = await any_db.user_with_key(10)
    for path in ("/api/v1/credits/", "/api/v1/models/", "/api/v1/images/generations/"):
        response = await any_db.http.get(path, headers={**bearer(key), "Host": "evil.example"})
        assert response.status_code == 404, (path, response.status_code)
        assert "location" not in response.headers
        assert response.json()["error"]["code"] == "notFound"


# 7. HEAD, media types in any case, ranges ----------------------------------------------------

@dataclass
class Generated:
    client: Client
    key: str
    body: dict


@pytest.fixture
async def generated(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Generated]:
    """An embedded app with local storage, and one generation that succeeded on it."""
    settings = make_settings(sqlite_url, local_storage_dir=tmp_path / "images")
    async with running_client(settings) as client:
        _, key = await client.user_with_key(10)
        made = await client.http.post("/api/v1/images/generations", headers=bearer(key),
                                      json=BASE)
        assert made.status_code == 200, made.text
        yield Generated(client, key, made.json())


async def test_head_answers_every_get_route(generated: Generated) -> None:
    client, key, made = generated.client, generated.key, generated.body
    image_url = made["images"][0]["url"]
    for path in ("/api/v1/models", "/api/v1/credits", f"/api/v1/generations/{made['id']}",
                 "/healthz", image_url):
        got = await client.http.get(path, headers=bearer(key))
        head = await client.http.head(path, headers=bearer(key))
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        if path == image_url:
            assert head.headers["content-length"] == str(len(got.content))
    refused = await client.http.head("/api/v1/images/generations", headers=bearer(key))
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"


@pytest.mark.parametrize("content_type", ["APPLICATION/JSON", "Application/Json; charset=UTF-8"])
async def test_media_types_match_in_any_case(any_db: Client, content_type: str) -> None:
    _, key = await any_db.user_with_key(10)
    response = await any_db.http.post(
        "/api/v1/images/generations", content=json.dumps({**BASE, "async": True}),
        headers={**bearer(key), "Content-Type": content_type})
    assert response.status_code == 202, response.text


async def test_multipart_media_type_matches_in_any_case(any_db: Client) -> None:
    _, key = await any_db.user_with_key(10)
    boundary = "AbCdEf0123"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in {**BASE, "async": "true"}.items()) + f"--{boundary}--\r\n"
    response = await any_db.http.post(
        "/api/v1/images/generations", content=body.encode(),
        headers={**bearer(key), "Content-Type": f"Multipart/Form-Data; boundary={boundary}"})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("header", ["bytes=99999999-", "bytes=5-2", "lines=0-10", "bytes=x"])
async def test_a_range_the_image_cannot_serve_is_ignored(generated: Generated,
                                                        header: str) -> None:
    client, url = generated.client, generated.body["images"][0]["url"]
    whole = await client.http.get(url)
    ranged = await client.http.get(url, headers={"Range": header})
    assert ranged.status_code == 200 and ranged.content == whole.content
    part = await client.http.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]


# 9. a prompt of invisible characters is empty --------------------------------------------------

@pytest.mark.parametrize("prompt", ["\u200b", "\u200b\u200c\u200d\u2060\ufeff", " \u3000\u00a0",
                                    "\u3164\u115f", "\u200e\u200f\u202e"])
async def test_an_invisible_prompt_is_empty(any_db: Client, prompt: str) -> None:
    _, key = await any_db.user_with_key(10)
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      json={**BASE, "prompt": prompt})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"


async def test_a_visible_prompt_keeps_its_format_characters(any_db: Client) -> None:
    _, key = await any_db.user_with_key(10)
    prompt = "\u200bfamily \U0001F468\u200D\U0001F469\u200D\U0001F467\u200b"
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      json={**BASE, "prompt": prompt, "async": True})
    assert response.status_code == 202 and response.json()["prompt"] == prompt


# 8. the embedded database is private -----------------------------------------------------------

def test_the_embedded_data_folder_and_database_are_private(tmp_path: Path) -> None:
    env = app_env({})
    for command in (["users", "create", "me@example.com"], ["keys", "create", "me@example.com"]):
        result = subprocess.run([GIH, *command], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("gih.db", "secret.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    for sibling in data.glob("gih.db-*"):  # SQLite's -wal and -shm take the database's mode
        assert stat.S_IMODE(sibling.stat().st_mode) == 0o600, sibling.name


# 4. header size and stalled requests, in the server we ship ------------------------------------

@dataclass
class Served:
    process: subprocess.Popen
    port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The embedded `gih serve`, reading requests with a 2 s timeout."""
    folder = tmp_path_factory.mktemp("served")
    env = {"GIH_DATABASE_URL": f"sqlite:///{folder}/gih.db",
           "GIH_LOCAL_STORAGE_DIR": str(folder / "images"), "GIH_HTTP_READ_TIMEOUT_S": "2"}
    process, base = start_serve(env, folder / "serve.log")
    yield Served(process, int(base.rsplit(":", 1)[1]), app_env(env))
    process.terminate()
    process.wait(20)


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_oversized_headers_are_refused_without_being_read(served: Served) -> None:
    process, port = served.process, served.port
    before = rss_kb(process.pid)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    try:
        while sent < 100 * 1024 * 1024:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:  # the server closed after its answer
        pass
    answer = read_answer(sock, 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_request"
    assert sent < 10 * 1024 * 1024  # stopped reading long before the 100 MB
    assert rss_kb(process.pid) - before < 10_000


def test_headers_just_under_the_cap_are_served(served: Served) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n")
    assert read_answer(sock, 2).startswith(b"HTTP/1.1 200 ")


def test_stalled_headers_time_out(served: Served) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port))
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    answer = read_answer(sock, 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert 1.5 < time.monotonic() - started < 6


def test_a_silent_connection_is_closed(served: Served) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port))
    started = time.monotonic()
    answer = read_answer(sock, 10)  # sends nothing at all
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 6


def test_a_stalled_body_times_out(served: Served) -> None:
    email = f"stall{time.monotonic_ns()}@example.com"
    subprocess.run([GIH, "users", "create", email, "--credits", "10"], env=served.env,
                   check=True, capture_output=True, timeout=60)
    key = json.loads(subprocess.run([GIH, "keys", "create", email, "--json"], env=served.env,
                                    check=True, capture_output=True, timeout=60).stdout)["key"]
    sock = socket.create_connection(("127.0.0.1", served.port))
    started = time.monotonic()
    sock.sendall(b"POST /api/v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    answer = read_answer(sock, 15)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < 10
