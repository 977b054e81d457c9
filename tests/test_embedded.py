"""The embedded default as a user meets it: `gih serve` in an empty folder, no configuration,
the README's curl examples, and the memory of the API process during a 50 MB upload."""

import io
import json
import os
import re
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from app.config import Settings
from tests.conftest import REPO, Account, create_account_sync
from tests.fakes.processes import app_env, start_serve, stop_process
from tests.helpers import get, peak_rss_mb, reset_peak, run, run_json


@dataclass
class Server:
    base: str
    pid: int
    cwd: Path
    env: dict[str, str]

    @property
    def database(self) -> Path:
        return self.cwd / "data" / "gih.db"

    def account(self, credits_: int = 1000) -> Account:
        """A user of its own and its key, in the server's database."""
        return create_account_sync(Settings(database_url=f"sqlite:///{self.database}"), credits_)

    def generations(self, user_id: str) -> int:
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM generations WHERE user_id = ?",
                              (user_id,)).fetchone()[0]
        finally:
            db.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`gih serve` in an empty folder, no configuration at all."""
    cwd = tmp_path_factory.mktemp("embedded")
    log = tmp_path_factory.mktemp("embedded-log") / "serve.log"
    process, base = start_serve({}, log, workers=None, cwd=cwd, set_base_url=False)
    yield Server(base=base, pid=process.pid, cwd=cwd, env=app_env({}))
    stop_process(process, 20)


def readme_curl_examples() -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- curl-examples -->")[1].split("<!-- /curl-examples -->")[0]
    return block.split("```sh\n", 1)[1].rsplit("```", 1)[0]


def test_readme_curl_examples_work_as_written(server: Server, tmp_path: Path) -> None:
    # The README's user and key, made with its commands.
    run("users", "create", "you@example.com", "--credits", "100", "--account-type", "PRO",
        env=server.env, cwd=server.cwd)
    key = run_json("keys", "create", "you@example.com", env=server.env, cwd=server.cwd)["key"]
    script = readme_curl_examples().replace("http://127.0.0.1:8000", server.base)
    # Mark each command's output so the answers can be told apart.
    marked = re.sub(r"^(curl |GEN=|sleep )", r"echo '@@@'; \1", script, flags=re.M)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", marked], cwd=tmp_path,
                            env={**server.env, "GIH_KEY": key}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = [o.strip() for o in result.stdout.split("@@@") if o.strip()]
    models, balance, sync, polled, multipart = (json.loads(o) for o in outputs)
    assert models["data"][0]["id"] == "gpt-image-2"
    assert balance["object"] == "credit_balance"
    assert sync["status"] == "succeeded" and sync["images"][0]["width"] == 1024
    assert polled["status"] == "succeeded" and polled["images"][0]["width"] == 2560
    assert multipart["status"] == "succeeded"
    assert Image.open(tmp_path / "reference.png").size == (2560, 1440)


def upload(server: Server, key: str, path: Path) -> tuple[int, dict]:
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"{server.base}/api/v1/images/generations",
         "-H", f"Authorization: Bearer {key}", "-F", "model=gpt-image-2",
         "-F", "prompt=use the reference", "-F", "async=true",
         "-F", f"reference_image=@{path}"], capture_output=True, text=True, timeout=120)
    body, status = result.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def test_50_mb_reference_does_not_enter_api_memory(server: Server, tmp_path: Path) -> None:
    account = server.account()
    key = account.key
    # A real, decodable PNG of about 49.5 MB (noise does not compress).
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (4180, 4140), os.urandom(4180 * 4140 * 3)).save(
        big, "PNG", compress_level=0)
    assert 48 * 1024 * 1024 < big.stat().st_size < 50 * 1024 * 1024
    too_big = tmp_path / "too-big.png"
    with open(too_big, "wb") as out:
        out.write(big.read_bytes())
        out.write(b"\0" * (4 * 1024 * 1024))  # 53.5 MB: over the 50 MB limit

    reset_peak(server.pid)
    before = peak_rss_mb(server.pid)
    status, body = upload(server, key, big)
    assert status == 202, body
    accepted = peak_rss_mb(server.pid) - before
    status, error = upload(server, key, too_big)
    assert status == 400 and "50 MB" in error["error"]["message"]
    assert error["error"]["code"] == "invalid_request"
    assert error["error"]["param"] == "reference_image"
    refused = peak_rss_mb(server.pid) - before
    assert accepted < 20 and refused < 20
    # The accepted one was charged at once (8 credits); the refused one made nothing.
    assert get(f"{server.base}/api/v1/credits", key)[1]["credits"] == 1000 - 8
    assert server.generations(account.user_id) == 1


def test_local_image_urls_are_unguessable_and_served_without_a_key(server: Server) -> None:
    key = server.account().key
    status, body = get(f"{server.base}/api/v1/models")
    assert status == 200
    result = subprocess.run(
        ["curl", "-s", f"{server.base}/api/v1/images/generations", "-H",
         f"Authorization: Bearer {key}", "-H", "Content-Type: application/json", "-d",
         json.dumps({"model": "gpt-image-2", "prompt": "x", "output_format": "jpeg"})],
        capture_output=True, text=True, timeout=60)
    generation = json.loads(result.stdout)
    url = generation["images"][0]["url"]
    token = url.split("/")[-2]
    assert len(token) >= 24 and generation["id"] in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.read())).format == "JPEG"
    guessed = url.replace(token, "0" * len(token))
    status, error = get(guessed)
    assert status == 404 and error["error"]["code"] == "notFound"
