"""Real processes for tests: free ports, a Redis of one's own, `gih serve`."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

GIH = str(Path(sys.executable).parent / "gih")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RedisServer:
    """A Redis of our own, so it can be stopped and started again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def app_env(env: dict[str, str]) -> dict[str, str]:
    """The test process's environment without our settings, plus `env`."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("GIH_", "OPENAI_", "AWS_"))}
    return {**clean, **env}


def start_serve(env: dict[str, str], log: Path, workers: int = 1,
                port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`gih serve` with `env` (GIH_PUBLIC_BASE_URL set to its address); waits for /healthz."""
    port = port or free_port()
    full_env = app_env({**env, "GIH_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"})
    with open(log, "ab") as out:
        process = subprocess.Popen([GIH, "serve", "--port", str(port), "--workers", str(workers)],
                                   env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(process, f"{base}/healthz", log)
    return process, base


def wait_until_answering(process: subprocess.Popen, url: str, log: Path | None = None,
                         timeout: float = 30) -> None:
    """Wait until `url` answers; fail with the log's tail if the process dies or takes long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log else ""
                raise RuntimeError(f"{url} did not answer:\n{tail}") from None
            time.sleep(0.2)
