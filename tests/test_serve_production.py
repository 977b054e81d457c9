"""`gih serve` itself in production mode (PostgreSQL, Redis, S3, OpenAI fake, `gih worker`),
driven over real HTTP: the same commands the Dockerfile and compose file run."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.processes import start_serve
from tests.test_cli import run_json

SERVE_LOG: dict[str, Path] = {}


@pytest.fixture(scope="module")
def api(prod_env: dict[str, str], worker, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    SERVE_LOG["path"] = log
    process, base = start_serve(prod_env, log, workers=2)
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


def test_sync_generation_over_http(api: str, key: str, openai_fake) -> None:
    openai_fake.reset()
    status, body = post(api, key, {"model": "gpt-image-2", "prompt": "a kettle", "n": 2})
    assert status == 200, body
    assert body["balance"]["credits"] == 84 and len(body["images"]) == 2
    assert body["poll_url"].startswith(api)


def test_client_that_disconnects_loses_nothing(api: str, key: str, openai_fake,
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


def log_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def test_request_id_is_echoed_and_logged_and_keys_never_are(api: str, key: str,
                                                            worker) -> None:
    request = urllib.request.Request(f"{api}/api/v1/credits", headers={
        "Authorization": f"Bearer {key}", "X-Request-ID": "trace-me-42"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["X-Request-ID"] == "trace-me-42"
    status, body = post(api, key, {"model": "gpt-image-2", "prompt": "logged"})
    assert status == 200
    with urllib.request.urlopen(f"{api}/healthz", timeout=10) as response:
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    time.sleep(0.5)
    lines = log_lines(SERVE_LOG["path"])
    mine = [line for line in lines if line.get("request_id") == "trace-me-42"]
    assert mine and mine[-1]["event"] == "request" and mine[-1]["status"] == 200
    assert mine[-1]["route"] == "/api/v1/credits" and mine[-1]["user_id"].startswith("usr_")
    posted = [line for line in lines if line.get("generation_id") == body["id"]
              and line.get("event") == "request"]
    assert posted and posted[0]["duration_ms"] > 0
    jobs = [line for line in log_lines(worker.log_path) if line.get("event") == "job"
            and line.get("generation_id") == body["id"]]
    assert jobs and jobs[0]["status"] == "succeeded" and "prompt" not in jobs[0]
    everything = SERVE_LOG["path"].read_text() + worker.log_path.read_text()
    assert key not in everything and key[9:] not in everything


def test_metrics_add_up_across_server_processes(api: str, key: str) -> None:
    for _ in range(6):  # spread over both processes by the kernel
        urllib.request.urlopen(f"{api}/api/v1/models", timeout=10).close()
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:
        body = response.read().decode()
    counts = re.findall(r'gih_http_requests_total\{[^}]*route="/api/v1/models"[^}]*\} (\S+)',
                        body)
    assert sum(float(c) for c in counts) >= 6
    assert "gih_queue_depth" in body


def test_sigterm_lets_a_sync_request_and_its_job_finish(prod_env: dict[str, str], worker,
                                                        openai_fake, tmp_path: Path) -> None:
    env = {**os.environ, **prod_env}
    email = f"term{time.monotonic_ns()}@example.com"
    run_json("users", "create", email, "--credits", "8", env=env)
    key = run_json("keys", "create", email, env=env)["key"]
    openai_fake.reset()
    openai_fake.configure(latency_ms=3000)
    process, base = start_serve(prod_env, tmp_path / "serve.log", workers=1)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        answer=post(base, key, {"model": "gpt-image-2", "prompt": "graceful"})))
    thread.start()
    deadline = time.monotonic() + 10
    while not openai_fake.requests():  # the worker is now inside the 3 s upstream call
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    worker.process.send_signal(signal.SIGTERM)
    thread.join(30)
    status, body = result["answer"]
    assert status == 200 and body["status"] == "succeeded", body
    assert worker.process.wait(30) == 0
    assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal when done
    assert "Finished server process" in (tmp_path / "serve.log").read_text()
    worker_lines = log_lines(worker.log_path)
    assert any(line.get("generation_id") == body["id"] and line.get("event") == "job"
               for line in worker_lines)
    worker.start()  # for the tests after this one
