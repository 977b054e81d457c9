"""Every error the API can give at this stage, through HTTP, in the contract's envelope."""

import json

from app.catalog.catalog import load_catalog
from tests.conftest import bearer, make_settings, running_client

CONTRACT_MODEL = {
    "id": "gpt-image-2", "object": "model", "name": "GPT Image 2",
    "provider": "openai", "provider_model": "gpt-image-2",
    "aspect_ratios": ["auto", "1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "5:4", "4:5",
                      "21:9", "9:21", "2:1", "1:2", "3:1", "1:3"],
    "qualities": ["1K", "2K", "4K"],
    "render_qualities": ["auto", "low", "medium", "high"],
    "default_aspect_ratio": "auto", "default_quality": "1K",
    "reference_image_limit": 16,
    "max_images_per_request": 4,
    "credits_per_image": {"1K": 8, "2K": 10, "4K": 12},
}


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


async def test_models_equals_the_contract_without_a_key(any_db) -> None:
    response = await any_db.http.get("/api/v1/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [CONTRACT_MODEL]}


async def test_operator_catalog_file_replaces_the_shipped_one(pg_url, tmp_path) -> None:
    custom = dict(CONTRACT_MODEL, credits_per_image={"1K": 5, "2K": 9, "4K": 20})
    other = dict(CONTRACT_MODEL, id="gpt-image-2-mini", name="GPT Image 2 mini",
                 provider_model="gpt-image-2-mini", max_images_per_request=2)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": [custom, other]}))
    async with running_client(make_settings(pg_url, catalog_path=path)) as client:
        body = (await client.http.get("/api/v1/models")).json()
    assert [m["id"] for m in body["data"]] == ["gpt-image-2", "gpt-image-2-mini"]
    assert body["data"][0]["credits_per_image"] == {"1K": 5, "2K": 9, "4K": 20}
    assert load_catalog(path).get("gpt-image-2-mini").max_images_per_request == 2


async def test_unknown_route_is_not_found(any_db) -> None:
    assert_envelope(await any_db.http.get("/api/v1/nope"), 404, "notFound")
    assert_envelope(await any_db.http.get("/nope"), 404, "notFound")
    # / is the web console (section 13): to Sign in, for someone signed out.
    console = await any_db.http.get("/")
    assert console.status_code == 303 and console.headers["location"] == "/sign-in"
    assert_envelope(await any_db.http.get("/api/v1/generations/gen_x/extra"), 404, "notFound")


async def test_wrong_method_is_method_not_allowed(any_db) -> None:
    response = await any_db.http.post("/api/v1/models", json={})
    assert_envelope(response, 405, "methodNotAllowed")
    assert "GET" in response.headers["allow"]
    assert_envelope(await any_db.http.delete("/api/v1/credits"), 405, "methodNotAllowed")


async def test_auth_errors_carry_www_authenticate(any_db) -> None:
    for headers, code in [({}, "missingApiKey"), (bearer("nope"), "invalidApiKey")]:
        response = await any_db.http.get("/api/v1/credits", headers=headers)
        assert_envelope(response, 401, code)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_crash_is_internal_error_without_internals(pg) -> None:
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    pg.app.add_api_route("/api/v1/_test_crash", boom)
    response = await pg.http.get("/api/v1/_test_crash")
    error = assert_envelope(response, 500, "internalError")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert error["message"] == "internal server error"


async def test_database_down_is_service_unavailable(tmp_path) -> None:
    # Nothing listens on port 1: the database is unreachable.
    settings = make_settings("postgresql://postgres@127.0.0.1:1/none")
    async with running_client(settings) as client:
        response = await client.http.get("/api/v1/credits",
                                         headers=bearer("gih_live_" + "a" * 32))
        assert_envelope(response, 503, "serviceUnavailable")
        # no dependency behind the catalog: still served
        assert (await client.http.get("/api/v1/models")).status_code == 200


async def test_openapi_lists_only_public_paths(any_db) -> None:
    schema = (await any_db.http.get("/openapi.json")).json()
    assert set(schema["paths"]) >= {"/api/v1/models", "/api/v1/credits"}
    assert all(p.startswith(("/api/v1/", "/v1/")) for p in schema["paths"])


def test_a_full_database_is_unavailable_not_a_crash() -> None:
    """asyncpg's 'too many clients' arrives wrapped twice by SQLAlchemy: still a 503."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from app.errors import is_unavailable
    from app.ops.error_handlers import crash_response

    driver = asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")
    adapted = RuntimeError("sorry, too many clients already")
    adapted.__cause__ = driver
    wrapped = DBAPIError("connect", None, adapted)
    wrapped.__cause__ = adapted
    assert is_unavailable(wrapped)
    assert crash_response("GET", "/api/v1/credits", wrapped).status_code == 503
    assert not is_unavailable(ValueError("a bug"))
