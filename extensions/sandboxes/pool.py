"""The warm pool: sandboxes started ahead without a workspace, claimed by the next workspace
that needs one, and refilled."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from extensions.sandboxes import store
from extensions.sandboxes.agent_client import AgentError
from extensions.sandboxes.errors import SandboxFailed
from extensions.sandboxes.locks import POOL_LOCK_ID, advisory_lock
from extensions.sandboxes.part import SandboxesPart
from extensions.sandboxes.store import SandboxRow

if TYPE_CHECKING:
    from extensions.sandboxes.manager import Sandboxes


class WarmPool(SandboxesPart):
    """Keeps ``Spawner.warm_pool_size`` sandboxes started, and hands them to workspaces."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        super().__init__(sandboxes)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def claim(self, workspace_id: uuid.UUID) -> SandboxRow | None:
        """Give the workspace a started, unassigned sandbox, loaded with its files; None if
        the pool is empty (or the claimed sandbox failed, or did not take the files within
        ``start_timeout``: it is then discarded)."""
        sandboxes = self.sandboxes
        async with self.db.transaction() as conn:
            await sandboxes.check_owner_cap(conn, workspace_id)
            row = await store.claim_pooled(conn, workspace_id)
        if row is None:
            return None
        started = time.monotonic()
        try:
            if not await sandboxes.spawner.poll(sandboxes.handle(row)):
                msg = "the pooled sandbox is gone"
                raise AgentError(msg)
            load_began = datetime.now(UTC)
            async with asyncio.timeout(sandboxes.start_timeout):
                loaded = await sandboxes.load_files(workspace_id, sandboxes.client(row))

            progress = functools.partial(sandboxes.report_progress, row["id"], workspace_id)
            await sandboxes.packages.restore(row, progress)
        except (AgentError, TimeoutError) as e:
            why = str(e) or f"no files loaded within {sandboxes.start_timeout:g} s"
            self.log.warning("sandbox %s | pooled sandbox unusable (%s)", row["id"], why)
            await sandboxes.discard(row)
            return None
        row = await sandboxes.set_state(row["id"], "running") or row
        await sandboxes.mirror.catch_up(workspace_id, sandboxes.client(row), load_began)
        await sandboxes.sync_leases.claim(row["id"])
        self.log.info(
            "sandbox %s | claimed from the warm pool in %.3fs (%d files loaded)",
            row["id"],
            time.monotonic() - started,
            loaded,
        )
        self._refill_soon()
        return row

    async def close(self) -> None:
        """Cancel the refills in progress (a cancelled start is undone) while the database is
        still there to record it."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _refill_soon(self) -> None:
        task = asyncio.create_task(self.fill())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fill(self) -> int:
        """Start pool sandboxes until there are ``Spawner.warm_pool_size``; one replica at a
        time. Returns how many were started."""
        wanted = self.sandboxes.spawner.warm_pool_size
        if wanted <= 0 or wanted <= await self._size():  # the usual case: no lock
            return 0
        started = 0
        async with advisory_lock(self.db, POOL_LOCK_ID, wait=False) as taken:
            if not taken:
                return 0
            for _ in range(wanted - await self._size()):
                try:
                    await self.sandboxes.start(None)
                    started += 1
                except SandboxFailed:
                    break  # logged by start; the next round tries again
        return started

    async def _size(self) -> int:
        async with self.db.connection() as conn:
            return await store.count_pool(conn)

    async def fill_forever(self) -> None:
        """Keep the warm pool full: logs failures and goes on."""
        await self.repeat(
            self.fill,
            lambda: self.sandboxes.pool_interval,
            "sandboxes | filling the warm pool failed",
        )
