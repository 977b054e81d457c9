"""The embedded default as a user meets it: `gih serve` in an empty folder, no configuration,
the README's curl examples, and the memory of the API process during a 50 MB upload."""

import io
import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.fakes.processes import wait_until_answering
from tests.test_cli import GIH, clean_env, free_port, get, run_json


@dataclass
class Server:
    base: str
    key: str
    pid: int
    cwd: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("embedded")
    env = clean_env()
    port = free_port()
    process = subprocess.Popen([GIH, "serve", "--port", str(port)], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(process, f"{base}/api/v1/models")
    run_json("users", "create", "you@example.com", "--credits", "1000", env=env, cwd=cwd)
    key = run_json("keys", "create", "you@example.com", env=env, cwd=cwd)["key"]
    yield Server(base=base, key=key, pid=process.pid, cwd=cwd, env=env)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(20)


def readme_curl_examples() -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- curl-examples -->")[1].split("<!-- /curl-examples -->")[0]
    return block.split("```sh\n", 1)[1].rsplit("```", 1)[0]


def test_readme_curl_examples_work_as_written(server: Server, tmp_path: Path) -> None:
    script = readme_curl_examples().replace("http://127.0.0.1:8000", server.base)
    # Mark each command's output so the answers can be told apart.
    marked = re.sub(r"^(curl |GEN=|sleep )", r"echo '@@@'; \1", script, flags=re.M)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", marked], cwd=tmp_path,
                            env={**server.env, "GIH_KEY": server.key}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = [o.strip() for o in result.stdout.split("@@@") if o.strip()]
    models, balance, sync, polled, multipart = (json.loads(o) for o in outputs)
    assert models["data"][0]["id"] == "gpt-image-2"
    assert balance["object"] == "credit_balance"
    assert sync["status"] == "succeeded" and sync["images"][0]["width"] == 1024
    assert polled["status"] == "succeeded" and polled["images"][0]["width"] == 2560
    assert multipart["status"] == "succeeded"
    assert Image.open(tmp_path / "reference.png").size == (2560, 1440)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest resident memory the process has had."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def upload(server: Server, path: Path) -> tuple[int, dict]:
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"{server.base}/api/v1/images/generations",
         "-H", f"Authorization: Bearer {server.key}", "-F", "model=gpt-image-2",
         "-F", "prompt=use the reference", "-F", "async=true",
         "-F", f"reference_image=@{path}"], capture_output=True, text=True, timeout=120)
    body, status = result.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def test_50_mb_reference_does_not_enter_api_memory(server: Server, tmp_path: Path) -> None:
    # A real, decodable PNG of about 49.5 MB (noise does not compress).
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (4180, 4140), os.urandom(4180 * 4140 * 3)).save(
        big, "PNG", compress_level=0)
    assert 48 * 1024 * 1024 < big.stat().st_size < 50 * 1024 * 1024
    too_big = tmp_path / "too-big.png"
    with open(too_big, "wb") as out:
        out.write(big.read_bytes())
        out.write(b"\0" * (4 * 1024 * 1024))  # 53.5 MB: over the 50 MB limit

    reset_peak(server.pid)
    before = peak_rss_mb(server.pid)
    status, body = upload(server, big)
    assert status == 202, body
    accepted = peak_rss_mb(server.pid) - before
    status, error = upload(server, too_big)
    assert status == 400 and "50 MB" in error["error"]["message"]
    refused = peak_rss_mb(server.pid) - before
    print(f"\nAPI process peak RSS: {before:.0f} MB before; +{accepted:.1f} MB during a 49.5 MB "
          f"upload, +{refused:.1f} MB after a refused 53.5 MB upload")
    assert accepted < 20 and refused < 20


def test_local_image_urls_are_unguessable_and_served_without_a_key(server: Server) -> None:
    status, body = get(f"{server.base}/api/v1/models")
    assert status == 200
    result = subprocess.run(
        ["curl", "-s", f"{server.base}/api/v1/images/generations", "-H",
         f"Authorization: Bearer {server.key}", "-H", "Content-Type: application/json", "-d",
         json.dumps({"model": "gpt-image-2", "prompt": "x", "output_format": "jpeg"})],
        capture_output=True, text=True, timeout=60)
    generation = json.loads(result.stdout)
    url = generation["images"][0]["url"]
    token = url.split("/")[-2]
    assert len(token) >= 24 and generation["id"] in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.read())).format == "JPEG"
    guessed = url.replace(token, "0" * len(token))
    status, error = get(guessed)
    assert status == 404 and error["error"]["code"] == "notFound"
