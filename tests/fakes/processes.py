"""Real processes for tests, one way to start each: free ports, a Redis of one's own,
`gih serve` and `gih worker`. (The OpenAI fake and SeaweedFS have their own modules beside this
one; they take their ports from here too.)"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.waiting import wait_until

GIH = str(Path(sys.executable).parent / "gih")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10) -> None:
    def accepts() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True

    wait_until(accepts, timeout=timeout, ignoring=(OSError,), what=f"port {port} accepting")


def stop_process(process: subprocess.Popen | None, timeout: float = 30) -> int | None:
    """SIGTERM a process started in a session of its own (and its children), SIGKILL it if it
    takes longer than `timeout`; returns its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.wait(10)


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


def start_serve(env: dict[str, str], log: Path, workers: int | None = 1,
                port: int | None = None, cwd: Path | None = None,
                set_base_url: bool = True) -> tuple[subprocess.Popen, str]:
    """`gih serve` with `env` (on top of app_env), output in `log`; waits until it answers.

    GIH_PUBLIC_BASE_URL is set to its address unless `set_base_url` is false (the embedded
    default, with no configuration at all); `workers=None` passes no --workers. Stop it with
    stop_process()."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    full_env = app_env({**env, "GIH_PUBLIC_BASE_URL": base} if set_base_url else env)
    command = [GIH, "serve", "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=full_env, cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answering(process, f"{base}/healthz", log)
    except BaseException:
        stop_process(process, 5)
        raise
    return process, base


def wait_until_answering(process: subprocess.Popen, url: str, log: Path | None = None,
                         timeout: float = 30) -> None:
    """Wait until `url` answers; fail with the log's tail if the process dies or takes long."""
    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode}:\n{tail()}")
        urllib.request.urlopen(url, timeout=2).close()
        return True

    def tail() -> str:
        return log.read_text(errors="replace")[-3000:] if log else ""

    wait_until(answers, timeout=timeout, interval=0.1, ignoring=(OSError,),
               what=lambda: f"{url} answering:\n{tail()}")


class WorkerProcess:
    """A real `gih worker` process, with its output in `log_path`."""

    READY = b"gih worker ready"

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = app_env(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def ready_count(self) -> int:
        return self.log_path.read_bytes().count(self.READY) if self.log_path.exists() else 0

    def start(self) -> "WorkerProcess":
        """Start it and wait until *this* start is ready (the log keeps the earlier ones)."""
        before = self.ready_count()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([GIH, "worker"], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gih worker exited with {process.returncode} at start:\n"
                                     + self.log_tail())
            return self.ready_count() > before

        wait_until(ready, timeout=30, what=lambda: "gih worker ready:\n" + self.log_tail())
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_running(self) -> "WorkerProcess":
        return self if self.alive() else self.start()

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        return stop_process(self.process, 15)

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-4000:].decode(errors="replace")
