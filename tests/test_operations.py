"""Health, readiness with each dependency down in turn, and metrics that move."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import (
    bearer,
    fresh_database,
    make_settings,
    running_client,
    settings_from_env,
)
from tests.fakes.processes import RedisServer, free_port
from tests.waiting import wait_until_async


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


async def readyz(client) -> tuple[int, dict]:
    response = await client.http.get("/readyz")
    return response.status_code, response.json()


async def test_healthz_needs_nothing(tmp_path) -> None:
    async with running_client(make_settings("postgresql://postgres@127.0.0.1:1/none")) as client:
        response = await client.http.get("/healthz")
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        status, body = await readyz(client)
        assert status == 503 and body["error"]["code"] == "serviceUnavailable"
        assert body["error"]["failing"] == ["database"]
        assert "database" in body["error"]["message"]


async def test_readyz_names_redis_when_it_is_down_and_recovers(
        prod_env, own_redis, prod_sdk_env) -> None:
    async with running_client(settings_from_env(prod_env, redis_url=own_redis.url)) as client:
        status, body = await readyz(client)
        assert status == 200, body
        assert body["checks"] == {"database": "ok", "storage": "ok", "redis": "ok"}
        own_redis.stop()
        status, body = await readyz(client)
        assert status == 503 and body["error"]["failing"] == ["redis"]
        own_redis.start()

        async def ready() -> bool:  # the connection pool reconnects by itself
            return (await readyz(client))[0] == 200

        await wait_until_async(ready, timeout=5, interval=0.1, what="/readyz 200 again")


async def test_readyz_names_storage_at_a_closed_port(prod_env, prod_sdk_env) -> None:
    settings = settings_from_env(prod_env, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    async with running_client(settings) as client:
        status, body = await readyz(client)
        assert status == 503 and body["error"]["failing"] == ["storage"], body


async def test_readyz_survives_the_database_dropping_connections(pg) -> None:
    assert (await readyz(pg))[0] == 200
    async with pg.app.state.runtime.engine.connect() as connection:
        await connection.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    status, body = await readyz(pg)
    assert status == 200, body


def metric(text_body: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text_body.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of the test's own: an app sweeps its database when it starts, and would run
    (and count) what other tests left unfinished in a shared one."""
    with fresh_database("metrics") as url:
        yield url


async def test_metrics_move_after_a_generation_a_refund_and_a_4xx(
        own_database, openai_fake, prod_sdk_env) -> None:
    settings = make_settings(own_database, provider="openai")  # in-process jobs: one registry
    async with running_client(settings) as client:
        _, key = await client.user_with_key(100)
        before = (await client.http.get("/metrics")).text
        ok = await client.http.post("/api/v1/images/generations", headers=bearer(key),
                                    json={"model": "gpt-image-2", "prompt": "x", "n": 2})
        assert ok.status_code == 200
        openai_fake.configure(fail_status=400)
        failed = await client.http.post("/api/v1/images/generations", headers=bearer(key),
                                        json={"model": "gpt-image-2", "prompt": "x"})
        assert failed.status_code == 500
        bad = await client.http.post("/api/v1/images/generations", headers=bearer(key),
                                     json={"model": "gpt-image-2", "prompt": "x", "n": 9})
        assert bad.status_code == 400

        async def metrics_once_the_jobs_are_done() -> str | None:
            # a job's last steps may end just after its answer went out
            text = (await client.http.get("/metrics")).text
            return text if "gih_queue_depth 0" in text else None

        after = await wait_until_async(metrics_once_the_jobs_are_done, timeout=10,
                                       what="gih_queue_depth 0")
    route = "/api/v1/images/generations"

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("gih_http_requests_total", route=route, status="400") == 1
    assert moved("gih_http_requests_total", route=route, status="200") == 1
    assert moved("gih_http_request_duration_seconds_count", route=route) == 3
    assert moved("gih_generations_total", status="succeeded", mode="sync") == 1
    assert moved("gih_generations_total", status="failed", mode="sync") == 1
    assert moved("gih_credits_charged_total") == 24
    assert moved("gih_credits_refunded_total") == 8
    assert moved("gih_provider_errors_total", provider="openai", code="provider_rejected") == 1
    assert moved("gih_provider_request_duration_seconds_count", outcome="ok") == 1
    assert "gih_queue_depth 0" in after
