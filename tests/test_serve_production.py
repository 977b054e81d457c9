"""`gih serve` itself in production mode (PostgreSQL, Redis, S3, OpenAI fake, `gih worker`),
driven over real HTTP: the same commands the Dockerfile and compose file run."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.test_cli import GIH, free_port, run_json


@pytest.fixture(scope="module")
def api(prod_env: dict[str, str], worker, tmp_path_factory) -> Iterator[str]:  # noqa: ANN001
    port = free_port()
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("GIH_", "OPENAI_", "AWS_"))},
           **prod_env, "GIH_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([GIH, "serve", "--port", str(port), "--workers", "2"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/v1/models", timeout=2).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield base
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)
    assert "production mode" in log.read_text()


@pytest.fixture
def key(prod_env: dict[str, str]) -> str:
    env = {**os.environ, **prod_env}
    email = f"serve{time.monotonic_ns()}@example.com"
    run_json("users", "create", email, "--credits", "100", env=env)
    return run_json("keys", "create", email, env=env)["key"]


def post(base: str, key: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/api/v1/images/generations", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sync_generation_over_http(api: str, key: str, openai_fake) -> None:  # noqa: ANN001
    openai_fake.reset()
    status, body = post(api, key, {"model": "gpt-image-2", "prompt": "a kettle", "n": 2})
    assert status == 200, body
    assert body["balance"]["credits"] == 84 and len(body["images"]) == 2
    assert body["poll_url"].startswith(api)


def test_client_that_disconnects_loses_nothing(api: str, key: str, openai_fake,  # noqa: ANN001
                                               pg_url: str) -> None:
    openai_fake.reset()
    openai_fake.configure(latency_ms=1500)
    payload = json.dumps({"model": "gpt-image-2", "prompt": "a teapot"}).encode()
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /api/v1/images/generations HTTP/1.1\r\n"
                    + f"Host: {host}\r\nAuthorization: Bearer {key}\r\n".encode()
                    + b"Content-Type: application/json\r\nIdempotency-Key: walk-away\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        time.sleep(0.4)  # the request is accepted and waiting; the client goes away
    time.sleep(2.5)
    finished = subprocess.run(
        ["psql", pg_url, "-tAc",
         "SELECT status FROM generations WHERE idempotency_key = 'walk-away'"],
        capture_output=True, text=True, check=True).stdout.split()
    assert finished == ["succeeded"]  # it went on without the client
    status, body = post(api, key, {"model": "gpt-image-2", "prompt": "a teapot"},
                        {"Idempotency-Key": "walk-away"})
    assert status == 200, body
    assert body["status"] == "succeeded" and body["balance"]["credits"] == 92
    assert sum(1 for r in openai_fake.requests() if r["fields"].get("prompt") == "a teapot") == 1
