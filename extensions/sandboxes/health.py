"""Health checks of running sandboxes' agents: unresponsive after missed checks, running again
(and caught up) when one answers, killed and replaced after ``unresponsive_timeout``."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from extensions.sandboxes import store
from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.locks import HEALTH_LOCK_ID, advisory_lock
from extensions.sandboxes.part import SandboxesPart
from extensions.sandboxes.spawners.base import SpawnerError
from extensions.sandboxes.store import ALIVE, SandboxRow

if TYPE_CHECKING:
    from extensions.sandboxes.manager import Sandboxes


class HealthChecks(SandboxesPart):
    """Asks every running (or unresponsive) sandbox's agent for its health; one replica."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        super().__init__(sandboxes)
        # Health checks each sandbox has missed in a row (on the replica that checks).
        self._misses: dict[uuid.UUID, int] = {}

    async def check_once(self) -> None:
        """Ask every running (or unresponsive) sandbox's agent for its health, at once; one
        replica at a time.

        ``health_misses`` unanswered checks in a row mark a running sandbox unresponsive; an
        answer brings it back to running and mirrors the changes saved meanwhile. A sandbox
        unresponsive for ``unresponsive_timeout`` seconds is killed and marked failed: the
        next use starts a fresh one from PostgreSQL.
        """
        async with advisory_lock(self.db, HEALTH_LOCK_ID, wait=False) as taken:
            if not taken:
                return
            async with self.db.connection() as conn:
                rows = [row for row in await store.list_running(conn) if row["state"] in ALIVE]
                with_pending = await store.workspaces_with_pending(conn)
            checked = {row["id"] for row in rows}
            for sandbox_id in set(self._misses) - checked:
                del self._misses[sandbox_id]
            results = await asyncio.gather(
                *(self._check(row, row["workspace_id"] in with_pending) for row in rows),
                return_exceptions=True,
            )
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, Exception):
                    self.log.error("sandbox %s | health check failed: %r", row["id"], result)

    async def _check(self, row: SandboxRow, has_pending: bool) -> None:
        sandboxes = self.sandboxes
        sandbox_id = row["id"]
        if row["endpoint"] is None:
            return
        try:
            await sandboxes.client(row).health(request_timeout=sandboxes.agent_request_timeout)
        except AgentError as e:
            if not isinstance(e, AgentUnresponsive) and not await sandboxes.alive(row):
                self._misses.pop(sandbox_id, None)
                return  # it died: marked failed
            await self._missed(row, e)
            return
        self._misses.pop(sandbox_id, None)
        if row["state"] == "unresponsive":
            if not await sandboxes.change_state(row, "unresponsive", "running"):
                return
            self.log.info("sandbox %s | answers again", sandbox_id)
            has_pending = True
        if has_pending:
            await sandboxes.mirror.mirror_pending(row)

    async def _missed(self, row: SandboxRow, error: AgentError) -> None:
        sandboxes = self.sandboxes
        sandbox_id = row["id"]
        misses = self._misses[sandbox_id] = self._misses.get(sandbox_id, 0) + 1
        if row["state"] == "running" and misses >= sandboxes.health_misses:
            self.log.warning(
                "sandbox %s | unresponsive: %d health checks unanswered (%s)",
                sandbox_id,
                misses,
                error,
            )
            await sandboxes.change_state(
                row,
                "running",
                "unresponsive",
                "The sandbox is not responding. Your saved files are safe in the workspace; "
                "changes made in the sandbox reach it if the sandbox recovers.",
            )
        elif row["state"] == "unresponsive" and sandboxes.unresponsive_timeout > 0:
            hung_for = (datetime.now(UTC) - row["state_since"]).total_seconds()
            if hung_for >= sandboxes.unresponsive_timeout:
                await self._replace(row, hung_for)

    async def _replace(self, row: SandboxRow, hung_for: float) -> None:
        """Kill a sandbox unresponsive for too long; the next use starts a fresh one."""
        sandboxes = self.sandboxes
        if not await sandboxes.change_state(row, "unresponsive", "stopping"):
            return
        self.log.warning(
            "sandbox %s | killed: unresponsive for %.0f s (unsynced changes in it are lost)",
            row["id"],
            hung_for,
        )
        self._misses.pop(row["id"], None)
        sandboxes.sync_leases.stop(row["id"])
        sandboxes.forget_client(row["id"])
        try:
            await sandboxes.spawner.stop(sandboxes.handle(row), now=True)
        except SpawnerError:
            self.log.exception("sandbox %s | stop failed", row["id"])
        await sandboxes.set_state(
            row["id"],
            "failed",
            "The sandbox stopped responding and was stopped after "
            f"{sandboxes.unresponsive_timeout:g} s. Your saved files are safe; opening a "
            "terminal starts a new sandbox (changes made in the old one that had not reached "
            "the workspace are lost).",
        )

    async def check_forever(self) -> None:
        """The background health-check loop: logs failures and goes on."""
        if self.sandboxes.health_interval <= 0:
            return
        await self.repeat(
            self.check_once,
            lambda: self.sandboxes.health_interval,
            "sandboxes | health checks failed",
            wait_first=True,
        )
