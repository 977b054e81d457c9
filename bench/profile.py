"""`python -m bench.profile`: where the CPU of a generation goes (issue 14, part 1).

Starts the same production stack as `python -m bench` (bench.stack), runs scenario A (async
submits) and B (sync generations, 200 KB images, 0 ms upstream) at concurrency 50, and records
every process of ours with py-spy (100 Hz, busy samples only) while the load runs. It prints,
per process, the share of samples by the innermost library a sample is in (the profile's
"where does the millisecond go"), our own functions with the most samples below them, and the
CPU milliseconds per request of each process (from /proc). Raw stacks (py-spy's folded format)
go to bench/results/profiles/, for a flame graph (`flamegraph.pl`, speedscope).
"""

import argparse
import asyncio
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
LIBRARIES = {  # a file's folder (under site-packages or the stdlib) -> its bucket
    "sqlalchemy": "SQLAlchemy", "asyncpg": "asyncpg", "starlette": "Starlette/FastAPI",
    "fastapi": "Starlette/FastAPI", "uvicorn": "uvicorn", "httptools": "uvicorn",
    "pydantic": "pydantic", "pydantic_core": "pydantic", "boto3": "boto3/botocore",
    "botocore": "boto3/botocore", "s3transfer": "boto3/botocore", "urllib3": "boto3/botocore",
    "openai": "openai SDK", "httpx2": "httpx2", "httpcore2": "httpx2", "h11": "httpx2",
    "anyio": "anyio", "arq": "arq/redis", "redis": "arq/redis", "prometheus_client":
    "prometheus", "greenlet": "SQLAlchemy", "asyncio": "event loop", "selectors": "event loop",
    "uvloop": "event loop", "logging": "logging", "json": "json", "PIL": "Pillow",
    "base64": "base64", "ssl": "ssl", "multipart": "python-multipart",
    "python_multipart": "python-multipart",
}


def bucket_of(file: str) -> str:
    """py-spy names files relative to their sys.path entry: `sqlalchemy/orm/session.py`,
    `asyncio/base_events.py`, `app/keys/service.py`."""
    parts = file.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    if parts[0] == "app":
        return "app (ours)"
    head = parts[0].removesuffix(".py")
    return LIBRARIES.get(head, head if len(parts) > 1 else "stdlib/other")


def parse_folded(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's raw output: `frame;frame;... count` (root first), frames `func (file:line)`."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = FRAME.match(frame.strip())
            if match:
                frames.append((match["func"], match["file"]))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def summarize(text: str, top: int = 12) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, samples by innermost library, samples under each of our functions)."""
    stacks = parse_folded(text)
    by_bucket: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for frames, count in stacks:
        by_bucket[bucket_of(frames[-1][1])] += count
        seen = set()
        for func, file in frames:
            # app/cli/ only wraps the process (`gih worker`): every sample is below it
            if file.startswith("app/") and not file.startswith("app/cli/") \
                    and (file, func) not in seen:
                seen.add((file, func))
                ours[f"{file.removeprefix('app/')}:{func}"] += count
    return sum(c for _, c in stacks), by_bucket, Counter(dict(ours.most_common(top)))


async def record(pids: dict[str, int], seconds: float, out: Path) -> dict[str, str]:
    """py-spy on each process at once for `seconds`; their folded stacks by name."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy; it is in .[dev])")
    runs = {}
    for name, pid in pids.items():
        runs[name] = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(pid), "--rate", "100", "--duration", str(int(seconds)),
            "--format", "raw", "--output", str(out / f"{name}.folded"), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    texts = {}
    for name, run in runs.items():
        _, err = await run.communicate()
        path = out / f"{name}.folded"
        if not path.exists():
            raise RuntimeError(f"py-spy on {name}: {err.decode(errors='replace')[-500:]}")
        texts[name] = path.read_text()
    return texts


def report(title: str, texts: dict[str, str], cpu_ms: dict[str, float]) -> list[str]:
    lines = [f"## {title}", ""]
    for name, text in texts.items():
        samples, by_bucket, ours = summarize(text)
        lines.append(f"{name}: {samples} busy samples, {cpu_ms.get(name, 0):.1f} ms CPU "
                     "per request")
        for bucket, count in by_bucket.most_common(14):
            lines.append(f"  {100 * count / max(1, samples):5.1f} %  {bucket}")
        lines.append("  our functions, share of samples below them:")
        for func, count in ours.items():
            lines.append(f"  {100 * count / max(1, samples):5.1f} %  {func}")
        lines.append("")
    return lines


async def scenario(b, name: str, seconds: float, out: Path) -> list[str]:
    from bench import load
    from bench.scenarios import cycle, get

    sync = name == "B"
    b.upstream_switches(**({"image_kb": 200} if sync else {}))
    pids = {"worker": b.stack.worker.pid}
    children = [p for p in b.stack.trees[0].pids() if p != b.stack.serve.pid]
    for i, pid in enumerate(children):
        if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            pids[f"api{i + 1}"] = pid
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    from bench.procs import cpu_seconds

    make = cycle(b.posts(is_async=not sync))
    expected = {200} if sync else {202}
    if name == "D":  # GET /api/v1/generations/{id}, one of each user's (made by `prepare`)
        make = cycle([get(b.ours, f"/api/v1/generations/{b.generation_ids[a.key]}", a.key)
                      for a in b.accounts])
        expected = {200}
    await load.run(f"{name} warm-up", b.ours.host, b.ours.port, make, expected=expected,
                   concurrency=50, duration_s=2, quiet=True)
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    loading = asyncio.create_task(load.run(name, b.ours.host, b.ours.port, make,
                                           expected=expected, concurrency=50,
                                           duration_s=seconds + 1))
    texts = await record(pids, seconds, folder)
    result = await loading
    cpu_ms = {n: 1000 * (cpu_seconds(p) - cpu0[n]) / max(1, result.ok) for n, p in pids.items()}
    if name == "A":
        await b.drain(name)
    what = {"A": "A: async submits, c=50",
            "B": "B: sync generations, 200 KB images, 0 ms upstream, c=50",
            "D": "D: GET /api/v1/generations/{id}, c=50"}[name]
    return report(f"{what}; {result.ok} answered, {result.ok / result.elapsed_s:.1f}/s", texts,
                  cpu_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="recording per scenario")
    parser.add_argument("--scenarios", default="A,B",
                        help="A, B, D (GET a generation), comma-separated (default A,B)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profiles")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench import scenarios
    from bench.__main__ import loop_factory
    from bench.stack import Stack

    lines: list[str] = []
    with Stack() as stack, asyncio.Runner(loop_factory=loop_factory) as runner:
        b = scenarios.Bench(stack, scenarios.Plan())
        runner.run(scenarios.prepare(b))
        for name in [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]:
            lines += runner.run(scenario(b, name, args.seconds, args.out))
        print("  tearing down ...")
    text = "\n".join(lines)
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"raw stacks and summary.txt in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
