"""`python -m bench.waiter_memory`: what a waiting sync request holds in the API process
(scenario L's memory per waiter, issue 14 item 6), by the line that allocated it.

Starts the bench stack, then a `gih serve --workers 1` of its own under tracemalloc, on a queue
no worker takes: every sync request it is sent waits. Takes a snapshot after a warm-up and
another with `--waiters` requests waiting, and prints the difference per waiter, grouped by
the allocating line (and by the innermost file), with the process's RSS growth beside it.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from itertools import cycle

import asyncpg

from bench import load, procs
from bench.scenarios import BODY, GEN_PATH, Target, post_json
from bench.stack import Stack, stop_group
from bench.waiters import raise_fd_limit
from tests.fakes.processes import app_env, free_port, wait_until_answering

WARM_UP = 200
WINDOW = 50  # sent, not yet charged (the API's pool times out a flood)
COUNT_SQL = "SELECT count(*) FROM generations WHERE user_id = ANY($1::text[])"

# The API process: tracemalloc from the start, a snapshot to $SNAPSHOT on SIGUSR1.
SERVE = """
import signal, sys, tracemalloc
tracemalloc.start(int(sys.argv[1]))
def dump(*_):
    import gc, os
    gc.collect()
    tracemalloc.take_snapshot().dump(os.environ["SNAPSHOT"] + ".tmp")
    os.replace(os.environ["SNAPSHOT"] + ".tmp", os.environ["SNAPSHOT"])
signal.signal(signal.SIGUSR1, dump)
from app.cli.main import main
sys.argv = ["gih", "serve", "--workers", "1", "--port", sys.argv[2]]
main()
"""


async def snapshot(pid: int, path: str) -> tracemalloc.Snapshot:
    if os.path.exists(path):
        os.unlink(path)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(600):
        if os.path.exists(path):
            return tracemalloc.Snapshot.load(path)
        await asyncio.sleep(0.1)
    raise TimeoutError("no snapshot from the API process")


async def hold(target: Target, request: load.Request, stop: asyncio.Event,
               early: list[str]) -> None:
    """Send `request` and hold the connection until `stop` (an answer before is noted)."""
    conn = load.Connection(target.host, target.port)
    try:
        sending = asyncio.create_task(conn.send(request))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([sending, stopping], return_when=asyncio.FIRST_COMPLETED)
        if sending.done():
            status, body = sending.result()
            early.append(f"{status}: {body[:200]!r}")
        sending.cancel()
        stopping.cancel()
    finally:
        conn.close()


async def measure(stack: Stack, waiters: int, frames: int, top: int) -> None:
    accounts = await stack.accounts(50, prefix="memory")
    port = free_port()
    path = str(stack.dir / "waiters.snapshot")
    env = app_env({**stack.env, "GIH_QUEUE_NAME": "gih-bench-nobody-takes-this",
                   "GIH_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "SNAPSHOT": path,
                   "GIH_SYNC_TIMEOUT_S": "600"})
    log = stack.dir / "traced-serve.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-c", SERVE, str(frames), str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        await asyncio.to_thread(wait_until_answering, process,
                                f"http://127.0.0.1:{port}/healthz", log, 60)
        target = Target.of(f"http://127.0.0.1:{port}")
        requests = cycle([post_json(target, GEN_PATH, a.key, BODY) for a in accounts])
        stop = asyncio.Event()
        db = await asyncpg.connect(stack.db_url, timeout=10)
        tasks: list[asyncio.Task[None]] = []
        early: list[str] = []  # answered before the end: not waiting

        async def waiting(count: int) -> tuple[tracemalloc.Snapshot, dict[str, int]]:
            """`count` more requests sent and charged (so waiting), then a snapshot."""
            users = [a.user_id for a in accounts]
            charged = await db.fetchval(COUNT_SQL, users)
            for _ in range(count):  # paced: at most WINDOW sent and not yet charged
                while len(tasks) - charged >= WINDOW:
                    await asyncio.sleep(0.05)
                    charged = await db.fetchval(COUNT_SQL, users)
                tasks.append(asyncio.create_task(hold(target, next(requests), stop, early)))
            began = time.monotonic()
            while len(tasks) > (charged := await db.fetchval(
                    COUNT_SQL, users)):
                if time.monotonic() - began > 120:
                    raise TimeoutError(f"{charged} of {len(tasks)} requests charged in 120 s;"
                                       f" {len(early)} answered, e.g. {early[:3]}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)
            return await snapshot(process.pid, path), procs.memory_kb(process.pid)

        # the first ones warm up what every request uses once (imports, caches, pools)
        before, rss_before = await waiting(WARM_UP)
        after, rss_after = await waiting(waiters)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
    finally:
        await asyncio.to_thread(stop_group, process)
    report(before, after, waiters, rss_before, rss_after, top)


def report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, waiting: int,
           rss_before: dict[str, int], rss_after: dict[str, int], top: int) -> None:
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"waiting: {waiting}; Python objects {total / waiting / 1024:.1f} KB per waiter; "
          f"RSS {(rss_after['rss'] - rss_before['rss']) / waiting:.1f} KB, "
          f"PSS {(rss_after['pss'] - rss_before['pss']) / waiting:.1f} KB per waiter")
    print("\nby file (bytes per waiter):")
    for stat in after.compare_to(before, "filename")[:top]:
        print(f"  {stat.size_diff / waiting:8.0f}  {stat.count_diff / waiting:6.1f} objects  "
              f"{stat.traceback[0].filename}")
    print("\nby line (bytes per waiter):")
    for stat in after.compare_to(before, "lineno")[:top * 2]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / waiting:8.0f}  {stat.count_diff / waiting:6.1f} objects  "
              f"{frame.filename}:{frame.lineno}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    raise_fd_limit(2 * args.waiters + 1000)
    stack = Stack().start()
    try:
        asyncio.run(measure(stack, args.waiters, args.frames, args.top))
    finally:
        stack.close()


if __name__ == "__main__":
    main()
