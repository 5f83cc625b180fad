"""What a ``PostgresContentsManager`` shares with the server above it. Managers are made per
request and per workspace: each must use the server's notary, event logger and event loop,
never build its own (a notary opens a SQLite store of signatures; a logger registers schemas)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from jupyter_events import EventLogger
from jupyter_server import DEFAULT_EVENTS_SCHEMA_PATH
from nbformat import sign
from traitlets.config import Configurable


@functools.cache
def fallback_event_logger() -> EventLogger:
    """One event logger for managers without a server above them (as Jupyter would make)."""
    logger = EventLogger()
    logger.register_event_schema(DEFAULT_EVENTS_SCHEMA_PATH / "contents_service" / "v1.yaml")
    return logger


@functools.lru_cache(maxsize=4)
def _root_notary(root: Configurable) -> sign.NotebookNotary:
    return sign.NotebookNotary(parent=root)  # type: ignore[no-untyped-call]


def notary(manager: Configurable) -> sign.NotebookNotary:
    """The notary shared by every manager under the same root (configured by its config)."""
    root = manager.parent
    if root is None:
        return sign.NotebookNotary(parent=manager)  # type: ignore[no-untyped-call]
    while getattr(root, "parent", None) is not None:
        root = root.parent
    return _root_notary(root)


def event_logger(manager: Configurable) -> EventLogger:
    """The nearest ancestor's event logger (the server's), so that listeners see every
    workspace's events; a shared fallback without one."""
    parent: Any = manager.parent
    while parent is not None:
        found = getattr(parent, "event_logger", None)
        if isinstance(found, EventLogger):
            return found
        parent = getattr(parent, "parent", None)
    return fallback_event_logger()


def server_loop(manager: Configurable) -> asyncio.AbstractEventLoop | None:
    """The event loop the server runs on (its ``io_loop``, made before its managers)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        io_loop = getattr(manager.parent, "io_loop", None)
        loop = getattr(io_loop, "asyncio_loop", None)
        return loop if isinstance(loop, asyncio.AbstractEventLoop) else None
