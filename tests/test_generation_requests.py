"""Every way a generation request can be wrong: a 400 in the envelope, and nothing charged.
Refused uploads (reference images, multipart parts) are in tests/test_uploads.py; bodies and
uploads against the real server in tests/reliability/test_hostile_input.py."""

import pytest

from tests.conftest import bearer
from tests.helpers import BASE, assert_400, assert_nothing_charged

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
