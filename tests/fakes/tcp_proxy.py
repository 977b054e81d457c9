"""A TCP proxy that can be taken down and brought back, to fake a dependency outage.

>>> proxy = TcpProxy("127.0.0.1", 5432).start()
>>> url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
>>> proxy.down()   # every open connection is reset, new ones are refused
>>> proxy.up()     # listening again on the same port
>>> proxy.stop()

It runs its own asyncio loop in a background thread, so it works under sync and async tests
alike, and the real server behind it (PostgreSQL, SeaweedFS, ...) is never touched.

``down()`` stops listening (a client sees "connection refused", as while a server restarts);
``down(refuse=False)`` keeps accepting but closes each new connection at once, which lets the
test count the attempts a client makes (``rejected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port
        self.accepted = 0  # connections forwarded to the target
        self.rejected = 0  # connections accepted and closed at once while down(refuse=False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._forwarding = False

    # --- control, from any thread ------------------------------------------------------------

    def start(self) -> TcpProxy:
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(ready.set)
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"tcp-proxy-{self.target_port}",
                                        daemon=True)
        self._thread.start()
        ready.wait(5)
        self._call(self._listen())
        self._forwarding = True
        return self

    def down(self, *, refuse: bool = True) -> None:
        """Reset every open connection; refuse new ones (or accept and close them at once)."""
        self._call(self._down(refuse))

    def up(self) -> None:
        """Forward again, on the same port."""
        self._call(self._up())

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._down(True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None

    @property
    def url_host(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _call(self, coro: object, timeout: float = 10) -> object:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    # --- inside the proxy's loop -------------------------------------------------------------

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock, backlog=256)

    async def _down(self, refuse: bool) -> None:
        self._forwarding = False
        if refuse and self._server is not None:
            self._server.close()
            self._server = None
        elif not refuse and self._server is None:
            await self._listen()
        for transport in list(self._transports):
            transport.abort()  # RST: the peer learns at once, as when a server process dies
        self._transports.clear()
        await asyncio.sleep(0)

    async def _up(self) -> None:
        if self._server is None:
            await self._listen()
        self._forwarding = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._forwarding:
            self.rejected += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if not self._forwarding:  # went down while we connected
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for transport in pair:
                self._transports.discard(transport)
                transport.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            writer.transport.abort()
