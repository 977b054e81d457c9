"""Waiting for a condition instead of sleeping: one helper for sync code, its twin for async.

>>> wait_until(lambda: log.exists(), timeout=10, what="the log file")
>>> body = await wait_until_async(lambda: final(generation_id), timeout=30)

The condition is called every `interval` seconds until it returns something truthy, which is
returned. An exception it raises ends the wait at once (a process that died, say), unless its
type is in `ignoring` (a connection refused while a server starts). Past `timeout` the wait
fails with an AssertionError naming `what` (a string, or a callable giving the latest state).
"""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Description = str | Callable[[], str]


def _failure(what: Description, timeout: float) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"not within {timeout:g} s: {text}")


def wait_until(condition: Callable[[], T], *, timeout: float, interval: float = 0.05,
               what: Description = "the condition",
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except ignoring:
            result = None  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _failure(what, timeout)
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], T | Awaitable[T]], *, timeout: float,
                           interval: float = 0.05, what: Description = "the condition",
                           ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """The same, for async tests: `condition` may be a coroutine function; never blocks."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except ignoring:
            result = None
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(what, timeout)
        await asyncio.sleep(interval)
