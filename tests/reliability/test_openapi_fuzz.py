"""Schemathesis against the API's own OpenAPI document (/openapi.json), in-process (ASGI) on
PostgreSQL with the mock provider.

Two runs, every operation in each (multipart included), a bounded, deterministic number of
examples, no shrinking:

- ``as served``: the document exactly as clients download it; positive and negative data, plus
  schemathesis' coverage phase (boundary values, missing/extra fields, undeclared methods);
- ``steered``: the same document with the catalog's values (model ids, ratios, sizes) and real
  generation ids put in as enums, so that many requests are *accepted* and the success shapes
  (200/202 generation objects, 409s, the 404 of another user's generation) are checked too.

Checks on every response: never a 5xx (a 500 ``generationFailed`` cannot happen with the mock
provider), never 422, always JSON; a documented status code; a success body that conforms to its
documented schema, or else exactly the contract's envelope ``{"error": {"message", "code"}}``
(no ``detail``) with a code that belongs to that status; auth enforced where declared; 405 for
undeclared methods.
"""

import copy
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi as schemathesis_asgi

from app.main import create_app
from tests.conftest import bearer, make_settings, run_sync, running_client

SEED = 20260430
MAX_EXAMPLES = 30

# The contract's error codes, by HTTP status (section 1).
CODES = {
    400: {"invalid_request"},
    401: {"missingApiKey", "invalidApiKey", "expiredApiKey"},
    402: {"insufficientCredits"},
    403: {"forbidden"},  # the admin API, for a key of anyone but an admin
    404: {"notFound"},
    405: {"methodNotAllowed"},
    409: {"idempotencyConflict", "duplicateEmail", "notCancelable"},
    500: {"generationFailed", "internalError"},
    503: {"serviceUnavailable"},
    504: {"generationPending"},
}
SUCCESS_OBJECTS = {"list", "credit_balance", "image_generation", "model", "user", "credit_grant",
                   "api_key", "usage", "webhook_secret"}


@pytest.fixture(scope="module")
def accounts(pg_url: str) -> dict[str, Any]:
    """The fuzzing user (a large balance, so charges never run out), one generation of its own,
    and another user's generation (which the fuzzing key must never see)."""

    async def setup() -> dict[str, Any]:
        async with running_client(make_settings(pg_url)) as client:
            _, key = await client.user_with_key(10_000_000)
            _, other_key = await client.user_with_key(100)
            ids = {}
            for name, k in (("own", key), ("other", other_key)):
                response = await client.http.post(
                    "/api/v1/images/generations", headers=bearer(k),
                    json={"model": "gpt-image-2", "prompt": "fuzz seed", "size": "1024x1024"})
                assert response.status_code == 200, response.text
                ids[name] = response.json()["id"]
            return {"key": key, "ids": ids}

    return run_sync(setup())


@schemathesis.check
def contract_envelope(ctx, response, case) -> bool:
    """The contract's rules that a JSON Schema cannot state."""
    status = response.status_code
    label = f"{case.operation.label} -> {status}"
    assert status != 422, f"{label}: FastAPI's 422 leaked: {response.text[:300]}"
    assert status < 500, f"{label}: server error: {response.text[:500]}"
    content_type = ", ".join(response.headers.get("content-type", []))
    openai_surface = case.operation.path.startswith("/v1/")
    if openai_surface and status == 200 and content_type.startswith("text/event-stream"):
        assert "data: " in response.text, label  # a stream asked for with stream: true
        return True
    assert content_type.startswith("application/json"), f"{label}: content-type {content_type}"
    body = response.json()
    assert isinstance(body, dict), f"{label}: not a JSON object: {response.text[:200]}"
    assert "detail" not in body, f"{label}: FastAPI's detail body: {response.text[:300]}"
    if openai_surface and status >= 400:  # OpenAI's shape, and whether to retry
        assert response.headers.get("x-should-retry") in (["true"], ["false"]), label
        assert body["error"].get("type"), label
    if 200 <= status < 300 and openai_surface and case.operation.method.upper() == "POST":
        assert isinstance(body.get("created"), int) and body.get("data"), label
    elif 200 <= status < 300:
        assert body.get("object") in SUCCESS_OBJECTS, f"{label}: {response.text[:300]}"
        if case.operation.method.upper() == "POST" and body["object"] == "image_generation":
            assert body.get("balance") is not None, f"{label}: no balance"
        if status == 202:
            assert response.headers.get("location") == [body["poll_url"]], label
    else:
        assert set(body) == {"error"}, f"{label}: not the envelope: {response.text[:300]}"
        error = body["error"]
        assert isinstance(error.get("message"), str) and error["message"], label
        assert error.get("code") in CODES.get(status, set()), \
            f"{label}: code {error.get('code')!r} is not a contract code for {status}"
        assert "Traceback" not in response.text, label
        if status == 401:
            assert response.headers.get("www-authenticate") == ["Bearer"], label
    return True


def config(key: str, mode: str = "all") -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "workers": 1,
        "continue-on-failure": True,
        "headers": bearer(key),
        "generation": {"mode": mode, "max-examples": MAX_EXAMPLES, "deterministic": True,
                       "no-shrink": True, "database": "none"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
        "checks": {
            # The document cannot state the catalog's rules (which model ids, which WxH), and
            # the API is deliberately lenient where the contract allows it (JSON "n": "2",
            # "async": 1): "schema-valid must be accepted" / "schema-invalid must be refused"
            # are therefore not contract properties. Everything else is on.
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"enabled": False},
        },
    })


def steered(document: dict[str, Any], catalog: dict[str, Any],
            ids: dict[str, str]) -> dict[str, Any]:
    """The served document with the catalog's values as enums and real generation ids."""
    document = copy.deepcopy(document)
    model = catalog["data"][0]
    post = document["paths"]["/api/v1/images/generations"]["post"]
    for content in post["requestBody"]["content"].values():
        properties = content["schema"]["properties"]
        properties["model"] = {"type": "string", "enum": [m["id"] for m in catalog["data"]]}
        properties["prompt"] = {"type": "string", "minLength": 1, "maxLength": 200,
                                "pattern": r"^\S"}
        properties.pop("reference_image", None)
        # 1K only: 4K placeholders would make the run slow without testing anything new.
        properties["quality"] = {"enum": [*model["render_qualities"], "1K"]}
        if content is post["requestBody"]["content"]["multipart/form-data"]:
            properties["output_format"] = {"enum": ["png", "jpeg", "webp"]}  # text: no null
            # by aspect ratio (size and ratio together are mostly inconsistent: a 400)
            properties.pop("size")
            properties["aspect_ratio"] = {"enum": model["aspect_ratios"]}
            properties["n"] = {"enum": ["1", "2", "4"]}
            properties["async"] = {"enum": ["true", "false", "1", "0"]}
        else:  # by size
            properties.pop("aspect_ratio")
            properties["size"] = {"enum": ["auto", "1024x1024", "1536x1024", "1024x1536"]}
        content["schema"]["additionalProperties"] = False
    # Valid Idempotency-Keys (the served document's random strings are mostly refused).
    post["parameters"][0]["schema"] = {"type": "string", "pattern": "^fuzz-[a-c][0-9]$"}
    get = document["paths"]["/api/v1/generations/{generation_id}"]["get"]
    get["parameters"][0]["schema"] = {"type": "string", "enum": [
        ids["own"], ids["other"], "gen_" + "0" * 24]}
    return document


@pytest.fixture(scope="module")
def app(pg_url: str, tmp_path_factory: pytest.TempPathFactory):
    # Hypothesis keeps caches in ./.hypothesis unless told otherwise: not in the repository.
    set_hypothesis_home_dir(str(tmp_path_factory.mktemp("hypothesis")))
    app = create_app(make_settings(pg_url, sync_timeout_s=20))
    yield app
    schemathesis_asgi.shutdown_lifespans()  # stops the runtime schemathesis started


@pytest.fixture(scope="module")
def as_served(app, accounts):
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config(accounts["key"]))


@pytest.fixture(scope="module")
def steered_schema(app, as_served, accounts):
    catalog = app.state.runtime.catalog.listing().model_dump()
    schema = schemathesis.openapi.from_dict(
        steered(as_served.raw_schema, catalog, accounts["ids"]),
        config=config(accounts["key"], mode="positive"))
    schema.app = app
    return schema


@dataclass
class Run:
    failures: list[str]
    # statuses seen per operation and media type, e.g. "POST /api/v1/images/generations
    # application/json" -> {200: 12, 400: 40}
    seen: dict[str, Counter[int]]


def run_engine(schema) -> Run:
    """Run schemathesis' engine (what its CLI runs): the failures it found, and the statuses
    it saw."""
    failures: list[str] = []
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            for case_id, interaction in event.recorder.interactions.items():
                case = event.recorder.cases[case_id].value
                if interaction.response is not None:
                    label = f"{case.operation.label} {case.media_type or ''}".strip()
                    seen[label][interaction.response.status_code] += 1
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        case = event.recorder.cases[case_id].value
                        failure = check.failure_info.failure
                        failures.append(f"[{check.name}] {failure.title}: {failure.message}\n"
                                        f"    {case.operation.label} "
                                        f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            # An exception that escaped the app: Starlette answers 500 internalError, then
            # re-raises it to the server (here: to schemathesis).
            failures.append(f"{getattr(event, 'label', '')}: the app raised "
                            f"{type(event.value).__name__}: {str(event.value)[:300]}")
    return Run(failures, dict(seen))


@pytest.fixture(scope="module")
def served_run(as_served) -> Run:
    return run_engine(as_served)


@pytest.fixture(scope="module")
def steered_run(steered_schema) -> Run:
    return run_engine(steered_schema)


def test_document_as_served(served_run: Run) -> None:
    assert served_run.seen, "the fuzzer sent nothing"
    assert not served_run.failures, "\n".join(dict.fromkeys(served_run.failures))


def test_document_steered_to_accepted_requests(steered_run: Run) -> None:
    assert steered_run.seen, "the fuzzer sent nothing"
    assert not steered_run.failures, "\n".join(dict.fromkeys(steered_run.failures))


def test_the_runs_reached_the_success_paths(served_run: Run, steered_run: Run) -> None:
    """The two runs reached the success paths, not only the 400s."""
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    for run in (served_run, steered_run):
        for label, statuses in run.seen.items():
            seen[label].update(statuses)
    post = seen.get("POST /api/v1/images/generations application/json", Counter())
    assert {200, 202, 400, 401} <= set(post), post
    form = seen.get("POST /api/v1/images/generations multipart/form-data", Counter())
    assert {200, 202, 400} <= set(form), form
    get = seen.get("GET /api/v1/generations/{generation_id}", Counter())
    assert {200, 404, 401} <= set(get), get
