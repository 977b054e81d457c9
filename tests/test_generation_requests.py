"""Every way a generation request can be wrong: a 400 in the envelope, and nothing charged."""

import io
import json

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.models import CreditLedgerEntry, Generation
from tests.conftest import bearer

PNG = io.BytesIO()
Image.new("RGB", (32, 32), "green").save(PNG, "PNG")
PNG_BYTES = PNG.getvalue()


def webp_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(out, "WEBP")
    return out.getvalue()


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (30, 40), "white").save(out, "JPEG")
    return out.getvalue()


BASE = {"model": "gpt-image-2", "prompt": "a red bicycle"}

JSON_CASES = {
    "n zero": ({"n": 0}, "n"),
    "n five": ({"n": 5}, "n"),
    "n not a number": ({"n": "two"}, "n"),
    "n a boolean": ({"n": True}, "n"),
    "size not multiple of 16": ({"size": "1000x1000"}, "size"),
    "size long edge": ({"size": "4000x1000"}, "size"),
    "size ratio over 3": ({"size": "3072x1008"}, "size"),
    "size too small": ({"size": "512x512"}, "size"),
    "size garbage": ({"size": "big"}, "size"),
    "unknown model": ({"model": "dall-e-9"}, "model"),
    "no model": ({"model": None}, "model"),
    "empty prompt": ({"prompt": "   "}, "prompt"),
    "no prompt": ({"prompt": None}, "prompt"),
    "prompt too long": ({"prompt": "x" * 32_001}, "prompt"),
    "prompt not a string": ({"prompt": 42}, "prompt"),
    "inconsistent ratio": ({"size": "1024x1024", "aspect_ratio": "16:9"}, "aspect_ratio"),
    "unknown ratio": ({"aspect_ratio": "7:5"}, "aspect_ratio"),
    "unknown quality": ({"quality": "ultra"}, "quality"),
    "tier against size": ({"size": "1024x1024", "quality": "4K"}, "quality"),
    "bad output format": ({"output_format": "gif"}, "output_format"),
    "async not boolean": ({"async": "maybe"}, "async"),
    "reference in JSON": ({"reference_image": "aGVsbG8="}, "reference_image"),
}


async def assert_nothing_charged(client, user, key: str, credits_before: int) -> None:
    balance = (await client.http.get("/api/v1/credits", headers=bearer(key))).json()["credits"]
    assert balance == credits_before
    async with client.session() as session:
        generations = await session.scalar(select(func.count()).select_from(Generation)
                                           .where(Generation.user_id == user.id))
        movements = await session.scalar(select(func.count()).select_from(CreditLedgerEntry)
                                         .where(CreditLedgerEntry.user_id == user.id))
    assert (generations, movements) == (0, 1)  # the grant only


def assert_400(response, param: str | None = None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]
    if param:
        assert error.get("param") == param, error


@pytest.mark.parametrize("case", list(JSON_CASES))
async def test_invalid_json_fields(any_db, case: str) -> None:
    change, param = JSON_CASES[case]
    user, key = await any_db.user_with_key(100)
    body = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    response = await any_db.http.post("/api/v1/images/generations", json=body,
                                      headers=bearer(key))
    assert_400(response, param)
    await assert_nothing_charged(any_db, user, key, 100)


@pytest.mark.parametrize("raw, content_type", [
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b"\xff\xfe\x00garbage", "application/json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (b"model=gpt-image-2", "application/x-www-form-urlencoded"),
    (b"hello", "text/plain"),
    (b"", "application/json"),
])
async def test_unreadable_bodies(any_db, raw: bytes, content_type: str) -> None:
    user, key = await any_db.user_with_key(100)
    response = await any_db.http.post("/api/v1/images/generations", content=raw,
                                      headers={**bearer(key), "Content-Type": content_type})
    assert_400(response)
    await assert_nothing_charged(any_db, user, key, 100)


async def test_huge_json_body_is_refused(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    body = json.dumps({**BASE, "padding": "x" * (10 * 1024 * 1024)})
    response = await any_db.http.post("/api/v1/images/generations", content=body,
                                      headers={**bearer(key), "Content-Type": "application/json"})
    assert_400(response)
    await assert_nothing_charged(any_db, user, key, 100)


def multipart(files: list[tuple[str, tuple[str, bytes, str]]], **fields: str) -> dict:
    return {"data": {**BASE, **fields}, "files": files}


async def test_seventeen_references_are_too_many(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    files = [("reference_image", (f"{i}.png", PNG_BYTES, "image/png")) for i in range(17)]
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      **multipart(files))
    assert_400(response, "reference_image")
    await assert_nothing_charged(any_db, user, key, 100)


async def test_text_file_named_png_is_refused(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    files = [("reference_image", ("notes.png", b"just some text, honestly", "image/png"))]
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      **multipart(files))
    assert_400(response, "reference_image")
    assert "PNG, JPEG or WebP" in response.json()["error"]["message"]
    await assert_nothing_charged(any_db, user, key, 100)


async def test_truncated_png_is_refused(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    big = io.BytesIO()
    Image.effect_noise((256, 256), 50).save(big, "PNG")
    files = [("reference_image", ("cut.png", big.getvalue()[:2000], "image/png"))]
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      **multipart(files))
    assert_400(response, "reference_image")
    await assert_nothing_charged(any_db, user, key, 100)


async def test_51_mb_reference_is_refused(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    blob = PNG_BYTES + b"\0" * (51 * 1024 * 1024)
    files = [("reference_image", ("big.png", blob, "image/png"))]
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      timeout=60, **multipart(files))
    assert_400(response, "reference_image")
    assert "50 MB" in response.json()["error"]["message"]
    await assert_nothing_charged(any_db, user, key, 100)


async def test_references_accepted_by_content_not_name(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    files = [("reference_image", ("photo.png", webp_bytes(), "image/png")),
             ("reference_image[]", ("x.gif", jpeg_bytes(), "image/gif"))]
    response = await any_db.http.post("/api/v1/images/generations", headers=bearer(key),
                                      **multipart(files, n="1", size="1024x1024"))
    assert response.status_code == 200, response.text
    async with any_db.session() as session:
        generation = await session.get(Generation, response.json()["id"])
        assert generation.reference_count == 2


async def test_multipart_fields_and_booleans(any_db) -> None:
    _, key = await any_db.user_with_key(100)
    response = await any_db.http.post(
        "/api/v1/images/generations", headers=bearer(key),
        data={**BASE, "n": "2", "async": "1", "aspect_ratio": "9:16", "quality": "1K",
              "output_format": "webp", "unknown_field": "ignored"},
        files=[("unknown_file", ("u.txt", b"ignored", "text/plain"))])  # forces multipart
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["size"], body["aspect_ratio"], body["quality"], body["n"]) == \
        ("720x1280", "9:16", "1K", 2)


async def test_bad_idempotency_key_is_refused(any_db) -> None:
    user, key = await any_db.user_with_key(100)
    for bad in (b"x" * 256, "caf\u00e9".encode(), b"a\x01b"):
        response = await any_db.http.post(
            "/api/v1/images/generations", json=BASE,
            headers={**bearer(key), "Idempotency-Key": bad})
        assert_400(response, "Idempotency-Key")
    await assert_nothing_charged(any_db, user, key, 100)


async def test_insufficient_credits_is_402_and_writes_nothing(any_db) -> None:
    user, key = await any_db.user_with_key(15)
    response = await any_db.http.post("/api/v1/images/generations", json={**BASE, "n": 2},
                                      headers=bearer(key))
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficientCredits"
    await assert_nothing_charged(any_db, user, key, 15)


async def test_unicode_prompt_at_the_limit_is_accepted(any_db) -> None:
    _, key = await any_db.user_with_key(100)
    prompt = ("\u0e41\u0e21\u0e27 \U0001f408 " * 8000)[:32_000]
    response = await any_db.http.post("/api/v1/images/generations",
                                      json={**BASE, "prompt": prompt, "async": True},
                                      headers=bearer(key))
    assert response.status_code == 202, response.text
    assert response.json()["prompt"] == prompt.strip()
