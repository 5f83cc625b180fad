"""When sandboxes end: culling idle or old ones, reconciling the spawner's sandboxes with the
rows (orphans, dead sandboxes, starts and stops left half done), and saying at shutdown when
the sandboxes left running end by themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from extensions.sandboxes import store
from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.locks import CULL_LOCK_ID, RECONCILE_LOCK_ID, advisory_lock, lock_key
from extensions.sandboxes.part import SandboxesPart
from extensions.sandboxes.store import ALIVE, SandboxRow


class Culler(SandboxesPart):
    """Stops idle or old sandboxes and reconciles, one replica at a time."""

    # --- culling -------------------------------------------------------------------------

    async def cull_once(self) -> int:
        """Stop sandboxes idle past ``idle_timeout`` or older than ``max_age``; one replica."""
        stopped = 0
        async with advisory_lock(self.db, CULL_LOCK_ID, wait=False) as taken:
            if not taken:
                return 0
            async with self.db.connection() as conn:
                rows = await store.list_running(conn)
            now = datetime.now(UTC)
            for row in rows:
                if row["state"] != "running" or not await self.sandboxes.alive(row):
                    continue
                why = await self._cull_reason(row, now)
                if why and await self._cull(row, why):
                    stopped += 1
        return stopped

    async def _cull(self, row: SandboxRow, why: str) -> bool:
        """Stop a sandbox found idle or too old; False if a workspace claimed it meanwhile.

        A workspace's sandbox keeps its row, as stopped, for the workspace to show. A
        warm-pool one first leaves the pool (one statement, so no workspace claims it as it
        stops); its row goes with it.
        """
        assigned = row["workspace_id"] is not None
        if not assigned:
            async with self.db.connection() as conn:
                if not await store.take_from_pool(conn, row["id"]):
                    return False
        self.log.info("sandbox %s | culling: %s", row["id"], why)
        await self.sandboxes.discard(row, keep_row=assigned)
        return True

    async def _cull_reason(self, row: SandboxRow, now: datetime) -> str | None:
        sandboxes = self.sandboxes
        started = row["started_at"] or row["created_at"]
        if sandboxes.max_age and now - started > timedelta(seconds=sandboxes.max_age):
            return f"older than {sandboxes.max_age} s"
        if not sandboxes.idle_timeout or row["workspace_id"] is None:
            return None  # a warm-pool sandbox is waiting to be used, not idle
        async with self.db.connection() as conn:
            used = await store.workspace_activity(conn, row["workspace_id"])
        last = max(row["last_activity"], used or row["last_activity"])
        try:
            health = await sandboxes.client(row).health()
        except AgentUnresponsive:
            # The health checks mark it unresponsive, then replace it (unresponsive_timeout).
            return None if sandboxes.health_interval > 0 else "its agent does not answer"
        except AgentError:
            return "its agent does not answer"
        # Terminal input, and kernels that are busy or receiving requests, are activity.
        for key in ("last_input", "last_kernel_activity"):
            if health.get(key):
                last = max(last, datetime.fromisoformat(health[key]))
        if now - last > timedelta(seconds=sandboxes.idle_timeout):
            return f"idle for more than {sandboxes.idle_timeout} s"
        return None

    async def cull_forever(self) -> None:
        """The background culling loop (each round also reconciles): logs failures, goes on."""

        async def round_() -> None:
            await self.cull_once()
            await self.reconcile()

        await self.repeat(
            round_,
            lambda: min(self.sandboxes.cull_interval, 60),
            "sandboxes | culling failed",
            wait_first=True,
        )

    # --- reattaching after a restart -------------------------------------------------------

    async def reconcile(self) -> None:
        """Match the spawner's sandboxes with the rows (at start-up, and after culling).

        The spawner reaps what no row knows (a sandbox whose workspace was deleted, or whose
        start was never recorded). It lists its sandboxes before it asks which ones are
        known, and every start records its row before it spawns: so a sandbox that another
        replica is starting has its row by then and is never taken for an orphan.

        Then, reading the rows afresh: a running row whose sandbox is gone is marked failed; a
        starting or stopping row whose state was set more than twice the start timeout ago (a
        start, a claim from the warm pool or a stop that a dead replica left half done) is
        discarded, and so at once is a starting row whose workspace's start lock nobody
        holds; rows of warm-pool sandboxes that ended are deleted, since no workspace shows
        them. Everything else is left running and reattached: its agent is reached through the
        row, its sync lease taken over.

        One replica at a time does it; the others skip the round, which would be the same.
        """
        async with advisory_lock(self.db, RECONCILE_LOCK_ID, wait=False) as taken:
            if not taken:
                return
            await self.sandboxes.spawner.reap(self._live_sandbox_ids)
            async with self.db.connection() as conn:
                rows = await store.list_running(conn)
            left_before = datetime.now(UTC) - timedelta(seconds=self.sandboxes.start_timeout * 2)
            for row in rows:
                if row["state"] in ALIVE:
                    # An unresponsive one is the health checks' to end.
                    await self.sandboxes.alive(row)
                elif row["state_since"] < left_before:
                    await self.sandboxes.discard(row)
                else:
                    await self._discard_abandoned_start(row)
            async with self.db.connection() as conn:
                await store.delete_ended_unassigned(conn)

    async def _discard_abandoned_start(self, row: SandboxRow) -> None:
        """Discard a workspace's sandbox whose start nobody carries on any more.

        A replica holds the workspace's start lock (``lock_key``) from the start's beginning
        to its end, and PostgreSQL releases it when that replica dies: a ``starting`` row
        whose lock is free was left by a replica killed mid-start. Its sandbox is stopped
        and its row deleted at once, rather than after twice the start timeout; the
        workspace reads ``stopped`` and its next use starts afresh.
        """
        if row["state"] != "starting" or row["workspace_id"] is None:
            return
        async with advisory_lock(self.db, lock_key(row["workspace_id"]), wait=False) as taken:
            if not taken:
                return
            async with self.db.connection() as conn:
                current = await store.get(conn, row["id"])
            if current is None or current["state"] != "starting":
                return  # the start ended between the two reads
            self.log.warning(
                "sandbox %s | its start was abandoned (the replica starting it is gone); "
                "stopping it",
                row["id"],
            )
            await self.sandboxes.discard(current)

    async def _live_sandbox_ids(self) -> set[str]:
        """The ids of sandboxes whose rows say they are starting, running or stopping."""
        async with self.db.connection() as conn:
            return {str(row["id"]) for row in await store.list_running(conn)}

    # --- outliving this process ------------------------------------------------------------

    async def log_survivors(self) -> None:
        """Say how many sandboxes outlive this process, and when they end by themselves."""
        async with self.db.connection() as conn:
            rows = await store.list_running(conn)
        if not rows:
            return
        lifetime = self.sandboxes.spawner.lifetime
        pooled = sum(1 for row in rows if row["workspace_id"] is None)
        ends = []
        if lifetime.idle_timeout:
            ends.append(f"after {lifetime.idle_timeout:g} s without activity")
        if pooled and lifetime.unclaimed_timeout:
            ends.append(f"in the warm pool, after {lifetime.unclaimed_timeout:g} s alone")
        if lifetime.max_age:
            last = max(row["started_at"] or row["created_at"] for row in rows)
            end = last + timedelta(seconds=lifetime.max_age)
            ends.append(f"all by {end.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC at the latest")
        self.log.info(
            "sandboxes | %d keep running after this process (%d in the warm pool); each ends "
            "itself %s, unless a platform uses or stops it first",
            len(rows),
            pooled,
            "; ".join(ends) or "only when stopped (no limits are set)",
        )
