"""`gih serve` itself in production mode (PostgreSQL, Redis, S3, OpenAI fake, `gih worker`),
driven over real HTTP: the same commands the Dockerfile and compose file run."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import create_account_sync, own_queue_env, settings_from_env
from tests.fakes.processes import WorkerProcess, start_serve, stop_process
from tests.helpers import connections_to_every_process
from tests.waiting import wait_until

MODELS = "/api/v1/models"


@dataclass
class Served:
    base: str
    pid: int
    log: Path


@pytest.fixture(scope="module")
def api(prod_env: dict[str, str], session_worker,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`gih serve --workers 2` on the production configuration; the session's worker runs the
    jobs (the `worker` fixture of each test makes sure it is up)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process, base = start_serve(prod_env, log, workers=2)
    yield Served(base, process.pid, log)
    stop_process(process)
    assert "production mode" in log.read_text()


@pytest.fixture
def key(prod_env: dict[str, str]) -> str:
    return create_account_sync(settings_from_env(prod_env), 100).key


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


def upstream_calls(openai_fake, prompt: str) -> list[dict]:
    return [r for r in openai_fake.requests() if r["fields"].get("prompt") == prompt]


def psql(pg_url: str, query: str) -> list[str]:
    return subprocess.run(["psql", pg_url, "-tAc", query], capture_output=True, text=True,
                          check=True).stdout.split()


def test_sync_generation_over_http(api: Served, worker, key: str, openai_fake) -> None:
    status, body = post(api.base, key, {"model": "gpt-image-2", "prompt": "a kettle", "n": 2})
    assert status == 200, body
    assert body["balance"]["credits"] == 84 and len(body["images"]) == 2
    assert body["poll_url"].startswith(api.base)


def test_client_that_disconnects_loses_nothing(api: Served, worker, key: str, openai_fake,
                                               prod_db_url: str) -> None:
    openai_fake.configure(latency_ms=1500)
    payload = json.dumps({"model": "gpt-image-2", "prompt": "a teapot"}).encode()
    idempotency_key = f"walk-away-{key[-8:]}"
    status_query = f"SELECT status FROM generations WHERE idempotency_key = '{idempotency_key}'"
    host, port = api.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /api/v1/images/generations HTTP/1.1\r\n"
                    + f"Host: {host}\r\nAuthorization: Bearer {key}\r\n".encode()
                    + b"Content-Type: application/json\r\n"
                    + f"Idempotency-Key: {idempotency_key}\r\n".encode()
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        # The request is accepted and its job at the upstream; then the client goes away.
        wait_until(lambda: upstream_calls(openai_fake, "a teapot"), timeout=20,
                   what="the upstream call")
    assert wait_until(lambda: psql(prod_db_url, status_query) == ["succeeded"], timeout=20,
                      what=lambda: f"the generation succeeded: {psql(prod_db_url, status_query)}")
    status, body = post(api.base, key, {"model": "gpt-image-2", "prompt": "a teapot"},
                        {"Idempotency-Key": idempotency_key})
    assert status == 200, body
    assert body["status"] == "succeeded" and body["balance"]["credits"] == 92
    assert len(upstream_calls(openai_fake, "a teapot")) == 1


def log_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def test_request_id_is_echoed_and_logged_and_keys_never_are(api: Served, key: str,
                                                            worker, openai_fake) -> None:
    request = urllib.request.Request(f"{api.base}/api/v1/credits", headers={
        "Authorization": f"Bearer {key}", "X-Request-ID": "trace-me-42"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["X-Request-ID"] == "trace-me-42"
    status, body = post(api.base, key, {"model": "gpt-image-2", "prompt": "logged"})
    assert status == 200
    with urllib.request.urlopen(f"{api.base}/healthz", timeout=10) as response:
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])

    def logged(predicate) -> list[dict]:
        return [line for line in log_lines(api.log) if predicate(line)]

    mine = wait_until(lambda: logged(lambda line: line.get("request_id") == "trace-me-42"),
                      timeout=10, what="the request's log line")
    assert mine[-1]["event"] == "request" and mine[-1]["status"] == 200
    assert mine[-1]["route"] == "/api/v1/credits" and mine[-1]["user_id"].startswith("usr_")
    posted = wait_until(lambda: logged(lambda line: line.get("generation_id") == body["id"]
                                       and line.get("event") == "request"),
                        timeout=10, what="the POST's log line")
    assert posted[0]["duration_ms"] > 0
    jobs = [line for line in log_lines(worker.log_path) if line.get("event") == "job"
            and line.get("generation_id") == body["id"]]
    assert jobs and jobs[0]["status"] == "succeeded" and "prompt" not in jobs[0]
    everything = api.log.read_text() + worker.log_path.read_text()
    assert key not in everything and key[9:] not in everything


def models_requests(base: str) -> float:
    """gih_http_requests_total of GET /api/v1/models, as /metrics reports it (all processes)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert "gih_queue_depth" in body
    counts = re.findall(r'gih_http_requests_total\{[^}]*route="/api/v1/models"[^}]*\} (\S+)',
                        body)
    return sum(float(c) for c in counts)


def test_metrics_add_up_across_server_processes(api: Served) -> None:
    before = models_requests(api.base)
    # Keep-alive connections until both processes hold some, one request on each; then one
    # more request on every connection: the metrics of both processes must add up exactly.
    connections = connections_to_every_process(api.base, api.pid, MODELS)
    for connection in connections:
        connection.request("GET", MODELS)
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        connection.close()
    assert models_requests(api.base) - before == 2 * len(connections)


def test_sigterm_lets_a_sync_request_and_its_job_finish(prod_env: dict[str, str], openai_fake,
                                                        tmp_path: Path) -> None:
    """SIGTERM to `gih serve` and `gih worker` (their own: the session's worker keeps
    running) while a sync request waits on its job at the upstream."""
    env = own_queue_env(prod_env)
    key = create_account_sync(settings_from_env(env), 8).key
    openai_fake.configure(latency_ms=1500)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    process = None
    try:
        process, base = start_serve(env, tmp_path / "serve.log", workers=1)
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            answer=post(base, key, {"model": "gpt-image-2", "prompt": "graceful"})))
        thread.start()
        # The worker is now inside the upstream call.
        wait_until(lambda: upstream_calls(openai_fake, "graceful"), timeout=20,
                   what="the upstream call")
        os.killpg(process.pid, signal.SIGTERM)
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        thread.join(30)
        status, body = result["answer"]
        assert status == 200 and body["status"] == "succeeded", body
        assert worker.process.wait(30) == 0
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal when done
        assert "Finished server process" in (tmp_path / "serve.log").read_text()
        assert any(line.get("generation_id") == body["id"] and line.get("event") == "job"
                   for line in log_lines(worker.log_path))
    finally:
        stop_process(process)
        worker.stop()
