"""`gih serve` (the HTTP API, uvicorn) and `gih worker` (the arq worker)."""

import asyncio
import json
import logging
import os
import sys
from typing import Annotated, Any

import typer

from app.accounts import service as users
from app.cli.common import Failure, run_db, settings
from app.config import ConfigError, get_settings


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default GIH_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default GIH_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    # Worker processes re-read the environment: make the flags their settings too.
    if host:
        os.environ["GIH_HOST"] = host
    if port:
        os.environ["GIH_PORT"] = str(port)
    get_settings.cache_clear()
    cfg = settings()
    try:
        cfg.check()
    except ConfigError as exc:
        raise Failure(str(exc), 2) from None
    if cfg.embedded:
        from app.migrate import upgrade
        upgrade(cfg.database_url)
        if run_db(users.count) == 0:
            typer.echo("No users yet. Create one and issue a key:\n"
                       "  gih users create you@example.com --credits 100\n"
                       "  gih keys create you@example.com\n", err=True)
    if workers > 1:
        share_metrics_between_processes()
    # SIGTERM: stop accepting, let in-flight requests (sync waits included) finish for up to
    # the grace period, then stop; anything cut off is finished by the worker or the sweep.
    options: dict[str, Any] = {
        "host": cfg.host, "port": cfg.port, "workers": workers, "backlog": 2048,
        "log_config": None, "access_log": False, "timeout_keep_alive": 75,
        "timeout_graceful_shutdown": int(cfg.shutdown_grace_s),
        "http": "app.ops.http_protocol:GuardedHttpToolsProtocol"}
    if workers > 1:  # supervise from a fresh, small process (same pid, signals and output)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "app.cli.supervisor",
                                   json.dumps(options)])
    uvicorn.run("app.main:create_app", factory=True, **options)


def share_metrics_between_processes() -> None:
    """prometheus-client's multiprocess mode: every worker process writes to one directory."""
    import shutil
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)  # values of a previous run are not ours
        os.makedirs(folder, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gih-metrics-")


def worker(
    check: Annotated[bool, typer.Option("--check", help="Exit 0 if a worker is alive (arq's "
                                        "health check in Redis), 1 if not.")] = False,
) -> None:
    """Run the background worker (arq on GIH_REDIS_URL): generation jobs and the sweep."""
    cfg = settings()
    problems = cfg.problems()
    if not cfg.redis_url:
        problems.append("GIH_REDIS_URL is required for `gih worker` (without it, `gih serve` "
                        "runs jobs in-process)")
    if problems:
        raise Failure("invalid configuration:\n  - " + "\n  - ".join(problems), 2)
    from arq.worker import check_health, get_kwargs

    from app.ops import logs
    from worker.settings import WorkerSettings
    from worker.wakeable import WakeableWorker

    if check:
        raise typer.Exit(check_health(WorkerSettings))  # type: ignore[arg-type]
    logs.configure(cfg.log_level, cfg.log_format)
    if cfg.worker_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(cfg.worker_metrics_port, addr=cfg.host)
        except OSError as exc:  # another worker on this host has the port: run without
            logging.getLogger("gih.worker").warning(
                "metrics not served on port %s: %s", cfg.worker_metrics_port, exc)
    use_uvloop()
    kwargs: dict[str, Any] = get_kwargs(WorkerSettings)  # type: ignore[arg-type]
    run_until_stopped(lambda: WakeableWorker(**kwargs).run())


def use_uvloop() -> None:
    """The worker's loop is uvloop's, as `gih serve`'s is (uvicorn picks it): arq takes the loop
    asyncio gives it. Its socket writes and callbacks in C were a quarter of a worker's CPU on
    asyncio's own loop (an image's 200 KB PUT, the upstream's answer, the statements)."""
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it where it builds
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_until_stopped(run: Any, backoff_s: float = 2.0) -> None:
    """arq's worker exits when Redis goes away; start it again (it re-reads everything), so a
    Redis restart does not need a supervisor. A signal ends it normally and ends this too."""
    import time

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    while True:
        try:
            run()
            return
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
            logging.getLogger("gih.worker").warning(
                "worker lost Redis (%s); starting again in %.0f s", exc, backoff_s)
            time.sleep(backoff_s)
