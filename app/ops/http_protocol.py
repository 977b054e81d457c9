"""The HTTP/1.1 protocol `gih serve` runs: uvicorn's httptools protocol with the limits a server
facing the internet needs, which uvicorn does not set on its own (checked in the server we ship,
not only behind a proxy):

- the request line and headers together are at most MAX_HEADER_BYTES; beyond that the answer is
  431 and the connection closes, without reading (or holding) the rest;
- a request's headers must arrive within `GIH_HTTP_READ_TIMEOUT_S` of its first byte (or of
  the connection's opening): else 408 and the connection closes;
- then its body must arrive at `GIH_HTTP_BODY_MIN_RATE` bytes per second on average over each
  window of `GIH_HTTP_READ_TIMEOUT_S`, while the app is reading it: a slower (or stalled) client
  is answered 408 (if nothing was answered yet) and cut off.

And a connection holds less while its request waits (5,000 waiting sync requests in one process,
docs/performance.md, scenario L): uvicorn gives each connection a `deque` for pipelined requests
and two `asyncio.Event`s (its flow control's and the request cycle's), each with a `deque` of
waiters: ~760 bytes apiece, nearly always empty. Here they are lists (56 bytes).
"""

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import get_settings
from app.errors import ErrorCode, error_body

log = logging.getLogger("gih.http")

MAX_HEADER_BYTES = 64 * 1024
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def refusal(status: int, message: str) -> bytes:
    body = json.dumps(error_body(ErrorCode.INVALID_REQUEST, message)).encode()
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n", body])


class LeanEvent(asyncio.Event):
    """An `asyncio.Event` whose waiters are a list, not a deque (`set` iterates them, `wait`
    appends and removes its own: nothing else touches them)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = []  # type: ignore[assignment]


class Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (`appendleft`, `pop`), seldom holding any."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class LeanFlowControl(FlowControl):
    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._is_writable_event = LeanEvent()
        self._is_writable_event.set()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Ours in slots: uvicorn's 27 attributes alone keep the instance dict a key-sharing one
    # (CPython shares keys up to 30), ~0.3 KB a connection instead of ~1.5.
    __slots__ = ("read_timeout_s", "min_body_bytes", "head_open", "head_bytes", "head_timer",
                 "body_timer", "body_bytes")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = Pipeline()  # type: ignore[assignment]
        settings = get_settings()
        self.read_timeout_s = settings.http_read_timeout_s
        self.min_body_bytes = int(settings.http_body_min_rate * self.read_timeout_s)
        self.head_open = True  # the bytes arriving now belong to a request's line and headers
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.body_bytes = 0  # received in the current window

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = LeanFlowControl(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.head_open:
            self.body_bytes += len(data)
            super().data_received(data)
            return
        if self.head_timer is None:
            self._arm_head_timer()
        room = MAX_HEADER_BYTES - self.head_bytes
        self.head_bytes += min(len(data), room)
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self.head_open and self.head_bytes >= MAX_HEADER_BYTES:
            self._refuse(431, f"the request line and headers are larger than "
                              f"{MAX_HEADER_BYTES // 1024} KB")
        elif len(data) > room:
            self.data_received(data[room:])

    # httptools parser callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.head_open = False
        self.head_bytes = 0
        self._cancel_timer("head_timer")
        self.body_bytes = 0
        self.body_timer = self.loop.call_later(self.read_timeout_s, self._check_body_rate)
        super().on_headers_complete()
        if self.cycle is not None:  # made just now; its task has not run yet
            self.cycle.message_event = LeanEvent()

    def on_message_complete(self) -> None:
        self._cancel_timer("body_timer")
        self.head_open = True  # what follows is the next (pipelined) request
        super().on_message_complete()

    # timers ------------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_timer("head_timer")
        self.head_timer = self.loop.call_later(self.read_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.head_open or self.transport.is_closing():
            return
        if self.head_bytes == 0 and self.cycle is not None:
            return  # an idle keep-alive connection: uvicorn's keep-alive timeout owns it
        self._refuse(408, f"the request headers did not arrive within "
                          f"{self.read_timeout_s:g} s")

    def _check_body_rate(self) -> None:
        self.body_timer = None
        if self.head_open or self.transport.is_closing():
            return
        app_is_reading = not self.flow.read_paused
        if app_is_reading and self.body_bytes < self.min_body_bytes:
            log.warning("closing a connection whose request body stalled (%s bytes in %.0f s)",
                        self.body_bytes, self.read_timeout_s)
            if self.cycle is not None and not self.cycle.response_started:
                self.transport.write(refusal(408, "the request body arrived too slowly"))
            self.transport.close()
            return
        self.body_bytes = 0
        self.body_timer = self.loop.call_later(self.read_timeout_s, self._check_body_rate)

    def _refuse(self, status: int, message: str) -> None:
        log.warning("refusing a request: %s", message)
        self._cancel_timers()
        self.transport.write(refusal(status, message))
        self.transport.close()

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _cancel_timers(self) -> None:
        self._cancel_timer("head_timer")
        self._cancel_timer("body_timer")
