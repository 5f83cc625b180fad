"""asyncio helpers for work that must run to its end once begun, and for work given up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile; then raise
    that cancellation (and drop the result). For work that cannot stop halfway (a thread) or
    must not (undoing a start). A task is still cancelled by its loop's shutdown."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    if not cancelled:
        return future.result()
    if not future.cancelled():
        future.exception()  # retrieved: the caller undoes whatever it was
    raise asyncio.CancelledError


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in the default executor, awaited to its end (``uninterrupted``)."""
    return await uninterrupted(asyncio.get_running_loop().run_in_executor(None, func, *args))


async def abandon(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, its outcome dropped: for work begun
    beside something that failed, whose failure is the one raised."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: the caller raises its own
