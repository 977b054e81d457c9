"""A lean, bounded asyncio load generator over raw HTTP/1.1 keep-alive connections.

The load generator shares the machine's cores with the servers it measures, so it avoids an HTTP
client library: each worker owns one connection, sends pre-built request bytes and reads the
status, the headers and a Content-Length (or chunked) body. Its own CPU time is reported with
every run.
"""

import asyncio
import itertools
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Request:
    """Pre-built bytes of one request; `file` (streamed after `head`+`body`) then `tail`."""

    head: bytes
    body: bytes = b""
    file: Path | None = None
    tail: bytes = b""


def build(method: str, host: str, path: str, headers: dict[str, str] | None = None,
          body: bytes = b"", length: int | None = None) -> Request:
    """A request with `body`; `length` overrides its Content-Length (for a streamed body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or length is not None or method == "POST":
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return Request(("\r\n".join(lines) + "\r\n\r\n").encode(), body)


def multipart(host: str, path: str, headers: dict[str, str], fields: dict[str, str],
              file_field: str, file: Path, content_type: str) -> Request:
    """A multipart/form-data POST whose file part is streamed from disk."""
    boundary = "gihbench7d1f3a9c0b5e"
    pre = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items())
    pre += (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
            f'filename="{file.name}"\r\nContent-Type: {content_type}\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(pre) + file.stat().st_size + len(tail)
    content_type_header = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    head = build("POST", host, path, {**headers, **content_type_header}, length=length).head
    return Request(head, pre, file, tail)


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port,
                                                                 limit=4 * CHUNK)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, req: Request) -> tuple[int, bytes]:
        """Send `req`, return (status, body). A fresh connection is opened if needed; a reused
        one that the server had closed is retried once on a new connection."""
        reused = self.writer is not None
        if not reused:
            await self.connect()
        try:
            return await self._exchange(req)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.close()
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            await self.connect()
            return await self._exchange(req)

    async def _exchange(self, req: Request) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(req.head + req.body)
        if req.file is not None:
            with req.file.open("rb") as f:
                while chunk := f.read(CHUNK):
                    self.writer.write(chunk)
                    await self.writer.drain()
            self.writer.write(req.tail)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                close = "close" in value.lower()
        body = await (self._chunked() if chunked else self.reader.readexactly(length))
        if close:
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class LoadResult:
    name: str
    concurrency: int
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    loadgen_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def p(self, q: float) -> float | None:
        return percentile(sorted(self.latencies_ms), q)

    def summary(self) -> dict:
        return {"name": self.name, "concurrency": self.concurrency,
                "elapsed_s": round(self.elapsed_s, 3), "ok": self.ok, "errors": self.errors,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "rate_per_s": round(self.rate, 2), "p50_ms": _r(self.p(50)),
                "p99_ms": _r(self.p(99)), "loadgen_cpu_s": round(self.loadgen_cpu_s, 3),
                "loadgen_cpu_pct_of_one_core": round(
                    100 * self.loadgen_cpu_s / self.elapsed_s, 1) if self.elapsed_s else None,
                "error_samples": self.error_samples}

    def line(self) -> str:
        p50, p99 = self.p(50), self.p(99)
        extra = f", {self.errors} errors" if self.errors else ""
        return (f"    {self.name}: {self.ok} ok in {self.elapsed_s:.1f} s = {self.rate:.1f}/s, "
                f"p50 {_fmt(p50)} ms, p99 {_fmt(p99)} ms, c={self.concurrency}, "
                f"loadgen CPU {self.summary()['loadgen_cpu_pct_of_one_core']}%{extra}")


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


OnResponse = Callable[[int, int, bytes], None]


async def run(name: str, host: str, port: int, make: Callable[[int], Request], *,
              expected: set[int], concurrency: int, duration_s: float | None = None,
              total: int | None = None, on_response: OnResponse | None = None,
              warmup_s: float = 0.0, quiet: bool = False) -> LoadResult:
    """`concurrency` workers send `make(i)` (i = 0, 1, ...) until `duration_s` has passed or
    `total` requests were started, whichever is first. Statuses outside `expected` are errors.
    Connections are opened before the clock starts; a warm-up, if any, is not counted."""
    assert duration_s or total, "a load needs a duration or a count"
    if warmup_s:
        await run(f"{name} warm-up", host, port, make, expected=expected,
                  concurrency=concurrency, duration_s=warmup_s, quiet=True)
    result = LoadResult(name, concurrency)
    conns = [Connection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))
    counter = itertools.count()
    cpu0, start = _cpu_self(), time.perf_counter()
    deadline = start + duration_s if duration_s else float("inf")
    last_done = start

    async def worker(conn: Connection) -> None:
        nonlocal last_done
        while time.perf_counter() < deadline:
            i = next(counter)
            if total is not None and i >= total:
                return
            req = make(i)
            began = time.perf_counter()
            try:
                status, body = await conn.send(req)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status, body = 0, repr(exc).encode()
            done = time.perf_counter()
            last_done = max(last_done, done)
            result.statuses[status] += 1
            if status in expected:
                result.latencies_ms.append((done - began) * 1000)
                if on_response is not None:
                    on_response(i, status, body)
            else:
                result.errors += 1
                if len(result.error_samples) < 5:
                    sample = f"{status}: {body[:300].decode(errors='replace')}"
                    result.error_samples.append(sample)
                    print(f"    ! {name}: unexpected {sample}")

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    result.elapsed_s = last_done - start
    result.loadgen_cpu_s = _cpu_self() - cpu0
    if result.errors > len(result.error_samples):
        print(f"    ! {name}: {result.errors} unexpected answers in all")
    if not quiet:
        print(result.line())
    return result
