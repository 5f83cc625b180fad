"""Workspace events across replicas: PostgreSQL NOTIFY in, WebSocket subscribers out.

Every change to a workspace's files (through the Contents API or synced from its sandbox) and
every sandbox state change is published with ``pg_notify`` in the transaction that made it
(``extensions.workspaces.events.publish``). Each replica LISTENs on one connection and hands
the events to its subscribers, so an editor connected to one replica hears changes that arrive
through another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

import psycopg

from extensions.workspaces.events import CHANNEL

RETRY_SECONDS = 1.0

Subscriber = Callable[[dict[str, Any]], None]


class EventHub:
    """This replica's LISTEN connection and the subscribers of each workspace."""

    def __init__(self, conninfo: str, log: logging.Logger) -> None:
        self.conninfo = conninfo
        self.log = log
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        """Begin listening (reconnecting by itself after failures)."""
        self._task = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def subscribe(self, workspace_id: uuid.UUID, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with each event of the workspace; returns the unsubscribe."""
        key = str(workspace_id)
        self._subscribers.setdefault(key, set()).add(subscriber)

        def unsubscribe() -> None:
            subscribers = self._subscribers.get(key)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[key]

        return unsubscribe

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as e:
                self.listening.clear()
                self.log.warning("events | listening failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(RETRY_SECONDS)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            async for notify in conn.notifies():
                await self._dispatch(notify.payload)

    async def _dispatch(self, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        workspace = event.pop("workspace", "")
        if not self._subscribers.get(workspace):
            return
        large = event.pop("large_event", None)
        if large is not None:
            event = await self._read_large(large)
            if event is None:
                return
            event.pop("workspace", None)
        for subscriber in list(self._subscribers.get(workspace, ())):
            subscriber(event)

    async def _read_large(self, event_id: Any) -> dict[str, Any] | None:
        """A large event (``extensions.workspaces.events.publish``), read back by its id on a
        connection of its own: the listening one is busy waiting for notifications."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True
            ) as conn:
                cur = await conn.execute(
                    "SELECT payload FROM large_events WHERE id = %s", [int(event_id)]
                )
                row = await cur.fetchone()
        except (psycopg.Error, OSError, TypeError, ValueError) as e:
            self.log.warning("events | large event %s unread (%s)", event_id, type(e).__name__)
            return None
        if row is None:
            self.log.warning("events | large event %s is gone", event_id)
            return None
        return cast(dict[str, Any], json.loads(row[0]))
