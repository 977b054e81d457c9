"""The bare-app ceiling of issue 14: raw ASGI + asyncpg + redis doing the minimum, for scenario K.

    CEILING_DATABASE_URL=postgresql://... CEILING_REDIS_URL=redis://... CEILING_SECRET=... \
    uvicorn bench.ceiling:app --no-access-log --http httptools --loop uvloop --workers 1

`GET /balance`: the bearer key's HMAC-SHA256 looked up in ceiling_keys joined to ceiling_users,
the balance as JSON. `POST /submit`: the same authentication, the JSON body parsed, then one
transaction that locks and decrements the user (an UPDATE ... RETURNING holds the row lock) and
inserts a generation row, then one LPUSH; 202 JSON. `POST /submit-one`: the same charge and
insert as one SQL statement (a CTE). Its tables are created at start; the bench fills them.
"""

import hashlib
import hmac
import json
import os
import secrets

import asyncpg
import redis.asyncio as redis

TABLES = """
CREATE TABLE IF NOT EXISTS ceiling_users (id text PRIMARY KEY, credits bigint NOT NULL);
CREATE TABLE IF NOT EXISTS ceiling_keys (hash text PRIMARY KEY,
                                         user_id text NOT NULL REFERENCES ceiling_users);
CREATE TABLE IF NOT EXISTS ceiling_generations (
    id text PRIMARY KEY, user_id text NOT NULL REFERENCES ceiling_users, model text NOT NULL,
    prompt text NOT NULL, credits bigint NOT NULL, status text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now())"""
AUTH = "SELECT u.id, u.credits FROM ceiling_keys k JOIN ceiling_users u ON u.id = k.user_id " \
       "WHERE k.hash = $1"
CHARGE = "UPDATE ceiling_users SET credits = credits - $2 WHERE id = $1 AND credits >= $2 " \
         "RETURNING credits"
INSERT = "INSERT INTO ceiling_generations (id, user_id, model, prompt, credits) " \
         "VALUES ($1, $2, $3, $4, $5)"
CHARGE_AND_INSERT = f"WITH c AS ({CHARGE}) INSERT INTO ceiling_generations (id, user_id, model, " \
                    "prompt, credits) SELECT $3, $1, $4, $5, $2 FROM c RETURNING " \
                    "(SELECT credits FROM c)"
COST = 8
SECRET = os.environ.get("CEILING_SECRET", "ceiling").encode()
state: dict = {}


def key_hash(raw: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, raw, hashlib.sha256).hexdigest()


async def reply(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        state["db"] = await asyncpg.create_pool(os.environ["CEILING_DATABASE_URL"],
                                                min_size=10, max_size=10)
        await state["db"].execute(TABLES)
        state["redis"] = redis.from_url(os.environ["CEILING_REDIS_URL"])
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await state["db"].close()
        await state["redis"].aclose()
        return await send({"type": "lifespan.shutdown.complete"})
    path, db = scope["path"], state["db"]
    if path == "/healthz":
        return await reply(send, 200, {"ok": True})
    raw = dict(scope["headers"]).get(b"authorization", b"")
    user = await db.fetchrow(AUTH, key_hash(raw[7:])) if raw.startswith(b"Bearer ") else None
    if user is None:
        return await reply(send, 401, {"error": {"code": "unauthorized"}})
    if scope["method"] == "GET" and path == "/balance":
        return await reply(send, 200, {"available": user["credits"]})
    if scope["method"] != "POST" or path not in ("/submit", "/submit-one"):
        return await reply(send, 404, {"error": {"code": "notFound"}})
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    wanted, gen_id = json.loads(body), "gen_" + secrets.token_hex(12)
    args = (wanted["model"], wanted["prompt"])
    if path == "/submit-one":
        left = await db.fetchval(CHARGE_AND_INSERT, user["id"], COST, gen_id, *args)
    else:
        async with db.acquire() as conn, conn.transaction():
            left = await conn.fetchval(CHARGE, user["id"], COST)
            if left is not None:
                await conn.execute(INSERT, gen_id, user["id"], *args, COST)
    if left is None:
        return await reply(send, 402, {"error": {"code": "insufficientCredits"}})
    await state["redis"].lpush("ceiling:queue", gen_id)
    await reply(send, 202, {"id": gen_id, "status": "queued", "balance": {"available": left}})
