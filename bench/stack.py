"""The production stack on 127.0.0.1: a fresh PostgreSQL database, a Redis and a SeaweedFS S3 of
its own, the fake OpenAI upstream, `gih serve --workers 2` and one `gih worker`; plus users and
keys, made through the app's own functions."""

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.procs import Matching, Tree, command, descendants
from tests.fakes.openai_fake import OpenAIFake
from tests.fakes.processes import GIH, RedisServer, app_env, free_port, start_serve
from tests.fakes.seaweed import SeaweedS3

ADMIN_URL = os.environ.get("GIH_BENCH_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
CREDITS_PER_USER = 10_000_000


async def admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def stop_group(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group of `process` (started with start_new_session), then SIGKILL."""
    if process.poll() is not None:
        return
    began = time.monotonic()
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"  ! {' '.join(map(str, process.args))[:60]} ignored SIGTERM for {timeout} s: "
              "SIGKILL")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass
    if time.monotonic() - began > 3:
        print(f"  ({' '.join(map(str, process.args))[:60]} took "
              f"{time.monotonic() - began:.0f} s to stop)")


def wait_for_log(process: subprocess.Popen, log: Path, marker: bytes, what: str,
                 timeout: float = 60, count: int = 1) -> None:
    """Wait until `marker` is `count` times in `log` (e.g. once per server worker process)."""
    deadline = time.monotonic() + timeout
    while log.read_bytes().count(marker) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n" +
                               log.read_bytes()[-3000:].decode(errors="replace"))
        time.sleep(0.1)


@dataclass
class Account:
    user_id: str
    email: str
    key: str


@dataclass
class Stack:
    """Everything `bench` runs; `close()` tears it all down (also after a failed start)."""

    extra_env: dict[str, str] = field(default_factory=dict)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gih-bench-")))
    db_name: str = field(default_factory=lambda: f"gih_bench_{os.getpid()}")
    env: dict[str, str] = field(default_factory=dict)
    fake: OpenAIFake | None = None
    base: str = ""
    port: int = 0
    serve: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    keep_logs: Path | None = None  # copy the servers' logs here at teardown
    _cleanup: ExitStack = field(default_factory=ExitStack)

    @property
    def db_url(self) -> str:
        return ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db_name

    @property
    def trees(self) -> list[Tree]:
        assert self.serve is not None and self.worker is not None
        return [Tree("api", self.serve.pid), Tree("worker", self.worker.pid)]

    def infra(self) -> list[Tree]:
        """The processes around ours, for the CPU breakdown: PostgreSQL's backends of our
        database, Redis, SeaweedFS and the fake upstream."""
        trees: list[Tree] = [Matching("postgres", 0, f" {self.db_name} ")]
        for pid in descendants(os.getpid())[1:]:
            argv = command(pid).split(" ")
            name = {"redis-server": "redis", "weed": "s3"}.get(os.path.basename(argv[0]))
            if "tests.fakes.openai_fake" in argv:
                name = "upstream"
            if name:
                trees.append(Tree(name, pid))
        return trees

    def start(self) -> "Stack":
        began = time.monotonic()
        self._cleanup.callback(shutil.rmtree, self.dir, ignore_errors=True)
        if self.keep_logs:
            self._cleanup.callback(self._keep_logs)
        asyncio.run(admin_sql(f'CREATE DATABASE "{self.db_name}"'))
        self._cleanup.callback(lambda: asyncio.run(
            admin_sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')))
        redis = RedisServer(self.dir).start()
        self._cleanup.callback(redis.stop)
        s3 = SeaweedS3().start()
        self._cleanup.callback(s3.stop)
        self.fake = OpenAIFake().start()
        self._cleanup.callback(self.fake.stop)
        (self.dir / "metrics").mkdir()
        self.env = {
            "GIH_DATABASE_URL": self.db_url, "GIH_REDIS_URL": redis.url,
            "GIH_SECRET_KEY": secrets.token_urlsafe(48), "GIH_STORAGE": "s3",
            "GIH_S3_BUCKET": "gih-bench", "GIH_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": s3.region, "GIH_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-bench-not-a-real-key", "OPENAI_BASE_URL": self.fake.base_url,
            "GIH_QUEUE_NAME": f"gih-bench-{os.getpid()}",
            "GIH_WORKER_METRICS_PORT": str(free_port()),
            "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics"),
            **self.extra_env,
        }
        self.gih("db", "upgrade")
        self.port = free_port()
        self.serve, self.base = start_serve(self.env, self.dir / "serve.log", workers=2,
                                            port=self.port)
        self._cleanup.callback(stop_group, self.serve)
        # /healthz answers as soon as one worker process is up: wait for both.
        wait_for_log(self.serve, self.dir / "serve.log", b"Application startup complete",
                     "gih serve's second worker process", count=2)
        self.worker = self._start_worker()
        self._cleanup.callback(stop_group, self.worker)
        print(f"  stack up in {time.monotonic() - began:.1f} s: API {self.base} (2 workers), "
              f"worker, PostgreSQL {self.db_name}, Redis {redis.port}, S3 {s3.endpoint_url}, "
              f"fake upstream {self.fake.url}; logs in {self.dir}")
        return self

    def _keep_logs(self) -> None:
        assert self.keep_logs is not None
        shutil.rmtree(self.keep_logs, ignore_errors=True)
        self.keep_logs.mkdir(parents=True)
        for log in [*self.dir.glob("*.log"), *self.dir.glob("*/*.log")]:
            shutil.copy(log, self.keep_logs / log.name)

    def log_errors(self) -> dict[str, dict[str, object]]:
        """Warnings and errors in the servers' logs: {log name: {"count", "top"}}, where "top"
        holds the three most frequent messages (JSON lines: their "message"; else the line)."""
        found = {}
        for log in [*self.dir.glob("*.log"), *self.dir.glob("*/*.log")]:
            messages: Counter = Counter()
            for line in log.read_text(errors="replace").splitlines():
                if '"level": "warning"' in line or '"level": "error"' in line:
                    try:
                        messages[json.loads(line)["message"][:300]] += 1
                    except (ValueError, KeyError):
                        messages[line[:300]] += 1
                elif line.startswith(("ERROR", "Traceback")):
                    messages[line[:300]] += 1
            if messages:
                found[log.name] = {"count": sum(messages.values()),
                                   "top": messages.most_common(3)}
        return found

    def _start_worker(self) -> subprocess.Popen:
        log = self.dir / "worker.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([GIH, "worker"], env=app_env(self.env), stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_log(process, log, b"gih worker ready", "gih worker")
        except RuntimeError:
            stop_group(process)
            raise
        return process

    def gih(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `gih` command with the stack's environment."""
        env = app_env({**self.env, "GIH_PUBLIC_BASE_URL": self.base or "http://127.0.0.1"})
        result = subprocess.run([GIH, *args], env=env, capture_output=True, text=True,
                                timeout=600)
        if check and result.returncode != 0:
            raise RuntimeError(f"gih {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def on_close(self, callback) -> None:
        """Run `callback` at teardown (before the stack's own processes stop)."""
        self._cleanup.callback(callback)

    def close(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- accounts and the database -----------------------------------------------------------

    async def _session(self, work):
        from app.config import Settings
        from app.db import create_engine, create_sessionmaker

        settings = Settings(database_url=self.db_url, secret_key=self.env["GIH_SECRET_KEY"])
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                return await work(session, settings)
        finally:
            await engine.dispose()

    async def accounts(self, count: int, credits: int = CREDITS_PER_USER,
                       prefix: str = "bench") -> list[Account]:
        """`count` PRO users, each with `credits` and one API key."""
        from app.accounts import service as users
        from app.credits import service as ledger
        from app.keys import service as api_keys

        async def work(session, settings) -> list[Account]:
            made = []
            for i in range(count):
                email = f"{prefix}{i}-{secrets.token_hex(3)}@bench.invalid"
                user = await users.create(session, email, account_type="PRO")
                if credits:
                    await ledger.grant(session, user.id, credits, note="bench")
                issued = await api_keys.issue(session, user, secret=settings.hashing_secret())
                made.append(Account(user.id, email, issued.raw_key))
            return made

        return await self._session(work)

    async def grant(self, account: Account, amount: int) -> None:
        from app.credits import service as ledger

        async def work(session, settings) -> None:
            await ledger.grant(session, account.user_id, amount, note="bench top-up")

        await self._session(work)

    async def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.db_url, timeout=10)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def unfinished(self) -> int:
        rows = await self.sql("SELECT count(*) FROM generations "
                              "WHERE status IN ('queued', 'running')")
        return rows[0][0]

    async def drain(self, timeout: float = 300) -> tuple[int, float]:
        """Wait until the worker has finished every queued generation: (how many, seconds)."""
        began = time.monotonic()
        first = left = await self.unfinished()
        while left and time.monotonic() - began < timeout:
            await asyncio.sleep(0.5)
            left = await self.unfinished()
        if left:
            print(f"    ! {left} generations still unfinished after {timeout:.0f} s")
        return first - left, time.monotonic() - began
