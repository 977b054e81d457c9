"""The OpenAI-compatible API (/v1), driven by the official `openai` package itself, against
`gih serve` in the embedded default (mock provider) and in production (PostgreSQL, Redis, S3,
the real `gih worker` and the fake upstream)."""

import base64
import io
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import pytest
from PIL import Image

from tests.conftest import create_account_sync, settings_from_env
from tests.fakes.processes import GIH, app_env, start_serve
from tests.waiting import wait_until

PROMPT = "A cinematic product photo of a transparent perfume bottle on black marble"


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # for `gih` commands against the same database
    process: subprocess.Popen

    def gih(self, *args: str) -> dict:
        done = subprocess.run([GIH, *args, "--json"], env=self.env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def account(self, credits: int) -> str:
        """A new user with `credits` and a key of theirs, in the server's database (written as
        `gih users create` and `gih keys create` write them, without two processes a test)."""
        return create_account_sync(settings_from_env(self.env), credits).key

    def client(self, key: str, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, **options)  # type: ignore[arg-type]

    def async_client(self, key: str, **options: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=key, **options)  # type: ignore[arg-type]

    def api(self, key: str, path: str) -> dict:
        request = urllib.request.Request(f"{self.base}{path}",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def wait_for(self, key: str, generation_id: str, statuses: tuple[str, ...], *,
                 timeout: float) -> str:
        """Wait until the generation reaches one of `statuses`; that status."""
        def status() -> str | None:
            found = self.api(key, f"/api/v1/generations/{generation_id}")["status"]
            return found if found in statuses else None
        return wait_until(status, timeout=timeout, interval=0.1,
                          what=f"generation {generation_id} {'/'.join(statuses)}")

    def balance(self, key: str) -> int:
        return int(self.api(key, "/api/v1/credits")["credits"])

    def audit_is_clean(self) -> bool:
        done = subprocess.run([GIH, "credits", "audit"], env=self.env, capture_output=True,
                              text=True, timeout=60)
        return done.returncode == 0


def serve(env: dict[str, str], folder: Path) -> Iterator[Server]:
    process, base = start_serve(env, folder / "serve.log")
    try:
        yield Server(base, app_env({**env, "GIH_PUBLIC_BASE_URL": base}), process)
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("embedded")
    yield from serve({"GIH_DATABASE_URL": f"sqlite:///{folder}/gih.db",
                      "GIH_LOCAL_STORAGE_DIR": str(folder / "images")}, folder)


@pytest.fixture(scope="module")
def production(prod_env: dict[str, str], session_worker: object,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(prod_env, tmp_path_factory.mktemp("production"))


@pytest.fixture(params=["embedded", "production"])
def server(request: pytest.FixtureRequest, openai_fake) -> Server:
    openai_fake.reset()
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def png(size: tuple[int, int], colour: tuple[int, ...] = (200, 60, 60),
        mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


# --- models -------------------------------------------------------------------------------

def test_models_list_and_retrieve(server: Server) -> None:
    client = server.client("not-needed")
    assert [m.id for m in client.models.list()] == ["gpt-image-2"]
    model = client.models.retrieve("gpt-image-2")
    assert (model.id, model.object, model.owned_by, model.created) == (
        "gpt-image-2", "model", "openai", 1777507200)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-9")


# --- generate -----------------------------------------------------------------------------

def test_generate_two_images_charges_once(server: Server) -> None:
    key = server.account(100)
    raw = server.client(key).images.with_raw_response.generate(
        model="gpt-image-2", prompt=PROMPT, n=2, size="1024x1536", quality="low")
    result = raw.parse()
    assert len(result.data) == 2
    for image in result.data:
        assert decoded(image.b64_json).size == (1024, 1536)
    assert result.size == "1024x1536" and result.output_format == "png"
    generation_id = raw.headers["x-gih-generation-id"]
    assert raw.headers["x-gih-credits-charged"] == "16"
    assert raw.headers["x-gih-credits-remaining"] == "84" == str(server.balance(key))
    record = server.api(key, f"/api/v1/generations/{generation_id}")
    assert record["status"] == "succeeded" and record["usage"]["credits"] == 16
    for ours, stored in zip(result.data, record["images"], strict=True):
        assert base64.b64decode(ours.b64_json) == fetch(stored["url"])


async def test_response_format_url_gives_fetchable_urls(server: Server) -> None:
    key = server.account(100)
    result = await server.async_client(key).images.generate(
        model="gpt-image-2", prompt=PROMPT, n=2, size="1536x1024", response_format="url")
    assert [d.b64_json for d in result.data] == [None, None]
    for image in result.data:
        assert Image.open(io.BytesIO(fetch(image.url))).size == (1536, 1024)
    assert server.balance(key) == 84


def test_the_model_defaults_to_the_catalogs_first(server: Server) -> None:
    key = server.account(8)
    result = server.client(key).images.generate(prompt=PROMPT)
    assert len(result.data) == 1 and server.balance(key) == 0


# --- edit ---------------------------------------------------------------------------------

def test_edit_with_two_images_and_a_mask(server: Server, openai_fake) -> None:
    key = server.account(100)
    first, second = png((64, 64)), png((64, 64), (20, 90, 200))
    mask = png((64, 64), (0, 0, 0, 0), "RGBA")
    result = server.client(key).images.edit(
        model="gpt-image-2", prompt="put the bottle in the second picture",
        image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
        mask=("mask.png", mask, "image/png"), size="1024x1024", input_fidelity="high")
    assert decoded(result.data[0].b64_json).size == (1024, 1024)
    assert server.balance(key) == 92
    if server.env.get("GIH_PROVIDER") == "openai":  # the fake upstream saw what we got
        import hashlib

        (call,) = openai_fake.requests()
        assert call["endpoint"] == "/v1/images/edits"
        files = {(f["field"], f["sha256"]) for f in call["files"]}
        assert files == {("image[]", hashlib.sha256(first).hexdigest()),
                         ("image[]", hashlib.sha256(second).hexdigest()),
                         ("mask", hashlib.sha256(mask).hexdigest())}
        assert call["fields"]["input_fidelity"] == "high"


def test_edit_refuses_what_is_not_an_image(server: Server) -> None:
    key = server.account(100)
    client = server.client(key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(prompt=PROMPT, image=("a.png", b"GIF89a not really", "image/png"))
    assert caught.value.body["param"] == "image"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:  # a mask must be a PNG
        client.images.edit(prompt=PROMPT, image=("a.png", png((32, 32)), "image/png"),
                           mask=("m.jpg", jpeg(), "image/jpeg"))
    assert caught.value.body["param"] == "mask"  # type: ignore[index]
    assert server.balance(key) == 100


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32)).save(out, format="JPEG")
    return out.getvalue()


# --- streaming ----------------------------------------------------------------------------

def test_streaming_generate(server: Server) -> None:
    key = server.account(100)
    raw = server.client(key).images.with_raw_response.generate(
        model="gpt-image-2", prompt=PROMPT, size="1024x1024", stream=True, partial_images=2)
    generation_id = raw.headers["x-gih-generation-id"]
    events = list(raw.parse())
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event in events[:2]:
        decoded(event.b64_json).verify()  # a picture, if a rough one
    assert decoded(events[-1].b64_json).size == (1024, 1024)
    record = server.api(key, f"/api/v1/generations/{generation_id}")
    assert base64.b64decode(events[-1].b64_json) == fetch(record["images"][0]["url"])
    assert server.balance(key) == 92


async def test_streaming_edit(server: Server) -> None:
    key = server.account(100)
    stream = await server.async_client(key).images.edit(
        model="gpt-image-2", prompt="make it night", image=("a.png", png((64, 64)), "image/png"),
        size="1024x1024", stream=True, partial_images=2)
    kinds = [event.type async for event in stream]
    assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert server.balance(key) == 92


# --- errors -------------------------------------------------------------------------------

def test_client_errors_map_to_the_sdks_exceptions(server: Server) -> None:
    key = server.account(5)
    client = server.client(key, max_retries=2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt=PROMPT, size="1000x1000")
    assert bad.value.body["param"] == "size" and bad.value.code == "invalid_request"  # type: ignore[index]
    assert bad.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.AuthenticationError) as unknown:
        server.client("gih_live_" + "A" * 32).images.generate(prompt=PROMPT)
    assert unknown.value.code == "invalidApiKey"
    with pytest.raises(openai.AuthenticationError) as missing:  # no Authorization at all
        client.images.generate(prompt=PROMPT, extra_headers={"Authorization": openai.Omit()})
    assert missing.value.code == "missingApiKey"
    with pytest.raises(openai.APIStatusError) as short:
        client.images.generate(prompt=PROMPT)
    assert short.value.status_code == 402 and short.value.code == "insufficientCredits"
    assert short.value.body["type"] == "insufficient_credits"  # type: ignore[index]
    assert server.balance(key) == 5


def test_a_provider_failure_is_refunded_and_not_retried(production: Server,
                                                        openai_fake) -> None:
    openai_fake.reset()
    openai_fake.configure(fail_status=400, fail_message="Your request was rejected.")
    key = production.account(8)
    with pytest.raises(openai.InternalServerError) as failed:
        production.client(key, max_retries=2).images.generate(prompt=PROMPT)
    assert failed.value.code == "generationFailed"
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert len(openai_fake.requests()) == 1  # the SDK did not try again
    assert production.balance(key) == 8 and production.audit_is_clean()


def test_the_sdks_retries_never_charge_twice(production: Server,
                                             openai_fake) -> None:
    """Upstream fails twice (our worker's own retry included), so the first generation fails
    (refunded, x-should-retry: true); the SDK's retry is a new generation, charged once."""
    openai_fake.reset()
    openai_fake.configure(fail_first=2, fail_first_status=500)
    key = production.account(16)
    result = production.client(key, max_retries=2).images.generate(prompt=PROMPT, n=1)
    assert len(result.data) == 1
    assert production.balance(key) == 8  # one image delivered, one charge
    generations = production.api(key, "/api/v1/credits")
    assert generations["credits"] == 8 and production.audit_is_clean()


def test_a_retry_of_a_running_generation_joins_it(production: Server,
                                                  openai_fake) -> None:
    """What the SDK sends again after a dropped connection (x-stainless-retry-count: 1) is the
    same generation, not a second charge."""
    openai_fake.reset()
    openai_fake.configure(latency_ms=1500)
    key = production.account(16)
    body = {"model": "gpt-image-2", "prompt": PROMPT}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx2.Client(base_url=production.base, timeout=30) as http:
        with pytest.raises(httpx2.ReadTimeout):  # the first try gives up early
            http.post("/v1/images/generations", json=body, headers=headers, timeout=0.5)
        again = http.post("/v1/images/generations", json=body,
                          headers={**headers, "x-stainless-retry-count": "1"})
    assert again.status_code == 200, again.text
    assert production.balance(key) == 8
    assert len(openai_fake.requests()) == 1


# --- waits and dropped streams --------------------------------------------------------------

@pytest.fixture(scope="module")
def impatient(prod_env: dict[str, str], session_worker: object,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Production, waiting at most 1 s for a result."""
    yield from serve({**prod_env, "GIH_OPENAI_WAIT_S": "1"},
                     tmp_path_factory.mktemp("impatient"))


def test_a_long_generation_answers_504_pending_and_is_billed_once(
        impatient: Server, openai_fake) -> None:
    openai_fake.reset()
    openai_fake.configure(latency_ms=3000)
    key = impatient.account(16)
    client = impatient.client(key, max_retries=2)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as pending:
        client.images.generate(prompt=PROMPT)
    assert time.monotonic() - started < 2.5  # no retry by the SDK
    assert pending.value.status_code == 504 and pending.value.code == "generationPending"
    assert pending.value.response.headers["x-should-retry"] == "false"
    generation_id = pending.value.body["generation_id"]  # type: ignore[index]
    assert pending.value.body["poll_url"].endswith(generation_id)  # type: ignore[index]
    impatient.wait_for(key, generation_id, ("succeeded",), timeout=20)
    assert impatient.balance(key) == 8 and len(openai_fake.requests()) == 1


def test_a_stream_dropped_halfway_still_ends_the_generation(server: Server,
                                                            openai_fake) -> None:
    """The client reads the first partial image and goes away; upstream stalls after it (in
    production), so the job's provider call times out: refunded, and the books balance."""
    openai_fake.configure(stream_stall_after=1)
    key = server.account(16)
    with server.client(key).images.with_streaming_response.generate(
            prompt=PROMPT, stream=True, partial_images=3) as answer:
        generation_id = answer.headers["x-gih-generation-id"]
        first = next(iter(answer.parse()))
        assert first.type == "image_generation.partial_image"
    status = server.wait_for(key, generation_id, ("succeeded", "failed"), timeout=30)
    assert server.balance(key) == (8 if status == "succeeded" else 16)
    assert server.audit_is_clean()


def test_a_failed_stream_ends_with_an_error_event_after_the_refund(production: Server,
                                                                   openai_fake) -> None:
    openai_fake.reset()
    openai_fake.configure(fail_status=400, fail_message="Your request was rejected.")
    key = production.account(8)
    stream = production.client(key).images.generate(prompt=PROMPT, stream=True,
                                                    partial_images=1)
    with pytest.raises(openai.APIError) as failed:
        list(stream)
    assert failed.value.body["code"] == "generationFailed"  # type: ignore[index]
    assert production.balance(key) == 8 and production.audit_is_clean()


def test_killing_the_api_mid_stream_loses_nothing(prod_env: dict[str, str], session_worker,
                                                  openai_fake, tmp_path: Path) -> None:
    """The job runs in the worker: SIGKILL of the API while it streams changes nothing."""
    openai_fake.reset()
    openai_fake.configure(latency_ms=1500)
    for server in serve(prod_env, tmp_path):
        key = server.account(8)
        with server.client(key).images.with_streaming_response.generate(
                prompt=PROMPT, stream=True, partial_images=2) as answer:
            generation_id = answer.headers["x-gih-generation-id"]
            server.process.kill()
            server.process.wait(10)
        with pytest.raises(openai.APIConnectionError):
            server.client(key, max_retries=0).models.list()
    for server in serve(prod_env, tmp_path):  # a new API on the same stack
        server.wait_for(key, generation_id, ("succeeded",), timeout=30)
        assert server.balance(key) == 0 and server.audit_is_clean()


# --- usage --------------------------------------------------------------------------------

def test_usage_reports_tokens_and_credits(production: Server, openai_fake) -> None:
    openai_fake.reset()
    key = production.account(100)
    result = production.client(key).images.generate(prompt=PROMPT, n=2, size="1024x1024",
                                                    quality="low")
    assert result.usage is not None and result.usage.output_tokens == 2 * 272
    report = production.gih("usage")["usage"]
    row = next(r for r in report if (r["model"], r["tier"]) == ("gpt-image-2", "1K"))
    assert row["images_delivered"] >= 2 and row["output_tokens"] >= 2 * 272
    assert row["credits_net"] == row["credits_charged"] - row["credits_refunded"]


# --- the README's examples, as written --------------------------------------------------------

def readme_block(name: str, fence: str) -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split(f"<!-- {name} -->")[1].split(f"<!-- /{name} -->")[0]
    return block.split(f"```{fence}\n", 1)[1].rsplit("```", 1)[0]


def test_readme_sdk_examples_run_as_written(embedded: Server, tmp_path: Path) -> None:
    key = embedded.account(1000)
    env = {**embedded.env, "GIH_KEY": key}
    python = readme_block("openai-python", "python").replace("http://127.0.0.1:8000",
                                                              embedded.base)
    done = subprocess.run([str(Path(GIH).parent / "python"), "-c", python], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    for name in ("bottle.png", "edited.png", "lighthouse.png"):
        assert Image.open(tmp_path / name).size == (1024, 1024)
    curl = readme_block("openai-curl", "sh").replace("http://127.0.0.1:8000", embedded.base)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", curl], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "curl.png").size == (1024, 1024)
    cut = done.stdout.index("event: ")  # our JSON answers end without a newline
    edit_answer, stream = done.stdout[:cut], done.stdout[cut:]
    assert fetch(json.loads(edit_answer)["data"][0]["url"]).startswith(b"\x89PNG")
    kinds = [json.loads(line[len("data: "):])["type"] for line in stream.splitlines()
             if line.startswith("data: ")]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    # Python: 2 images, an edit and a stream; curl: three more; 8 credits an image
    assert embedded.balance(key) == 1000 - 7 * 8


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_b64_answers_are_streamed_not_held(production: Server,
                                           openai_fake) -> None:
    """n=4 at 3840x2160, ~6 MB an image: 32 MB of base64 that the API never holds at once."""
    openai_fake.reset()
    openai_fake.configure(image_kb=6000)
    key = production.account(100)
    Path(f"/proc/{production.process.pid}/clear_refs").write_text("5")  # reset the peak
    before = peak_rss_mb(production.process.pid)
    raw = production.client(key).images.with_raw_response.generate(
        prompt=PROMPT, n=4, size="3840x2160")
    result = raw.parse()
    assert int(raw.headers["content-length"]) > 30_000_000  # about 6 MB an image, in base64
    assert [decoded(d.b64_json).size for d in result.data] == [(3840, 2160)] * 4
    assert peak_rss_mb(production.process.pid) - before < 16
