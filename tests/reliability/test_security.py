"""Security properties, end to end: what a database dump, a log file, a revoked or foreign key, a
guessed URL and the API documentation can give an attacker (nothing).

Extends tests/test_api_keys.py (a key's life through HTTP), tests/test_http.py (OpenAPI paths
start with /api/v1) and tests/test_embedded.py (a zeroed URL token is a 404).
"""

import hashlib
import hmac
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import func, select, update

from app.db import utcnow
from app.ids import random_base62
from app.keys import service as api_keys
from app.models import ApiKey, CreditLedgerEntry, Generation
from app.storage.base import generation_prefix
from tests.conftest import (
    TEST_SECRET,
    Account,
    bearer,
    create_account_sync,
    make_settings,
    run_sync,
    running_client,
)
from tests.fakes.processes import app_env, start_serve, stop_process
from tests.helpers import BASE, PNG_BYTES, connections_to_every_process, run
from tests.waiting import wait_until

PUBLIC_PATHS = {"/api/v1/models", "/api/v1/credits", "/api/v1/images/generations",
                "/api/v1/generations/{generation_id}", "/v1/models", "/v1/models/{model_id}",
                "/v1/images/generations", "/v1/images/edits", "/api/v1/generations",
                "/api/v1/generations/{generation_id}/cancel", "/api/v1/credits/ledger",
                "/api/v1/webhooks/secret", "/api/v1/webhooks/secret/rotate"}

# Section 13's admin API (for a key of an admin user; documented like the rest).
ADMIN_PATHS = {"/api/v1/admin/users", "/api/v1/admin/users/{user_id}",
               "/api/v1/admin/users/{user_id}/credits", "/api/v1/admin/users/{user_id}/keys",
               "/api/v1/admin/keys/{key_id}", "/api/v1/admin/usage"}
# The web console's pages: served, never documented.
CONSOLE_PATHS = ("/sign-in", "/sign-up", "/sign-out", "/keys", "/credits", "/generations",
                 "/playground", "/webhooks", "/account", "/admin/users", "/admin/usage",
                 "/thumbs", "/images", "/static")


def cli_env(pg_url: str) -> dict[str, str]:
    return app_env({"GIH_DATABASE_URL": pg_url, "GIH_SECRET_KEY": TEST_SECRET,
                    "GIH_PROVIDER": "mock"})


def account(pg_url: str, credits: int = 100) -> Account:
    return create_account_sync(make_settings(pg_url), credits, key_name="security")


def hmac_of(key: str, secret: str = TEST_SECRET) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def fetch(url: str, key: str | None = None, data: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers={
        **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def assert_401(status: int, body: dict, code: str) -> None:
    assert status == 401, body
    assert body == {"error": {"message": body["error"]["message"], "code": code}}


async def counts(client, user_id: str) -> tuple[int, int]:
    async with client.session() as session:
        generations = await session.scalar(select(func.count()).select_from(Generation)
                                           .where(Generation.user_id == user_id))
        ledger = await session.scalar(select(func.count()).select_from(CreditLedgerEntry)
                                      .where(CreditLedgerEntry.user_id == user_id))
    return generations, ledger


# --- keys ------------------------------------------------------------------------------------

async def test_keys_are_found_by_their_hmac_alone(pg, pg_url: str) -> None:
    """The database holds HMAC-SHA256(server secret, key) and only a display prefix of the key;
    a request's key is found by that hash alone: not by the prefix, not under another server
    secret; unknown, near and revoked keys are all refused the same way."""
    user, key = await pg.user_with_key(10)
    async with pg.session() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.user_id == user.id))
    assert row.key_hash == hmac_of(key) == api_keys.hash_key(key, TEST_SECRET.encode())
    assert (await pg.http.get("/api/v1/credits", headers=bearer(key))).status_code == 200

    # Put another key's HMAC in the row: that key now opens it, the issued one (whose prefix
    # the row still shows) no longer does.
    other = api_keys.generate_key()
    async with pg.session() as session, session.begin():
        await session.execute(update(ApiKey).where(ApiKey.id == row.id)
                              .values(key_hash=hmac_of(other)))
    response = await pg.http.get("/api/v1/credits", headers=bearer(other))
    assert response.status_code == 200 and response.json()["credits"] == 10
    assert key.startswith(row.prefix)
    refused = [key, other[:-1] + ("A" if other[-1] != "A" else "B"), other[:-1], other + "x",
               other.upper() if other.upper() != other else other.lower(),
               api_keys.generate_key()]
    for attempt in refused:
        response = await pg.http.get("/api/v1/credits", headers=bearer(attempt))
        assert_401(response.status_code, response.json(), "invalidApiKey")
    # The same key on a server with another secret is unknown there.
    elsewhere = make_settings(pg_url, secret_key="another-" + "s" * 40)
    async with running_client(elsewhere) as other_server:
        response = await other_server.http.get("/api/v1/credits", headers=bearer(other))
        assert_401(response.status_code, response.json(), "invalidApiKey")
    # And once revoked, it is refused like any unknown key.
    async with pg.session() as session, session.begin():
        await api_keys.revoke(session, row.id, secret=TEST_SECRET.encode())
    response = await pg.http.get("/api/v1/credits", headers=bearer(other))
    assert_401(response.status_code, response.json(), "invalidApiKey")


async def test_hashes_from_a_dump_are_not_keys(pg) -> None:
    user, key = await pg.user_with_key(10)
    async with pg.session() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.user_id == user.id))
    for token in (row.key_hash, "gih_live_" + row.key_hash[:32], row.prefix,
                  row.prefix + key[len(row.prefix):-1] + ("A" if key[-1] != "A" else "B")):
        response = await pg.http.get("/api/v1/credits", headers=bearer(token))
        assert response.status_code == 401, token
        assert response.json()["error"]["code"] == "invalidApiKey"
    assert (await pg.http.get("/api/v1/credits", headers=bearer(key))).status_code == 200


async def test_cli_revocation_is_effective_on_the_next_request(pg, pg_url: str) -> None:
    issued = account(pg_url)
    key = issued.key
    for _ in range(3):
        assert (await pg.http.get("/api/v1/credits", headers=bearer(key))).status_code == 200
    run("keys", "revoke", issued.key_id, env=cli_env(pg_url))
    response = await pg.http.get("/api/v1/credits", headers=bearer(key))
    assert_401(response.status_code, response.json(), "invalidApiKey")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_a_dead_key_cannot_enqueue_work(pg, how: str) -> None:
    user = await pg.user(100)
    key = await pg.key(user, expires_at=utcnow() + timedelta(days=1))
    async with pg.session() as session, session.begin():
        values = ({"revoked_at": utcnow()} if how == "revoked"
                  else {"expires_at": utcnow() - timedelta(seconds=1)})
        await session.execute(update(ApiKey).where(ApiKey.user_id == user.id).values(**values))
    before = await counts(pg, user.id)
    code = "invalidApiKey" if how == "revoked" else "expiredApiKey"
    attempts = [
        {"json": BASE},
        {"json": {**BASE, "async": True}},
        {"json": BASE, "headers": {"Idempotency-Key": "dead-key"}},
        {"data": BASE, "files": [("reference_image", ("r.png", PNG_BYTES, "image/png"))]},
    ]
    for attempt in attempts:
        headers = {**bearer(key), **attempt.pop("headers", {})}
        response = await pg.http.post("/api/v1/images/generations", headers=headers, **attempt)
        assert_401(response.status_code, response.json(), code)
    assert await counts(pg, user.id) == before == (0, 1)  # the grant only
    response = await pg.http.get("/api/v1/credits", headers=bearer(key))
    assert_401(response.status_code, response.json(), code)


@dataclass
class Served:
    base: str
    pid: int
    log: Path


@pytest.fixture(scope="module")
def served(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`gih serve --workers 2` on PostgreSQL (mock provider, local storage), DEBUG logging,
    stdout and stderr in a file."""
    folder = tmp_path_factory.mktemp("security-serve")
    log = folder / "serve.log"
    env = {"GIH_DATABASE_URL": pg_url, "GIH_SECRET_KEY": TEST_SECRET, "GIH_PROVIDER": "mock",
           "GIH_LOCAL_STORAGE_DIR": str(folder / "images"), "GIH_LOG_LEVEL": "DEBUG"}
    process, base = start_serve(env, log, workers=2)
    yield Served(base, process.pid, log)
    stop_process(process)


async def balance_in_database(pg_url: str, user_id: str) -> int:
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        return await conn.fetchval("SELECT credits FROM users WHERE id = $1", user_id)
    finally:
        await conn.close()


def test_revocation_and_logs_on_a_two_worker_server(served: Served, pg_url: str,
                                                    tmp_path: Path) -> None:
    base, log = served.base, served.log
    issued = account(pg_url, credits=1000)
    key = issued.key
    # Valid use, on connections held open to both worker processes.
    connections = connections_to_every_process(base, served.pid, "/api/v1/credits",
                                               bearer(key))
    status, body, _ = fetch(f"{base}/api/v1/images/generations", key,
                            json.dumps({**BASE, "size": "1024x1024"}).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200, body
    # Invalid uses of the same key.
    for header in (f"Token {key}", f"Bearer  {key} extra", f"bearer {key}x", f"Basic {key}",
                   f"Bearer {key[:-1]}", key):
        status, body, _ = fetch(f"{base}/api/v1/credits", headers={"Authorization": header})
        assert status == 401, (header, body)
    status, _, _ = fetch(f"{base}/api/v1/credits?api_key={key}")
    assert status == 401
    # Revocation by the CLI: the very next request on every connection, so on both processes,
    # is refused.
    run("keys", "revoke", issued.key_id, env=cli_env(pg_url))
    for connection in connections:
        connection.request("GET", "/api/v1/credits", headers=bearer(key))
        response = connection.getresponse()
        assert_401(response.status, json.loads(response.read()), "invalidApiKey")
        connection.close()
    # Nor can a revoked key make the server take a 51 MB upload: refused before the body.
    blob = tmp_path / "51mb.png"
    with open(blob, "wb") as out:
        out.write(PNG_BYTES)
        out.truncate(51 * 1024 * 1024)
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code} %{size_upload}", f"{base}/api/v1/images/generations",
         "-H", f"Authorization: Bearer {key}", "-H", "X-Request-ID: revoked-upload",
         "-F", "model=gpt-image-2", "-F", "prompt=x", "-F", f"reference_image=@{blob}"],
        capture_output=True, text=True, timeout=60)
    body, figures = result.stdout.rsplit("\n", 1)
    assert figures.split()[0] == "401", result.stdout
    assert run_sync(balance_in_database(pg_url, issued.user_id)) == 1000 - 8
    # The log: every line of it, at DEBUG, holds neither the key nor any 16 characters of it
    # (read once the last request's own line is in).
    wait_until(lambda: "revoked-upload" in log.read_text(), timeout=10,
               what="the last request's log line")
    text = log.read_text()
    body_ = key.removeprefix("gih_live_")
    assert key not in text and body_ not in text
    assert not [body_[i:i + 16] for i in range(len(body_) - 15) if body_[i:i + 16] in text]


# --- ownership -------------------------------------------------------------------------------

async def test_another_users_generations_are_indistinguishable_from_missing_ones(pg) -> None:
    _, key_a = await pg.user_with_key(1000)
    _, key_b = await pg.user_with_key(1000)
    post = "/api/v1/images/generations"
    owned = [
        (await pg.http.post(post, json=BASE, headers=bearer(key_a))).json()["id"],
        (await pg.http.post(post, json={**BASE, "async": True, "n": 2},
                            headers=bearer(key_a))).json()["id"],
        (await pg.http.post(post, data=BASE, headers=bearer(key_a),
                            files=[("reference_image", ("r.png", PNG_BYTES, "image/png"))]
                            )).json()["id"],
    ]
    missing = ["gen_" + random_base62(24) for _ in owned]
    near = [gen_id[:-1] + ("a" if gen_id[-1] != "a" else "b") for gen_id in owned]
    assert all(len(m) == len(o) for m, o in zip(missing, owned, strict=True))

    def shape(response, gen_id: str) -> tuple:
        headers = sorted((k, v) for k, v in response.headers.items()
                         if k not in ("x-request-id", "date"))
        return response.status_code, response.text.replace(gen_id, "ID"), tuple(headers)

    seen = set()
    for gen_id in owned + missing + near:
        response = await pg.http.get(f"/api/v1/generations/{gen_id}", headers=bearer(key_b))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "notFound"
        seen.add(shape(response, gen_id))
    assert len(seen) == 1, seen  # one answer for "someone else's" and "does not exist"
    for gen_id in owned:  # while the owner sees them
        response = await pg.http.get(f"/api/v1/generations/{gen_id}", headers=bearer(key_a))
        assert response.status_code == 200


async def test_idempotency_keys_are_per_user(pg) -> None:
    user_a, key_a = await pg.user_with_key(100)
    user_b, key_b = await pg.user_with_key(100)
    headers = {"Idempotency-Key": "shared-key-1"}
    first = await pg.http.post("/api/v1/images/generations", json=BASE,
                               headers={**bearer(key_a), **headers})
    same_body = await pg.http.post("/api/v1/images/generations", json=BASE,
                                   headers={**bearer(key_b), **headers})
    other_body = await pg.http.post("/api/v1/images/generations",
                                    json={**BASE, "prompt": "different"},
                                    headers={**bearer(key_b), "Idempotency-Key": "shared-key-2"})
    await pg.http.post("/api/v1/images/generations", json=BASE,
                       headers={**bearer(key_a), "Idempotency-Key": "shared-key-2"})
    assert first.status_code == same_body.status_code == other_body.status_code == 200
    assert first.json()["id"] != same_body.json()["id"]  # B did not get A's generation
    assert same_body.json()["balance"]["credits"] == 92  # and paid for its own
    assert await counts(pg, user_a.id) == (2, 3) and await counts(pg, user_b.id) == (2, 3)


# --- image URLs ------------------------------------------------------------------------------

async def test_local_image_urls_are_hmac_capabilities(pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(pg_url, local_storage_dir=tmp_path / "images")
    async with running_client(settings) as client:
        _, key = await client.user_with_key(100)
        _, other_key = await client.user_with_key(100)
        body = (await client.http.post(
            "/api/v1/images/generations", headers=bearer(key), data={**BASE, "n": "2"},
            files=[("reference_image", ("r.png", PNG_BYTES, "image/png"))])).json()
        other = (await client.http.post("/api/v1/images/generations", json=BASE,
                                        headers=bearer(other_key))).json()
        gen_id = body["id"]
        token = hmac.new(TEST_SECRET.encode(), gen_id.encode(), hashlib.sha256).hexdigest()[:24]
        assert generation_prefix(gen_id, TEST_SECRET.encode()).endswith(token)
        for index, image in enumerate(body["images"]):
            path = urlsplit(image["url"]).path
            assert path == f"/files/generations/{gen_id}/{token}/{index}.png"
            response = await client.http.get(path)  # no key needed: the URL is the capability
            assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        other_token = urlsplit(other["images"][0]["url"]).path.split("/")[4]
        secret_file = tmp_path / "secret.txt"
        secret_file.write_text("do not serve")
        guesses = [
            f"/files/generations/{gen_id}/{'0' * 24}/0.png",
            f"/files/generations/{gen_id}/{other_token}/0.png",  # a real token, for another id
            f"/files/generations/{gen_id}/{token[:-1]}/0.png",
            f"/files/generations/{gen_id}/{token}/2.png",  # n=2: there is no third
            f"/files/generations/{gen_id}/{token}/reference-0.png",  # the client's upload
            f"/files/generations/{gen_id}/0.png",
            f"/files/generations/{gen_id}/",
            "/files/generations/",
            "/files/",
            "/files/../secret.txt",
            "/files/%2e%2e/secret.txt",
            "/files/..%2fsecret.txt",
            "/files/generations/%2e%2e/%2e%2e/secret.txt",
            f"/files/{tmp_path}/secret.txt",
            f"/files//{tmp_path}/secret.txt",
        ]
        # The upload is deleted once its generation is final, and was never served meanwhile.
        assert not list((tmp_path / "images").rglob("reference-*"))
        for guess in guesses:
            response = await client.http.get(guess)
            assert response.status_code == 404, (guess, response.status_code)
            assert response.json()["error"]["code"] == "notFound"
            assert b"do not serve" not in response.content


async def test_s3_urls_are_presigned_expiring_and_tamper_proof(prod) -> None:
    _, key = await prod.user_with_key(100)
    body = (await prod.http.post("/api/v1/images/generations", json={**BASE, "n": 2},
                                 headers=bearer(key))).json()
    assert body["status"] == "succeeded", body
    ttl = prod.app.state.runtime.settings.s3_presign_ttl_s
    url = body["images"][0]["url"]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert 0 < int(query["X-Amz-Expires"][0]) <= ttl
    assert body["id"] in parts.path and "reference" not in parts.path

    def get_status(target: str) -> int:
        try:
            with urllib.request.urlopen(target, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def with_query(**changes: str) -> str:
        params = {k: v[0] for k, v in query.items()} | changes
        return urlunsplit(parts._replace(query=urlencode(params)))

    assert get_status(url) == 200
    signature = query["X-Amz-Signature"][0]
    tampered = {
        "signature": with_query(
            **{"X-Amz-Signature": signature[:-1] + ("0" if signature[-1] != "0" else "1")}),
        "longer expiry": with_query(**{"X-Amz-Expires": "604800"}),
        "other object": urlunsplit(parts._replace(
            path=urlsplit(body["images"][1]["url"]).path)),
        "no signature": urlunsplit(parts._replace(query="")),
    }
    for name, target in tampered.items():
        assert get_status(target) == 403, name


# --- documentation -----------------------------------------------------------------------------

async def test_docs_list_only_the_public_api(any_db) -> None:
    http = any_db.http
    schema = (await http.get("/openapi.json")).json()
    assert set(schema["paths"]) == PUBLIC_PATHS | ADMIN_PATHS
    assert not [path for path in schema["paths"] if path.startswith(CONSOLE_PATHS)]
    assert "servers" not in schema  # no internal host names
    text = json.dumps(schema)
    for word in ("/files", "/metrics", "/readyz", "/healthz", "/thumbs", "/sign-in", TEST_SECRET,
                 "gih_live_" + "A" * 4):
        assert word not in text, word
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    for hidden in ("/healthz", "/readyz", "/metrics"):  # they exist, undocumented
        assert (await http.get(hidden)).status_code in (200, 503)
        assert hidden not in docs.text


async def test_database_dump_holds_no_key_material(pg, pg_url: str) -> None:
    """A full pg_dump (schema and data) of the database, after keys were issued and used,
    revoked (by the CLI and by the service) and expired, holds no key, no key body, no 16
    characters of one, and not the server secret; only each key's hash and display prefix."""
    keys: dict[str, str] = {}  # how it ended -> raw key
    user, keys["used"] = await pg.user_with_key(10)
    cli = account(pg_url)
    keys["revoked by the CLI"] = cli.key
    expiring, keys["expired"] = await pg.user_with_key(10)
    revoked_user, keys["revoked"] = await pg.user_with_key(10)
    for raw in keys.values():
        assert (await pg.http.get("/api/v1/credits", headers=bearer(raw))).status_code == 200
    run("keys", "revoke", cli.key_id, env=cli_env(pg_url))
    async with pg.session() as session, session.begin():
        await session.execute(update(ApiKey).where(ApiKey.user_id == expiring.id)
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
        key_id = await session.scalar(select(ApiKey.id).where(ApiKey.user_id == revoked_user.id))
        await api_keys.revoke(session, key_id, secret=TEST_SECRET.encode())
    async with pg.session() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.user_id == user.id))
    columns = {c.name: getattr(row, c.key) for c in ApiKey.__table__.columns}
    assert all(keys["used"].removeprefix("gih_live_") not in str(v) for v in columns.values())
    assert keys["used"].startswith(row.prefix) and len(row.prefix) <= 13

    dump = subprocess.run(["pg_dump", pg_url], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert "api_keys" in dump and "key_hash" in dump and row.key_hash in dump
    for how, key in keys.items():
        body = key.removeprefix("gih_live_")
        assert key not in dump and body not in dump, how
        leaks = [body[i:i + 16] for i in range(len(body) - 15) if body[i:i + 16] in dump]
        assert not leaks, (how, leaks)
    assert TEST_SECRET not in dump
