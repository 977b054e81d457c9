"""Generations on the production path: PostgreSQL, Redis + a real `gih worker`, SeaweedFS S3,
and the OpenAI SDK talking to the HTTP fake of the Images API."""

import asyncio
import hashlib
import io
import urllib.request
from pathlib import Path

from PIL import Image
from sqlalchemy import func, select

from app.credits import service as credits
from app.models import CreditLedgerEntry, Generation, GenerationImage
from tests.conftest import bearer, own_queue_env, poll, running_client, settings_from_env
from tests.fakes.processes import WorkerProcess

PROMPT = "A cinematic product photo with premium studio lighting"


def png_bytes(width: int = 64, height: int = 64, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # no API key: URLs stand alone
        return response.read()


async def balance(client, key: str) -> int:
    return (await client.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]


async def audit_clean(client) -> None:
    async with client.session() as session:
        assert await credits.audit(session) == []


async def generate(client, key: str, **fields):
    body = {"model": "gpt-image-2", "prompt": PROMPT, **fields}
    return await client.http.post("/api/v1/images/generations", json=body, headers=bearer(key),
                                  timeout=60)


async def test_sync_json_success(prod, openai_fake) -> None:
    _, key = await prod.user_with_key(100)
    response = await generate(prod, key, size="1536x1024", quality="high", n=2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "image_generation" and body["id"].startswith("gen_")
    assert body["status"] == "succeeded" and body["error"] is None
    assert (body["size"], body["aspect_ratio"], body["quality"], body["n"]) == \
        ("1536x1024", "3:2", "1K", 2)
    assert body["usage"] == {"credits": 16, "credits_requested": 16}
    assert body["balance"] == {"credits": 84, "account_type": "PRO", "next_expiration": None}
    assert body["poll_url"] == f"http://testserver/api/v1/generations/{body['id']}"
    assert body["created_at"].endswith("Z") and body["completed_at"].endswith("Z")
    assert len(body["images"]) == 2
    for image in body["images"]:
        assert image["id"].startswith("img_") and image["object"] == "image"
        assert (image["width"], image["height"], image["content_type"]) == \
            (1536, 1024, "image/png")
        picture = Image.open(io.BytesIO(fetch(image["url"])))
        assert (picture.format, picture.size) == ("PNG", (1536, 1024))
    call = openai_fake.requests()[-1]
    assert call["endpoint"] == "/v1/images/generations"
    assert {k: call["fields"][k] for k in ("model", "prompt", "size", "quality", "n",
                                           "output_format")} == \
        {"model": "gpt-image-2", "prompt": PROMPT, "size": "1536x1024", "quality": "high",
         "n": 2, "output_format": "png"}
    assert await balance(prod, key) == 84
    async with prod.session() as session:
        generation = await session.get(Generation, body["id"])
        assert generation.provider_usage and generation.provider_usage["total_tokens"] > 0


async def test_async_then_poll_through_the_worker(prod) -> None:
    _, key = await prod.user_with_key(40)
    response = await generate(prod, key, aspect_ratio="16:9", quality="2K", **{"async": True})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["usage"] == {"credits": 0,
                                                             "credits_requested": 10}
    assert response.headers["location"] == body["poll_url"]
    assert body["balance"]["credits"] == 30  # taken at once
    done = await poll(prod, key, body["id"])
    assert done["status"] == "succeeded" and done["usage"]["credits"] == 10
    assert (done["images"][0]["width"], done["images"][0]["height"]) == (2560, 1440)
    first_url = done["images"][0]["url"]
    again = await poll(prod, key, body["id"])
    assert "X-Amz-Signature" in first_url  # presigned, and signed afresh on every read
    assert Image.open(io.BytesIO(fetch(again["images"][0]["url"]))).size == (2560, 1440)


async def test_multipart_with_two_references_uses_the_edit_endpoint(prod, openai_fake) -> None:
    _, key = await prod.user_with_key(20)
    first = png_bytes(color="red")
    second = io.BytesIO()
    Image.new("RGB", (80, 48), "blue").save(second, "WEBP")
    response = await prod.http.post(
        "/api/v1/images/generations", headers=bearer(key), timeout=60,
        data={"model": "gpt-image-2", "prompt": PROMPT, "size": "1024x1024", "n": "1",
              "quality": "low"},
        files=[("reference_image", ("a.png", first, "image/png")),
               # a WebP the client calls a GIF, in a folder: the upstream gets what it is
               ("reference_image[]", ("../../b.gif", second.getvalue(), "image/gif"))])
    assert response.status_code == 200, response.text
    call = openai_fake.requests()[-1]
    assert call["endpoint"] == "/v1/images/edits"
    assert [(f["filename"], f["content_type"], f["sha256"]) for f in call["files"]] == [
        ("a.png", "image/png", hashlib.sha256(first).hexdigest()),
        ("b.gif", "image/webp", hashlib.sha256(second.getvalue()).hexdigest())]
    assert call["fields"]["prompt"] == PROMPT and call["fields"]["quality"] == "low"


async def test_provider_failure_is_generation_failed_and_refunded(prod, openai_fake) -> None:
    _, key = await prod.user_with_key(50)
    openai_fake.configure(fail_status=400, fail_code="moderation_blocked")
    response = await generate(prod, key, n=3)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "generationFailed" and error["generation_id"].startswith("gen_")
    assert "safety system" in error["message"]
    assert await balance(prod, key) == 50
    polled = await poll(prod, key, error["generation_id"])
    assert polled["status"] == "failed" and polled["usage"]["credits"] == 0
    assert polled["error"]["code"] == "generationFailed"
    await audit_clean(prod)


async def test_fewer_images_refunds_the_missing_ones(prod, openai_fake) -> None:
    _, key = await prod.user_with_key(100)
    openai_fake.configure(fewer_images=1)
    response = await generate(prod, key, n=3, quality="2K", aspect_ratio="1:1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and len(body["images"]) == 1
    assert body["usage"] == {"credits": 10, "credits_requested": 30}
    assert body["balance"]["credits"] == 90
    await audit_clean(prod)


async def test_rate_limited_then_success_is_charged_once(prod, openai_fake) -> None:
    _, key = await prod.user_with_key(8)
    openai_fake.configure(fail_first=1, retry_after_ms=50)
    response = await generate(prod, key)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in openai_fake.requests()] == [429, 200]
    assert await balance(prod, key) == 0
    async with prod.session() as session:
        charges = await session.scalar(
            select(func.count()).select_from(CreditLedgerEntry)
            .where(CreditLedgerEntry.generation_id == response.json()["id"]))
    assert charges == 1


async def test_provider_timeout_fails_and_refunds(prod_env, prod_sdk_env, openai_fake,
                                                  tmp_path: Path) -> None:
    env = own_queue_env(prod_env, GIH_PROVIDER_TIMEOUT_S="1")  # a worker timing out in 1 s
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        async with running_client(settings_from_env(env)) as client:
            _, key = await client.user_with_key(8)
            openai_fake.configure(timeout=True)  # 1 s per attempt, 1 retry
            response = await generate(client, key)
            assert response.status_code == 500, response.text
            assert "timed out" in response.json()["error"]["message"]
            assert len(openai_fake.requests()) == 2  # retried once
            assert await balance(client, key) == 8
            await audit_clean(client)
    finally:
        worker.stop()


async def test_idempotency_key_replays_and_conflicts(prod) -> None:
    _, key = await prod.user_with_key(100)
    headers = {**bearer(key), "Idempotency-Key": "order-42"}
    body = {"model": "gpt-image-2", "prompt": PROMPT}
    first = await prod.http.post("/api/v1/images/generations", json=body, headers=headers,
                                 timeout=60)
    assert first.status_code == 200
    again = await prod.http.post("/api/v1/images/generations", json=body, headers=headers,
                                 timeout=60)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert await balance(prod, key) == 92
    other = await prod.http.post("/api/v1/images/generations", json={**body, "n": 2},
                                 headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotencyConflict"
    assert await balance(prod, key) == 92


async def test_twenty_concurrent_replays_make_one_generation(prod) -> None:
    user, key = await prod.user_with_key(100)
    headers = {**bearer(key), "Idempotency-Key": "burst-1"}
    body = {"model": "gpt-image-2", "prompt": PROMPT, "async": True}
    responses = await asyncio.gather(*(
        prod.http.post("/api/v1/images/generations", json=body, headers=headers, timeout=60)
        for _ in range(20)))
    ids = {r.json()["id"] for r in responses if r.status_code in (200, 202)}
    assert len(ids) == 1
    assert all(r.status_code in (200, 202, 409) for r in responses)
    async with prod.session() as session:
        count = await session.scalar(select(func.count()).select_from(Generation)
                                     .where(Generation.user_id == user.id))
    assert count == 1
    await poll(prod, key, ids.pop())
    assert await balance(prod, key) == 92
    await audit_clean(prod)


async def test_another_users_generation_is_not_found(prod) -> None:
    _, owner = await prod.user_with_key(8)
    _, stranger = await prod.user_with_key(8)
    created = (await generate(prod, owner, **{"async": True})).json()
    response = await prod.http.get(f"/api/v1/generations/{created['id']}",
                                   headers=bearer(stranger))
    assert response.status_code == 404 and response.json()["error"]["code"] == "notFound"
    missing = await prod.http.get("/api/v1/generations/gen_doesnotexist", headers=bearer(owner))
    assert missing.status_code == 404


async def test_sync_wait_limit_answers_202_and_the_work_goes_on(
        prod_env, worker, prod_sdk_env, openai_fake) -> None:
    openai_fake.configure(latency_ms=1500)  # longer than the sync wait
    async with running_client(settings_from_env(prod_env, sync_timeout_s=0.5)) as client:
        _, key = await client.user_with_key(8)
        response = await generate(client, key)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] in ("queued", "running") and body["poll_url"]
        assert response.headers["location"] == body["poll_url"]
        done = await poll(client, key, body["id"], timeout=20)
        assert done["status"] == "succeeded" and done["usage"]["credits"] == 8


async def test_images_are_stored_once_per_index(prod) -> None:
    _, key = await prod.user_with_key(100)
    body = (await generate(prod, key, n=4)).json()
    async with prod.session() as session:
        keys = list(await session.scalars(select(GenerationImage.storage_key)
                                          .where(GenerationImage.generation_id == body["id"])))
    assert len(keys) == len(set(keys)) == 4
    assert all(body["id"] in k for k in keys)
