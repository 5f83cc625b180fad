"""The tests' one way to wait: poll a condition until it holds, never sleep for a guess."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    check: Callable[[], T | Awaitable[T]], what: str, within: float = 30, interval: float = 0.05
) -> T:
    """Poll ``check`` (a function or coroutine function) until it returns something true, and
    return that; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            msg = f"within {within:g} s, never: {what}"
            raise AssertionError(msg)
        await asyncio.sleep(interval)
