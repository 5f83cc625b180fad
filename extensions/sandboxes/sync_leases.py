"""Which sandboxes' file sync this replica consumes: leases in the rows, one ``SyncConsumer``
per leased sandbox, and the final flush before a stop."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from extensions.sandboxes import store
from extensions.sandboxes.agent_client import AgentError
from extensions.sandboxes.part import SandboxesPart
from extensions.sandboxes.store import SandboxRow
from extensions.sandboxes.sync import SyncConsumer
from extensions.workspaces.contents import PostgresContentsManager

if TYPE_CHECKING:
    from extensions.sandboxes.manager import Sandboxes


class SyncLeases(SandboxesPart):
    """Takes, renews and gives up this replica's sync leases, and runs their consumers."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        super().__init__(sandboxes)
        # Names this process in sync leases.
        self.replica = uuid.uuid4()
        self._consumers: dict[uuid.UUID, SyncConsumer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _consumer(self, row: SandboxRow) -> SyncConsumer:
        assert row["workspace_id"] is not None  # noqa: S101  (only assigned sandboxes sync)
        return SyncConsumer(
            db=self.db,
            workspace_id=row["workspace_id"],
            client=self.sandboxes.client(row),
            limits=PostgresContentsManager(parent=self.sandboxes, db=self.db, log=self.log),
            push_back=self.sandboxes.mirror.push_back,
            log=self.log,
        )

    def run(self, row: SandboxRow) -> None:
        """Consume the sandbox's changes in the background (one consumer per sandbox here)."""
        self.sandboxes.packages.run(row)
        if row["id"] in self._consumers:
            return
        consumer = self._consumer(row)
        self._consumers[row["id"]] = consumer

        async def consume() -> None:
            try:
                await consumer.run()
            except asyncio.CancelledError:
                raise
            except (AgentError, OSError, StreamClosedError, WebSocketClosedError) as e:
                self.log.debug("sandbox %s | sync channel ended: %s", row["id"], e)
            except Exception:
                self.log.exception("sandbox %s | file sync failed", row["id"])
            finally:
                if self._consumers.get(row["id"]) is consumer:
                    del self._consumers[row["id"]]

        task = asyncio.create_task(consume())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self, sandbox_id: uuid.UUID) -> None:
        """Stop consuming one sandbox's changes."""
        self.sandboxes.packages.stop(sandbox_id)
        consumer = self._consumers.pop(sandbox_id, None)
        if consumer is not None:
            consumer.close()

    async def claim(self, sandbox_id: uuid.UUID | None = None) -> None:
        """Take the sync leases nobody holds (or just this sandbox's) and consume them."""
        async with self.db.transaction() as conn:
            rows = await store.claim_sync(conn, self.replica, self.sandboxes.sync_lease, sandbox_id)
        for row in rows:
            self.run(row)

    async def final_sync(self, row: SandboxRow) -> None:
        """Before a stop: every change made in the sandbox reaches PostgreSQL (bounded)."""
        consumer = self._consumers.get(row["id"])
        if consumer is None:
            # Another replica (or none) consumes it: take the channel over for the flush.
            self.run(row)
            consumer = self._consumers.get(row["id"])
            for _ in range(50):
                if consumer is None or consumer.connection is not None:
                    break
                await asyncio.sleep(0.02)
        if consumer is None:
            return
        try:
            await consumer.flush()
        except (TimeoutError, ConnectionError, WebSocketClosedError, StreamClosedError) as e:
            self.log.warning("sandbox %s | final sync incomplete: %s", row["id"], e)

    async def renew_forever(self) -> None:
        """Renew this replica's sync leases and take over expired ones, every third of a lease."""
        await self.repeat(
            self.claim,
            lambda: self.sandboxes.sync_lease / 3,
            "sandboxes | claiming file sync failed",
        )

    async def close(self) -> None:
        """Stop consuming and give this replica's leases up (another replica takes them over)."""
        for sandbox_id in list(self._consumers):
            self.stop(sandbox_id)
        async with self.db.transaction() as conn:
            await store.release_sync(conn, self.replica)
