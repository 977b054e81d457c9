"""The OpenAI-compatible API's figures, on the production stack (bench/stack.py) with the fake
upstream answering at once:

- the added latency of a /v1 request over the same /api/v1 request (sync, one at a time,
  20 of each, interleaved: p50 and p90);
- the API processes' peak RSS while answering `n=4` at `3840x2160` as `b64_json` (images of
  about 10 MB each: 53 MB of base64 if it were held at once).

    .venv/bin/python -m bench.openai_compat [--requests 20] [--image-kb 10000]
"""

import argparse
import asyncio
import re
import statistics
import time
from pathlib import Path

import httpx2

from bench.procs import descendants
from bench.stack import Stack

PROMPT = "A cinematic product photo of a transparent perfume bottle on black marble"


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def latency(stack: Stack, key: str, requests: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-image-2", "prompt": PROMPT, "size": "1024x1024"}
    times: dict[str, list[float]] = {"/api/v1": [], "/v1": []}
    async with httpx2.AsyncClient(base_url=stack.base, timeout=60) as http:
        for _ in range(3):  # connections, caches, the first job of each worker process
            await http.post("/api/v1/images/generations", json=body, headers=headers)
            await http.post("/v1/images/generations", json=body, headers=headers)
        for _ in range(requests):
            for prefix in times:
                began = time.perf_counter()
                answer = await http.post(f"{prefix}/images/generations", json=body,
                                         headers=headers)
                times[prefix].append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200, answer.text[:300]
    return times


async def b64_memory(stack: Stack, key: str) -> tuple[float, int]:
    assert stack.serve is not None
    api = descendants(stack.serve.pid)
    for pid in api:
        reset_peak(pid)
    before = {pid: peak_rss_mb(pid) for pid in api}
    async with httpx2.AsyncClient(base_url=stack.base, timeout=300) as http:
        answer = await http.post("/v1/images/generations", headers={
            "Authorization": f"Bearer {key}"}, json={
            "model": "gpt-image-2", "prompt": PROMPT, "size": "3840x2160", "n": 4})
    assert answer.status_code == 200, answer.text[:300]
    growth = max(peak_rss_mb(pid) - before[pid] for pid in api)
    return growth, len(answer.content)


def main(requests: int, image_kb: int) -> None:
    with Stack() as stack:  # (it runs event loops of its own: start it outside one)
        (account,) = asyncio.run(stack.accounts(1))
        times = asyncio.run(latency(stack, account.key, requests))
        for prefix, values in times.items():
            values.sort()
            print(f"{prefix:8} sync, 0 ms upstream, c=1: p50 {statistics.median(values):6.1f} ms"
                  f"  p90 {values[int(len(values) * 0.9) - 1]:6.1f} ms  ({len(values)} requests)")
        added = statistics.median(times["/v1"]) - statistics.median(times["/api/v1"])
        print(f"/v1 adds {added:+.1f} ms at p50 over /api/v1")
        assert stack.fake is not None
        stack.fake.configure(image_kb=image_kb)
        growth, size = asyncio.run(b64_memory(stack, account.key))
        print(f"n=4 3840x2160 b64_json: answer {size / 1e6:.1f} MB; the API process's peak RSS "
              f"rose by {growth:.1f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--image-kb", type=int, default=10_000)
    args = parser.parse_args()
    main(args.requests, args.image_kb)
