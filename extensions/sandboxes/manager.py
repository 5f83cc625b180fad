"""``Sandboxes``: the lifecycle of every workspace's sandbox, kept in PostgreSQL.

stopped → starting → running → stopping → stopped, or failed with a reason. Any replica can
start, reach, cull or stop any sandbox: the rows say where each agent listens, and its token
is derived from a shared secret, never stored.

This module keeps the rows' state, the start and the stop, and the API other extensions call.
The rest is done by the parts that ``Sandboxes.__init__`` makes and wires (``SandboxesPart``):
``mirror`` (saves into running sandboxes), ``sync_leases`` (file sync back), ``pool`` (the
warm pool), ``culler`` (culling, reconcile), ``health`` (health checks); and by ``loader``
(a workspace's files into a new sandbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict

from traitlets import Bytes, Float, Instance, Integer, default
from traitlets.config import LoggingConfigurable

from extensions.sandboxes import loader, store
from extensions.sandboxes.agent_client import AgentClient, AgentError
from extensions.sandboxes.culler import Culler
from extensions.sandboxes.errors import SandboxFailed, SandboxUnresponsive, TooManySandboxes
from extensions.sandboxes.events import EventHub
from extensions.sandboxes.health import HealthChecks
from extensions.sandboxes.locks import advisory_lock, lock_key
from extensions.sandboxes.mirror import Mirror
from extensions.sandboxes.packages.index import AGENT_INDEX_PORT, PackageIndex
from extensions.sandboxes.packages.service import Packages
from extensions.sandboxes.pool import WarmPool
from extensions.sandboxes.spawners.aio import abandon
from extensions.sandboxes.spawners.base import (
    AgentEndpoint,
    AgentFeatures,
    AgentLifetime,
    SandboxHandle,
    Spawner,
    SpawnerError,
)
from extensions.sandboxes.start_wait import (
    ENDED_WHILE_STARTING,
    start_failure_reason,
    wait_healthy,
)
from extensions.sandboxes.store import ALIVE, SandboxRow
from extensions.sandboxes.sync_leases import SyncLeases
from extensions.workspaces.events import publish
from platform_server.db import Connection, Database
from platform_server.timefmt import isoformat


class SandboxModel(TypedDict):
    """A workspace's sandbox as the API shows it."""

    state: str
    reason: str | None
    progress: int
    message: str
    started_at: str | None
    last_activity: str | None


STOPPED: SandboxModel = {
    "state": "stopped",
    "reason": None,
    "progress": 0,
    "message": "",
    "started_at": None,
    "last_activity": None,
}


class Sandboxes(LoggingConfigurable):
    """Starts, finds, culls and stops sandboxes; the only place that calls the spawner."""

    idle_timeout = Integer(
        1800,
        help="Seconds without terminal input or API use before a sandbox is stopped. 0 disables.",
    ).tag(config=True)

    max_age = Integer(
        7200, help="Seconds after which a sandbox is stopped however busy. 0 disables."
    ).tag(config=True)

    cull_interval = Integer(
        60, help="Seconds between two checks for idle or old sandboxes (at most 60)."
    ).tag(config=True)

    start_timeout = Float(
        60.0, help="Seconds a sandbox may take to start before it is marked failed."
    ).tag(config=True)

    sync_lease = Float(
        10.0,
        help="Seconds a replica's claim on a sandbox's file sync lasts without renewal; "
        "another replica takes over after it (renewed every third of it).",
    ).tag(config=True)

    agent_request_timeout = Float(
        5.0,
        help="Seconds a sandbox's agent has to answer a request before it fails with 504 "
        "(reason sandbox_unresponsive). A request that may take longer (a kernel restart) "
        "goes on as long as the agent answers a health check within this time meanwhile. "
        "Must be more than 0.",
    ).tag(config=True)

    health_interval = Float(
        5.0,
        help="Seconds between two health checks of every running sandbox's agent (one "
        "replica at a time). 0 disables the checks, and so the unresponsive state.",
    ).tag(config=True)

    health_misses = Integer(
        3,
        help="Health checks in a row that an agent leaves unanswered (each for "
        "agent_request_timeout seconds) before its sandbox is marked unresponsive. 0 or 1: "
        "the first miss marks it.",
    ).tag(config=True)

    max_sandboxes_per_user = Integer(
        5,
        help="Most sandboxes (starting, running or unresponsive) one user's workspaces may "
        "have at once, warm-pool sandboxes not counted; starting one more answers 409 (reason "
        "too_many_sandboxes). 0 disables the cap.",
    ).tag(config=True)

    unresponsive_timeout = Float(
        60.0,
        help="Seconds a sandbox may stay unresponsive before it is killed (its row then reads "
        "failed, and the next use starts a fresh sandbox from the files in PostgreSQL). "
        "0 never kills it.",
    ).tag(config=True)

    self_stop_margin = Integer(
        300,
        help="Seconds past idle_timeout and max_age after which a sandbox's agent ends the "
        "sandbox by itself, so that sandboxes stop even with no platform running; a running "
        "platform culls them first (with a final sync). Negative values count as 0.",
    ).tag(config=True)

    pool_alone_timeout = Integer(
        300,
        help="Seconds a warm-pool sandbox (no workspace loaded yet) waits without hearing from "
        "any platform (the health checks reach it every health_interval) before it ends "
        "itself. 0 disables; so does health_interval = 0.",
    ).tag(config=True)

    pool_interval = Float(
        5.0,
        min=0.1,
        help="Seconds between two checks that the warm pool holds Spawner.warm_pool_size "
        "sandboxes (a claimed sandbox is replaced at once too). At least 0.1.",
    ).tag(config=True)

    agent_ready_timeout = Float(
        30.0,
        help="Seconds a new sandbox's agent may take to answer its first health check (within "
        "start_timeout) before the start fails. 0: a single try.",
    ).tag(config=True)

    db = Instance(Database)
    spawner = Instance(Spawner)
    events = Instance(EventHub)
    package_index = Instance(PackageIndex)

    @default("package_index")
    def _default_package_index(self) -> PackageIndex:
        return PackageIndex(parent=self)

    token_key = Bytes(help="Secret from which agent tokens are derived (shared by replicas).")

    _clients: dict[uuid.UUID, AgentClient]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clients = {}
        self.spawner.lifetime = self.agent_lifetime()
        self.mirror = Mirror(self)
        self.sync_leases = SyncLeases(self)
        self.pool = WarmPool(self)
        self.culler = Culler(self)
        self.health = HealthChecks(self)
        self.packages = Packages(self, self.package_index)
        index_port = AGENT_INDEX_PORT if self.package_index.enabled else 0
        self.spawner.features = AgentFeatures(
            workspace_env=True,
            index_port=index_port,
            spare_kernel=self.spawner.spare_kernel,
            lsp_idle_timeout=self.spawner.language_server_idle_timeout,
            lsp_memory_limit=self.spawner.language_server_memory_limit,
        )

    def agent_lifetime(self) -> AgentLifetime:
        """The limits agents keep by themselves: culling's, ``self_stop_margin`` later."""
        margin = max(self.self_stop_margin, 0)
        return AgentLifetime(
            idle_timeout=self.idle_timeout + margin if self.idle_timeout > 0 else 0,
            max_age=self.max_age + margin if self.max_age > 0 else 0,
            unclaimed_timeout=self.pool_alone_timeout if self.health_interval > 0 else 0,
        )

    # --- reaching agents -----------------------------------------------------------------

    def agent_token(self, sandbox_id: uuid.UUID) -> str:
        """The token of one sandbox's agent, the same on every replica."""
        return hmac.new(self.token_key, b"agent:" + sandbox_id.bytes, hashlib.sha256).hexdigest()

    def client(self, row: SandboxRow) -> AgentClient:
        """An HTTP/WebSocket client of the sandbox's agent."""
        client = self._clients.get(row["id"])
        if client is None:
            if row["endpoint"] is None:
                msg = "The sandbox has no agent address yet."
                raise SandboxFailed(msg)
            endpoint = AgentEndpoint(**row["endpoint"])
            client = AgentClient(
                endpoint, self.agent_token(row["id"]), timeout=self.agent_request_timeout
            )
            self._clients[row["id"]] = client
        return client

    def forget_client(self, sandbox_id: uuid.UUID) -> None:
        """Close and drop the cached client of a sandbox that stopped."""
        client = self._clients.pop(sandbox_id, None)
        if client is not None:
            client.close()

    @staticmethod
    def handle(row: SandboxRow) -> SandboxHandle:
        """The spawner's view of a row."""
        endpoint = AgentEndpoint(**(row["endpoint"] or {"unix_socket": "/nonexistent"}))
        return SandboxHandle(str(row["id"]), endpoint, row["spawner_state"])

    # --- state ---------------------------------------------------------------------------

    def model(self, row: SandboxRow | None) -> SandboxModel:
        """The JSON model of a workspace's sandbox (stopped when there is none)."""
        if row is None:
            return dict(STOPPED)  # type: ignore[return-value]
        return {
            "state": row["state"],
            "reason": row["reason"],
            "progress": row["progress"],
            "message": row["message"],
            "started_at": isoformat(row["started_at"]),
            "last_activity": isoformat(row["last_activity"]),
        }

    async def row(self, workspace_id: uuid.UUID) -> SandboxRow | None:
        """The workspace's sandbox row, if any."""
        async with self.db.connection() as conn:
            return await store.get_for_workspace(conn, workspace_id)

    async def current(self, workspace_id: uuid.UUID) -> SandboxRow | None:
        """The workspace's sandbox row, marked failed first if its sandbox died."""
        row = await self.row(workspace_id)
        if row is not None and row["state"] in ALIVE and not await self.alive(row):
            row = await self.get_row(row["id"])
        return row

    async def for_owner(self, owner_id: int, *, running_only: bool = False) -> list[SandboxRow]:
        """The sandboxes of one user's workspaces (only the running ones if ``running_only``),
        as their rows say: no agent is asked."""
        async with self.db.connection() as conn:
            return await store.for_owner(conn, owner_id, running_only=running_only)

    async def for_workspaces(self, workspace_ids: list[uuid.UUID]) -> list[SandboxRow]:
        """The sandboxes of these workspaces, as their rows say: no agent is asked."""
        async with self.db.connection() as conn:
            return await store.for_workspaces(conn, workspace_ids)

    async def get_row(self, sandbox_id: uuid.UUID) -> SandboxRow | None:
        """A sandbox row by id."""
        async with self.db.connection() as conn:
            return await store.get(conn, sandbox_id)

    async def unsynced(self, workspace_id: uuid.UUID) -> list[dict[str, Any]]:
        """Files that stay in the sandbox only, and saved files the sandbox does not have yet
        (while it runs, or does not answer)."""
        async with self.db.connection() as conn:
            files = await store.unsynced_files(conn, workspace_id)
            sandbox = await store.get_for_workspace(conn, workspace_id)
            if sandbox is not None and sandbox["state"] in ALIVE:
                files.extend(await store.pending_files(conn, workspace_id))
        return sorted(files, key=lambda file: str(file["path"]))

    async def alive(self, row: SandboxRow) -> bool:
        """Whether a running sandbox still runs; a dead one is marked failed."""
        if await self.spawner.poll(self.handle(row)):
            return True
        self.log.warning("sandbox %s | died unexpectedly", row["id"])
        self.forget_client(row["id"])
        await self.set_state(
            row["id"],
            "failed",
            "The sandbox stopped unexpectedly (killed, or out of memory). Your saved "
            "files are safe; opening a terminal starts a new sandbox.",
        )
        return False

    async def set_state(
        self, sandbox_id: uuid.UUID, state: str, reason: str | None = None
    ) -> SandboxRow | None:
        """Record a state change and tell the workspace's editors."""
        async with self.db.transaction() as conn:
            await store.set_state(conn, sandbox_id, state, reason)
            row = await store.get(conn, sandbox_id)
            if row is not None and row["workspace_id"] is not None:
                await publish(conn, row["workspace_id"], {"type": "sandbox", **self.model(row)})
        return row

    async def change_state(
        self, row: SandboxRow, old: str, new: str, reason: str | None = None
    ) -> bool:
        """Move a sandbox from ``old`` to ``new`` (keeping its start time) and tell the
        workspace's editors; False if its state was no longer ``old``."""
        async with self.db.transaction() as conn:
            if not await store.change_state(conn, row["id"], old, new, reason):
                return False
            changed = await store.get(conn, row["id"])
            if changed is not None and changed["workspace_id"] is not None:
                await publish(
                    conn, changed["workspace_id"], {"type": "sandbox", **self.model(changed)}
                )
        return True

    # --- starting ------------------------------------------------------------------------

    async def ensure_running(self, workspace_id: uuid.UUID) -> SandboxRow:
        """The workspace's running sandbox, started if needed (once, across replicas)."""
        row = await self.current(workspace_id)
        if row is not None and row["state"] == "running":
            return row
        if row is not None and row["state"] == "unresponsive":
            raise SandboxUnresponsive
        # Held until this block ends: a concurrent request (on any replica) waits here, then
        # finds the sandbox this one started.
        async with advisory_lock(self.db, lock_key(workspace_id), wait=True):
            row = await self.current(workspace_id)
            if row is not None and row["state"] == "running":
                return row
            if row is not None and row["state"] == "unresponsive":
                raise SandboxUnresponsive
            if row is not None:
                await self.discard(row)
            warm = await self.pool.claim(workspace_id)
            if warm is not None:
                return warm
            return await self.start(workspace_id)

    async def check_owner_cap(self, conn: Connection, workspace_id: uuid.UUID) -> None:
        """``TooManySandboxes`` if the workspace's owner has ``max_sandboxes_per_user``
        sandboxes in other workspaces. The owner's lock is held until ``conn``'s transaction,
        which records the new sandbox, commits: starts at once, on any replica, count in turn.
        """
        if self.max_sandboxes_per_user <= 0:
            return
        await store.lock_owner_starts(conn, workspace_id)
        live = await store.live_for_owner(conn, workspace_id)
        if len(live) < self.max_sandboxes_per_user:
            return
        names = ", ".join(f"{name!r} ({ws})" for ws, name in live[:10])
        msg = (
            f"You have {len(live)} sandboxes running, the most allowed: {names}. Stop one of "
            "them first (DELETE /api/workspaces/<uuid>/sandbox), then try again."
        )
        raise TooManySandboxes(msg)

    async def start(self, workspace_id: uuid.UUID | None) -> SandboxRow:
        """Start a sandbox for the workspace (under its ``lock_key``, see ``ensure_running``),
        or for the warm pool (``None``)."""
        sandbox_id = uuid.uuid4()
        started = time.monotonic()
        async with self.db.transaction() as conn:
            if workspace_id is not None:
                await self.check_owner_cap(conn, workspace_id)
            await store.insert_starting(conn, sandbox_id, workspace_id, type(self.spawner).__name__)
        self.log.info("sandbox %s | starting for workspace %s", sandbox_id, workspace_id)

        async def progress(percent: int, message: str) -> None:
            await self.report_progress(sandbox_id, workspace_id, percent, message)

        handle: SandboxHandle | None = None
        try:
            async with asyncio.timeout(self.start_timeout):
                handle = await self.spawner.start(
                    str(sandbox_id),
                    self.agent_token(sandbox_id),
                    progress,
                    labels={"workspace-id": str(workspace_id)} if workspace_id else None,
                )
                async with self.db.transaction() as conn:
                    await store.set_started(
                        conn, sandbox_id, store.endpoint_json(handle.endpoint), handle.state
                    )
                    row = await store.get(conn, sandbox_id)
                assert row is not None  # noqa: S101
                client = self.client(row)
                if workspace_id is None:
                    await self.spawner.hold_to_limits(handle)  # nobody waits for it
                await progress(60, "Waiting for the agent")
                load_began = datetime.now(UTC)
                loaded = await self.load_while_agent_starts(workspace_id, client, handle, progress)
            # Bounded by PackageIndex.restore_timeout, not start_timeout: large packages may
            # take minutes, and the sandbox is healthy meanwhile.
            await self.packages.restore(row, progress)
            row = await self.set_state(sandbox_id, "running")
            if workspace_id is not None:
                await self.mirror.catch_up(workspace_id, client, load_began)
        except Exception as e:
            reason = start_failure_reason(e, self.start_timeout)
            if isinstance(e, AgentError) and handle is not None:
                # The agent cut off mid-start: say so when its sandbox is gone, or going (its
                # init ends a moment after its agent).
                with contextlib.suppress(SpawnerError):
                    if await self.ended(handle, within=1.0):
                        reason = ENDED_WHILE_STARTING
            self.log.error("sandbox %s | failed to start: %s", sandbox_id, reason)
            if handle is not None:
                await self.spawner.stop(handle)
            self.forget_client(sandbox_id)
            await self.set_state(sandbox_id, "failed", reason)
            raise SandboxFailed(reason) from e
        assert row is not None  # noqa: S101
        await self.sync_leases.claim(sandbox_id)
        self.log.info(
            "sandbox %s | running in %.2fs (%d files loaded)",
            sandbox_id,
            time.monotonic() - started,
            loaded,
        )
        return row

    async def load_while_agent_starts(
        self,
        workspace_id: uuid.UUID | None,
        client: AgentClient,
        handle: SandboxHandle,
        progress: Callable[[int, str], Awaitable[None]],
    ) -> int:
        """Wait until a new sandbox's agent answers, then hold it to its limits
        (``Spawner.hold_to_limits``, for a workspace's sandbox); meanwhile load the
        workspace's files, if any, and return how many items they are.

        The tree load is sent at once: the agent's socket listens before the agent runs, so
        the request waits there while the agent starts, and reading the files from
        PostgreSQL overlaps with that start. Terminals and kernels open only after this
        returns, so user code always finds the files in place.
        """
        loading = None
        if workspace_id is not None:
            loading = asyncio.ensure_future(self._report_and_load(workspace_id, client, progress))
        try:
            await wait_healthy(
                client,
                within=self.agent_ready_timeout,
                alive=lambda: self.spawner.poll(handle),
            )
            if workspace_id is not None:
                await self.spawner.hold_to_limits(handle)
        except BaseException:
            if loading is not None:
                await abandon(loading)
            raise
        return await loading if loading is not None else 0

    async def _report_and_load(
        self,
        workspace_id: uuid.UUID,
        client: AgentClient,
        progress: Callable[[int, str], Awaitable[None]],
    ) -> int:
        await progress(80, "Loading your files")
        return await self.load_files(workspace_id, client)

    async def report_progress(
        self, sandbox_id: uuid.UUID, workspace_id: uuid.UUID | None, percent: int, message: str
    ) -> None:
        """Record how far a start is, and tell the workspace's open pages."""
        async with self.db.transaction() as conn:
            await store.set_progress(conn, sandbox_id, percent, message)
            if workspace_id is None:
                return
            await publish(
                conn,
                workspace_id,
                {"type": "sandbox", "state": "starting", "progress": percent, "message": message},
            )

    async def ended(self, handle: SandboxHandle, within: float) -> bool:
        """Whether the sandbox has ended, or ends within ``within`` seconds."""
        deadline = time.monotonic() + within
        while await self.spawner.poll(handle):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def load_files(
        self, workspace_id: uuid.UUID, client: AgentClient, under: str | None = None
    ) -> int:
        """Copy the workspace's tree (or the subtree ``under``) from PostgreSQL into the
        sandbox in one streamed request (``loader.load_files``)."""
        return await loader.load_files(self.db, workspace_id, client, under)

    # --- stopping ------------------------------------------------------------------------

    async def stop(self, workspace_id: uuid.UUID) -> None:
        """Stop the workspace's sandbox, if it has one."""
        row = await self.row(workspace_id)
        if row is not None:
            await self.discard(row, keep_row=True)

    async def workspace_deleting(self, workspace_id: uuid.UUID) -> None:
        """A workspace is about to be deleted: stop its sandbox first."""
        row = await self.row(workspace_id)
        if row is not None:
            await self.discard(row)

    async def discard(self, row: SandboxRow, *, keep_row: bool = False) -> None:
        """Stop a sandbox's processes and forget (or mark stopped) its row. An unresponsive
        one is killed at once: it could neither flush its changes nor shut down cleanly."""
        if row["state"] in {"starting", "running", "stopping", "unresponsive"}:
            if row["state"] == "running" and row["workspace_id"] is not None:
                await self.sync_leases.final_sync(row)
            hung = row["state"] == "unresponsive"
            await self.set_state(row["id"], "stopping")
            try:
                await self.spawner.stop(self.handle(row), now=hung)
            except SpawnerError:
                self.log.exception("sandbox %s | stop failed", row["id"])
            self.log.info("sandbox %s | stopped", row["id"])
        self.sync_leases.stop(row["id"])
        self.forget_client(row["id"])
        if keep_row:
            await self.set_state(row["id"], "stopped")
        else:
            async with self.db.transaction() as conn:
                await store.delete(conn, row["id"])

    # --- the parts' entry points (the contents listener, one round of each part's work) -----

    async def contents_changed(
        self, workspace_id: uuid.UUID, action: str, path: str, source_path: str | None
    ) -> None:
        """Queue a change saved through the Contents API for the workspace's sandbox.

        The change is already committed in PostgreSQL (and its event published with it), so
        the save answers at once: the workspace's queue mirrors its changes in order, in the
        background (``Mirror``). A change the sandbox cannot take is noted as pending in
        PostgreSQL (listed as not synced) and mirrored once the sandbox answers again.
        """
        self.mirror.contents_changed(workspace_id, action, path, source_path)

    async def fill_pool(self) -> int:
        """Start warm-pool sandboxes up to the pool's size (``WarmPool.fill``)."""
        return await self.pool.fill()

    async def cull_once(self) -> int:
        """Stop idle or old sandboxes; how many (``Culler.cull_once``)."""
        return await self.culler.cull_once()

    async def reconcile(self) -> None:
        """Match the spawner's sandboxes with the rows (``Culler.reconcile``)."""
        await self.culler.reconcile()

    async def check_health_once(self) -> None:
        """One round of health checks (``HealthChecks.check_once``)."""
        await self.health.check_once()

    async def close(self) -> None:
        """Stop consuming (sandboxes go on running; another replica takes their sync over)
        and mirroring (what is left is mirrored by the next catch-up or start); cancel warm-pool
        refills in progress."""
        await self.pool.close()
        await self.sync_leases.close()
        await self.mirror.close()
        await self.packages.close()
