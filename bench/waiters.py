"""Scenario L: thousands of sync requests waiting at once in one API process (issue 14, item 6).

One `gih serve --workers 1` of its own (the stack's settings, a queue of its own) and as many
`gih worker` processes as it takes to run every generation at once (`GIH_JOB_CONCURRENCY` is at
most 1000 per worker). The fake upstream answers after `upstream_s`. The client opens one raw
HTTP/1.1 connection per request (asyncio streams, bench.load.Connection), at a paced rate, held
back while more requests are sent but not yet charged than the API charges in WINDOW_S (at
least WINDOW_MIN; so no request waits for the API's database pool anywhere near its 10 s
timeout), and reads each answer.

The API process talks to PostgreSQL through PgRelay (a process of its own), which counts the
statements it sends and names its connections in pg_stat_activity; the database-wide
transaction counter (pg_stat_database, which also counts the workers' heartbeats) is sampled as
well, and a probe times `GET /api/v1/models` (no database) to tell a busy event loop from a
busy pool. A quiet window is the longest stretch in which nothing was sent, charged, finished
or answered: every request is then only waiting.
"""

import asyncio
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis import asyncio as redis

from app.queue import DONE_CHANNEL
from bench import load, procs
from bench.stack import ADMIN_URL, Account, Stack, stop_group, wait_for_log
from tests.fakes.processes import GIH, app_env, free_port, start_serve

WINDOW_MIN, WINDOW_S = 50, 3.0  # sent, not yet charged: at most 3 s of charging, or 50
LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 20)
MAX_JOBS_PER_WORKER = 1000  # app/config.py: job_concurrency le=1000
# Per waiter worker (+ 1 overflow, + the direct pool's): PostgreSQL allows 100 connections in
# all, and the stack's own API processes and worker keep theirs open (up to ~15 each).
WORKER_DB_POOL = 4
SSL_REQUEST, GSS_REQUEST = (80877103).to_bytes(4, "big"), (80877104).to_bytes(4, "big")
APPLICATION_NAME = b"bench-waiters-api"
CONTROL = (b"BEGIN", b"COMMIT", b"ROLLBACK", b"START", b"END", b"SAVEPOINT", b"RELEASE")


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (the servers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        print(f"    ! open files limited to {soft}, {needed} wanted: expect errors")
    return soft, hard


class PgRelay:
    """A TCP relay to PostgreSQL that counts the statements its clients send: extended-protocol
    Executes and simple Queries, transaction control (BEGIN, COMMIT, ROLLBACK...) apart. An
    SSLRequest is answered 'N' here, so the stream stays plain and readable. Runs in a process
    of its own (`python -m bench.waiters relay HOST PORT`, see RelayProcess), so that relaying
    shares no event loop with the client; a connection to its stats port reads the counts."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.statements = self.control = self.connections = 0

    async def serve(self) -> None:
        relay = await asyncio.start_server(self._client, "127.0.0.1", 0)
        stats = await asyncio.start_server(self._stats, "127.0.0.1", 0)
        print(relay.sockets[0].getsockname()[1], stats.sockets[0].getsockname()[1], flush=True)
        await relay.serve_forever()

    async def _stats(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{self.statements} {self.control} {self.connections}\n".encode())
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        back = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            await self._frontend(reader, writer, up_writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _frontend(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                        upstream: asyncio.StreamWriter) -> None:
        while True:  # the start-up packets have no type byte
            size = int.from_bytes(await reader.readexactly(4), "big")
            rest = await reader.readexactly(size - 4)
            if size == 8 and rest[:4] in (SSL_REQUEST, GSS_REQUEST):
                client.write(b"N")
                continue
            upstream.write(named(rest))
            break
        buf = bytearray()
        while data := await reader.read(1 << 16):
            upstream.write(data)  # forwarded at once; counted as whole messages arrive
            buf += data
            pos = 0
            while len(buf) - pos >= 5:
                end = pos + 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")
                if end > len(buf):
                    break
                kind = buf[pos]
                if kind == 0x45:  # E: Execute
                    self.statements += 1
                elif kind == 0x51:  # Q: a simple query
                    if bytes(buf[pos + 5:pos + 14]).lstrip().upper().startswith(CONTROL):
                        self.control += 1
                    else:
                        self.statements += 1
                pos = end
            del buf[:pos]
            await upstream.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()


def named(startup: bytes, name: bytes = APPLICATION_NAME) -> bytes:
    """The start-up packet (after its length) with application_name set, framed again, so that
    pg_stat_activity tells the API's connections apart."""
    version, fields = startup[:4], startup[4:].rstrip(b"\0").split(b"\0")
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    pairs[b"application_name"] = name
    body = version + b"".join(k + b"\0" + v + b"\0" for k, v in pairs.items()) + b"\0"
    return (len(body) + 4).to_bytes(4, "big") + body


@dataclass
class RelayProcess:
    """PgRelay in a subprocess: `port` for the API's database URL, `counts()` to read it."""

    host: str
    port_to: int
    process: subprocess.Popen | None = None
    port: int = 0
    stats_port: int = 0

    def start(self) -> "RelayProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.waiters", "relay", self.host, str(self.port_to)],
            stdout=subprocess.PIPE, start_new_session=True)
        assert self.process.stdout is not None
        self.port, self.stats_port = map(int, self.process.stdout.readline().split())
        return self

    async def counts(self) -> tuple[int, int]:
        """(statements, transaction control) so far."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.stats_port)
        line = await reader.readline()
        writer.close()
        statements, control, _connections = map(int, line.split())
        return statements, control

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


def through(url: str, port: int) -> str:
    """`url` with its host:port replaced by 127.0.0.1:`port`."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@dataclass
class Answer:
    sent: float  # wall clock (time.time())
    got: float = 0.0
    status: int = 0
    completed_at: float | None = None
    announced: float | None = None  # when the worker's announcement reached a listener here
    error: str = ""


@dataclass
class Waiters:
    stack: Stack
    accounts: list[Account]
    n: int
    upstream_s: float
    ramp_s: float
    ramp_max_s: float
    body: dict[str, Any]
    path: str
    count_statements: bool = True  # False: the API talks to PostgreSQL directly
    dir: Path = field(init=False)
    serve: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    relay: RelayProcess | None = None
    answers: list[Answer] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    charged: int = 0
    window: int = WINDOW_MIN
    failed: int = 0  # answered with an error: no longer waiting to be charged
    target: tuple[str, int] = ("127.0.0.1", 0)
    started_at: str = ""
    probes: list[tuple[float, float | None]] = field(default_factory=list)
    announced: dict[str, float] = field(default_factory=dict)  # generation id -> wall clock
    queue: str = ""
    queued: int = 0  # jobs in the queue's sorted set, due and not yet taken by a worker
    taken: int = 0  # jobs a worker took (arq's in-progress keys), running or about to

    def __post_init__(self) -> None:
        self.dir = self.stack.dir / "waiters"
        self.dir.mkdir(exist_ok=True)

    # --- processes ---------------------------------------------------------------------------

    async def start(self) -> str:
        host, port = urlsplit(self.stack.db_url).hostname, urlsplit(self.stack.db_url).port
        db_url = self.stack.db_url
        if self.count_statements:
            self.relay = RelayProcess(host or "127.0.0.1", port or 5432).start()
            self.stack.on_close(self.relay.stop)
            db_url = through(db_url, self.relay.port)
        queue = self.queue = f"{self.stack.env['GIH_QUEUE_NAME']}-waiters"
        env = {**self.stack.env, "GIH_QUEUE_NAME": queue,
               "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics-api")}
        os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        count = math.ceil(self.n / MAX_JOBS_PER_WORKER)
        per = math.ceil(self.n / count)
        for i in range(count):
            self.workers.append(await asyncio.to_thread(self._start_worker, env, i, per))
        self.serve, base = await asyncio.to_thread(
            start_serve, {**env, "GIH_DATABASE_URL": db_url}, self.dir / "serve.log", 1)
        print(f"    waiters: gih serve --workers 1 (pid {self.serve.pid}) at {base}, {count} "
              f"gih worker with GIH_JOB_CONCURRENCY={per} and GIH_DB_POOL_SIZE={WORKER_DB_POOL}"
              f", queue {queue}; " + ("the API's PostgreSQL traffic through a counting relay"
                                      if self.relay else "the API talks to PostgreSQL directly"))
        return base

    def _start_worker(self, env: dict[str, str], i: int, jobs: int) -> subprocess.Popen:
        metrics = self.dir / f"metrics-worker-{i}"
        metrics.mkdir(exist_ok=True)
        log = self.dir / f"worker-{i}.log"
        log.touch()
        worker_env = {**env, "GIH_JOB_CONCURRENCY": str(jobs),
                      "GIH_DB_POOL_SIZE": str(WORKER_DB_POOL),
                      "GIH_WORKER_METRICS_PORT": str(free_port()),
                      "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        with open(log, "ab") as out:
            process = subprocess.Popen([GIH, "worker"], env=app_env(worker_env), stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.stack.on_close(lambda: stop_group(process))
        wait_for_log(process, log, b"gih worker ready", f"waiter worker {i}")
        return process

    async def stop(self) -> None:
        for process in [self.serve, *self.workers]:
            if process is not None:
                await asyncio.to_thread(stop_group, process)
        if self.relay is not None:
            await asyncio.to_thread(self.relay.stop)

    # --- the load ----------------------------------------------------------------------------

    async def one(self, i: int, request: load.Request, timeout: float) -> None:
        answer = self.answers[i]
        conn = load.Connection(*self.target)
        try:
            async with asyncio.timeout(timeout):
                status, body = await conn.send(request)
            answer.got, answer.status = time.time(), status
            if status == 200:
                answered = json.loads(body)
                done = answered.get("completed_at")
                if done:
                    answer.completed_at = datetime.fromisoformat(done).timestamp()
                answer.announced = self.announced.get(answered.get("id", ""))
            else:
                answer.error = f"{status}: {body[:200].decode(errors='replace')}"
                self.failed += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            answer.got, answer.error = time.time(), repr(exc)[:200]
            self.failed += 1
        finally:
            conn.close()

    async def monitor(self, db: asyncpg.Connection, admin: asyncpg.Connection,
                      user_ids: list[str], began: float, stop: asyncio.Event) -> None:
        assert self.serve is not None
        counts_sql = ("SELECT status, count(*) FROM generations WHERE user_id = ANY($1::text[]) "
                      "GROUP BY status")
        stats_sql = ("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                     "WHERE datname = $1")
        # The API's backends (named by the relay) and the others': how many are running a
        # statement, waiting for a lock, or idle inside a transaction (waiting for their client).
        activity_sql = ("SELECT CASE WHEN application_name = $2 THEN 'api' ELSE 'other' END || "
                        "' ' || CASE WHEN wait_event_type = 'Lock' THEN 'lock' "
                        "WHEN state = 'active' THEN 'active' "
                        "ELSE coalesce(state, 'unknown') END, count(*) "
                        "FROM pg_stat_activity WHERE datname = $1 GROUP BY 1")
        trees = [procs.Tree("api", self.serve.pid), *(procs.Tree(f"worker {i}", w.pid)
                                                     for i, w in enumerate(self.workers))]
        if self.relay is not None and self.relay.process is not None:
            trees.append(procs.Tree("relay", self.relay.process.pid))
        trees += self.stack.infra()
        n = 0
        while not stop.is_set():
            if n % 4 == 0:  # CPU seconds so far, by process (tree); every 2 s: /proc walks
                cpu = {t.name: round(t.cpu(), 2) for t in trees}
                usage = resource.getrusage(resource.RUSAGE_SELF)
                cpu["client"] = round(usage.ru_utime + usage.ru_stime, 2)
            n += 1
            counts = dict(await db.fetch(counts_sql, user_ids))
            now = round(time.monotonic() - began, 2)
            xacts = await admin.fetchval(stats_sql, self.stack.db_name)
            activity = {str(k): v for k, v in await admin.fetch(
                activity_sql, self.stack.db_name, APPLICATION_NAME.decode())}
            mem = procs.memory_kb(self.serve.pid)
            statements, control = await self.relay.counts() if self.relay else (None, None)
            self.charged = sum(counts.values())
            earlier = next((p for p in reversed(self.samples) if p["t"] <= now - 2), None)
            if earlier is not None:  # the charge rate over the last 2 s or so
                rate = (self.charged - earlier["charged"]) / (now - earlier["t"])
                self.window = max(WINDOW_MIN, int(WINDOW_S * rate))
            sent = sum(1 for a in self.answers if a.sent)
            answered = sum(1 for a in self.answers if a.got)
            self.samples.append({
                "t": now, "sent": sent, "answered": answered,
                "waiting": sent - answered,
                "charged": self.charged, "running": counts.get("running", 0),
                "queued_in_redis": self.queued, "taken_by_workers": self.taken,
                "finished": sum(v for k, v in counts.items() if k not in ("queued", "running")),
                "xacts": xacts, "api_statements": statements, "api_control": control,
                "api_rss_kb": mem.get("rss", 0), "api_pss_kb": mem.get("pss", 0),
                "backends": activity,
                **({"cpu": cpu} if n % 4 == 1 else {})})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def listen(self, stop: asyncio.Event) -> None:
        """The workers' announcements, as the API's listener gets them (one pattern
        subscription): when each generation was announced, to split an answer's lag into the
        worker's part (finished -> announced) and the API's (announced -> answered)."""
        client = redis.from_url(self.stack.env["GIH_REDIS_URL"])
        pubsub = client.pubsub()
        await pubsub.psubscribe(DONE_CHANNEL + "*")
        counted = 0.0
        try:
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message and message.get("type") == "pmessage":
                    channel = message["channel"].decode()
                    self.announced.setdefault(channel.removeprefix(DONE_CHANNEL), time.time())
                if time.monotonic() - counted >= 0.5:  # for the samples
                    counted = time.monotonic()
                    self.queued = await client.zcard(self.queue)
                    self.taken = len(await client.keys("arq:in-progress:*"))
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def probe(self, began: float, stop: asyncio.Event) -> None:
        """GET /api/v1/models (static, no database) every 0.5 s: how long the API process
        takes to answer anything, i.e. how busy its event loop is."""
        conn = load.Connection(*self.target)
        models = load.build("GET", f"{self.target[0]}:{self.target[1]}", "/api/v1/models")
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                await asyncio.wait_for(conn.send(models), 30)
                self.probes.append((sent - began, 1000 * (time.perf_counter() - sent)))
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
                conn.close()
                self.probes.append((sent - began, None))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        conn.close()

    async def run(self, target: tuple[str, int], requests: list[load.Request]) -> dict[str, Any]:
        assert self.serve is not None
        self.target = target
        rate = self.n / self.ramp_s
        db = await asyncpg.connect(self.stack.db_url, timeout=10)
        admin = await asyncpg.connect(ADMIN_URL, timeout=10)
        user_ids = [a.user_id for a in self.accounts]
        before = (await db.fetchval("SELECT count(*) FROM generations "
                                    "WHERE user_id = ANY($1::text[])", user_ids))
        mem_before = procs.memory_kb(self.serve.pid)
        procs.reset_peak(self.serve.pid)
        self.answers = [Answer(0.0) for _ in range(self.n)]
        stop = asyncio.Event()
        self.started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        began = time.monotonic()
        watcher = asyncio.create_task(self.monitor(db, admin, user_ids, began, stop))
        prober = asyncio.create_task(self.probe(began, stop))
        listener = asyncio.create_task(self.listen(stop))
        tasks = []
        timeout = self.upstream_s + 120
        try:
            for i in range(self.n):
                due = began + i / rate
                while True:
                    now = time.monotonic()
                    if now - began > self.ramp_max_s:
                        break
                    pending = i - (self.charged - before) - self.failed
                    if now >= due and pending < self.window:
                        break
                    await asyncio.sleep(min(0.05, max(0.001, due - now)))
                if time.monotonic() - began > self.ramp_max_s:
                    print(f"    ! waiters: only {i} of {self.n} sent within {self.ramp_max_s} s")
                    break
                self.answers[i].sent = time.time()
                tasks.append(asyncio.create_task(self.one(i, requests[i % len(requests)],
                                                          timeout)))
            ramp = time.monotonic() - began
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            await watcher
            await prober
            await listener
            for t in tasks:
                t.cancel()
            await db.close()
            await admin.close()
        peak_rss = procs.peak_rss_kb(self.serve.pid)
        return self.figures(ramp, rate, before, mem_before, peak_rss)

    # --- the figures -------------------------------------------------------------------------

    def figures(self, ramp_s: float, rate: float, before: int, mem_before: dict[str, int],
                peak_rss_kb: int) -> dict[str, Any]:
        sent = [a for a in self.answers if a.sent]
        ok = [a for a in sent if a.status == 200 and not a.error]
        errors = [a for a in sent if a.status != 200 or a.error]
        lags = sorted(a.got - a.completed_at for a in ok if a.completed_at is not None)
        split = [a for a in ok if a.completed_at is not None and a.announced is not None]
        worker_lags = sorted(a.announced - a.completed_at for a in split)  # type: ignore
        api_lags = sorted(a.got - a.announced for a in split)  # type: ignore
        samples = self.samples
        for s in samples:
            s["charged"] -= before
            s["finished"] -= before  # the warm-up's, all final
        peak = max(samples, key=lambda s: (s["waiting"], -s["t"])) if samples else {}
        quiet = quiet_window(samples)
        out: dict[str, Any] = {
            "waiters": self.n, "started_at": self.started_at, "sent": len(sent),
            "answered_200": len(ok), "errors": len(errors),
            "error_samples": [a.error for a in errors[:5]],
            "upstream_s": self.upstream_s, "ramp_s": round(ramp_s, 1),
            "ramp_rate_target_per_s": round(rate, 1),
            "workers": len(self.workers),
            "peak_waiting": peak.get("waiting", 0), "peak_running": max(
                (s["running"] for s in samples), default=0),
            "lag_s_max": round(lags[-1], 3) if lags else None,
            "lag_s_p50": round(load.percentile(lags, 50) or 0, 3) if lags else None,
            "lag_s_p99": round(load.percentile(lags, 99) or 0, 3) if lags else None,
            "lag_s_min": round(lags[0], 3) if lags else None,
            "lags_over_1s": sum(1 for x in lags if x > 1.0), "lags_measured": len(lags),
            "lag_histogram_s": lag_histogram(lags),
            "lag_split_measured": len(split),
            "lag_worker_s": spread(worker_lags), "lag_api_s": spread(api_lags),
            "api_rss_kb_before": mem_before.get("rss"), "api_pss_kb_before": mem_before.get("pss"),
            "api_peak_rss_kb_vmhwm": peak_rss_kb}
        # Memory with everyone waiting: the largest sample of the quiet window, else at the
        # peak of waiting requests.
        at = quiet["samples"] if quiet else [peak] if peak else []
        if at and mem_before:
            waiting = max(1, max(s["waiting"] for s in at))
            rss = max(s["api_rss_kb"] for s in at)
            pss = max(s["api_pss_kb"] for s in at)
            out.update({"api_rss_kb_all_waiting": rss, "api_pss_kb_all_waiting": pss,
                        "waiting_at_memory_sample": waiting,
                        "rss_kb_per_waiter": round((rss - mem_before["rss"]) / waiting, 2),
                        "pss_kb_per_waiter": round((pss - mem_before["pss"]) / waiting, 2)})
        ramp_samples = [s for s in samples if s["t"] <= ramp_s] or samples
        answering = next((s["t"] for s in samples if s["finished"] > 0), None)
        phases = {"ramp": (0, ramp_s),
                  "quiet": (quiet["samples"][0]["t"], quiet["samples"][-1]["t"]) if quiet
                  else None, "answering": (answering, float("inf")) if answering else None}
        out["probe_ms_get_models"] = {"failed": sum(1 for _, ms in self.probes if ms is None)}
        for name, span in phases.items():
            got = sorted(ms for t, ms in self.probes
                         if span and ms is not None and span[0] <= t <= span[1])
            if got:
                out["probe_ms_get_models"][name] = {
                    "p50": round(load.percentile(got, 50) or 0, 1),
                    "p99": round(load.percentile(got, 99) or 0, 1), "max": round(got[-1], 1)}
        kinds = {k for s in ramp_samples for k in s["backends"]}
        out["backends_mean_during_ramp"] = {
            k: round(sum(s["backends"].get(k, 0) for s in ramp_samples) / len(ramp_samples), 1)
            for k in sorted(kinds)}
        if quiet and self.relay is None:
            first, last = quiet["samples"][0], quiet["samples"][-1]
            out["quiet"] = {"from_s": first["t"], "to_s": last["t"],
                            "seconds": round(last["t"] - first["t"], 2),
                            "waiting": first["waiting"]}
        elif quiet:
            first, last = quiet["samples"][0], quiet["samples"][-1]
            seconds, waiting = last["t"] - first["t"], first["waiting"]
            statements = last["api_statements"] - first["api_statements"]
            xacts = last["xacts"] - first["xacts"]
            out["quiet"] = {
                "from_s": first["t"], "to_s": last["t"], "seconds": round(seconds, 2),
                "waiting": waiting, "api_statements": statements,
                "api_transaction_control": last["api_control"] - first["api_control"],
                "db_transactions_all_processes": xacts,
                "api_statements_per_waiter_s": round(statements / waiting / seconds, 4),
                "db_transactions_per_waiter_s": round(xacts / waiting / seconds, 4)}
        with_cpu = [s for s in samples if "cpu" in s]
        if len(with_cpu) >= 2:
            first = with_cpu[0]
            in_ramp = [s for s in with_cpu if s["t"] <= ramp_s] or with_cpu[:2]
            for name, end in (("ramp", in_ramp[-1]), ("run", with_cpu[-1])):
                seconds = end["t"] - first["t"]
                used = {k: round(v - first["cpu"].get(k, 0), 2) for k, v in end["cpu"].items()}
                out[f"cpu_s_{name}"] = {"seconds": round(seconds, 1), **used,
                                        "cores_busy_all": round(sum(used.values()) / seconds, 2)
                                        if seconds else None}
        if samples and samples[-1]["answered"] and self.relay is not None:
            first, last = samples[0], samples[-1]
            out["api_statements_per_request"] = round(
                (last["api_statements"] - first["api_statements"]) / last["answered"], 2)
            out["api_transaction_control_per_request"] = round(
                (last["api_control"] - first["api_control"]) / last["answered"], 2)
        out["samples"] = samples
        return out


def spread(values: list[float]) -> dict[str, float] | None:
    """p50, p99 and max of sorted `values` (seconds), or None."""
    if not values:
        return None
    return {"p50": round(load.percentile(values, 50) or 0, 3),
            "p99": round(load.percentile(values, 99) or 0, 3), "max": round(values[-1], 3)}


def lag_histogram(lags: list[float]) -> dict[str, int]:
    """{"<=0.1": count, ..., ">20": count} of the answer lags (seconds)."""
    out = {f"<={b:g}": 0 for b in LAG_BUCKETS_S} | {f">{LAG_BUCKETS_S[-1]:g}": 0}
    for lag in lags:
        bucket = next((f"<={b:g}" for b in LAG_BUCKETS_S if lag <= b),
                      f">{LAG_BUCKETS_S[-1]:g}")
        out[bucket] += 1
    return out


def quiet_window(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The longest run of samples with nothing sent, charged, finished or answered between
    them, while at least 90 % of the most requests ever held were waiting."""
    best: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    most = max((s["waiting"] for s in samples), default=0)
    for s in samples:
        if s["waiting"] < 0.9 * most:
            run = []
            continue
        same = run and all(s[k] == run[-1][k] for k in ("charged", "finished", "answered",
                                                        "sent"))
        run = [*run, s] if same else [s]
        if len(run) > len(best):
            best = run
    best = best[1:]  # the first sample may still see the last claims and first reads
    if len(best) < 3:
        return None
    return {"samples": best}


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(PgRelay(sys.argv[2], int(sys.argv[3])).serve())
