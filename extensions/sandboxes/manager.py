"""``Sandboxes``: the lifecycle of every workspace's sandbox, kept in PostgreSQL.

stopped → starting → running → stopping → stopped, or failed with a reason. Any replica can
start, reach, cull or stop any sandbox: the rows say where each agent listens, and its token
is derived from a shared secret, never stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from urllib.parse import quote

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError
from traitlets import Bytes, Float, Instance, Integer
from traitlets.config import LoggingConfigurable

from extensions.accounts.manager import isoformat
from extensions.sandboxes import store, tarstream
from extensions.sandboxes.agent_client import AgentClient, AgentError, AgentUnresponsive
from extensions.sandboxes.events import EventHub
from extensions.sandboxes.spawners.base import (
    AgentEndpoint,
    AgentLifetime,
    SandboxHandle,
    Spawner,
    SpawnerError,
)
from extensions.sandboxes.store import SandboxRow
from extensions.sandboxes.sync import SyncConsumer
from extensions.workspaces import items
from extensions.workspaces.contents import PostgresContentsManager
from extensions.workspaces.events import publish
from platform_server.db import Connection, Database
from platform_server.errors import DomainError, NotFound

# Keys of the advisory locks that let one replica at a time cull, fill the pool, reconcile.
CULL_LOCK_ID = 7_081_542_017
POOL_LOCK_ID = 7_081_542_018
RECONCILE_LOCK_ID = 7_081_542_019
HEALTH_LOCK_ID = 7_081_542_020
# States in which a sandbox's processes run (an unresponsive one's too: it may come back).
ALIVE = frozenset({"running", "unresponsive"})
POOL_INTERVAL = 5.0
"""Seconds between two checks that the warm pool is full."""


class SandboxFailed(DomainError):
    """The sandbox could not start; the message says why."""

    status_code = 503
    reason = "sandbox_failed"


class TooManySandboxes(DomainError):
    """The owner has ``max_sandboxes_per_user`` sandboxes running; the message says which."""

    status_code = 409
    reason = "too_many_sandboxes"


class SandboxUnresponsive(DomainError):
    """The sandbox's agent does not answer (it hangs, or is stopped); it may come back."""

    status_code = 504
    reason = "sandbox_unresponsive"

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "The sandbox is not responding. Your saved files are safe: wait a moment and "
            "try again, or stop the sandbox to start a fresh one."
        )


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


def lock_key(workspace_id: uuid.UUID) -> int:
    """The advisory-lock key of one workspace's start: 64 bits of its id.

    The constant keys above (and the migrations') share this key space, but none can be a
    random (version 4) UUID's, whose seventh byte starts with 4: theirs starts with C.
    """
    return int.from_bytes(workspace_id.bytes[:8], "big", signed=True)


@asynccontextmanager
async def advisory_lock(db: Database, key: int, *, wait: bool) -> AsyncIterator[bool]:
    """Hold a PostgreSQL advisory lock through the block; yield whether it was taken: with
    ``wait``, always (once whoever holds it lets go); without, only if nobody held it.

    It is held on ``Database.dedicated_connection``, never on a pooled connection: the work
    under these locks (a sandbox start, up to ``start_timeout``; a cull round) takes pooled
    connections itself, so as many starts as the pool has connections would otherwise starve
    the pool. Session-level, so that no transaction stays open that long; closing the
    connection releases it.
    """
    async with db.dedicated_connection() as conn:
        if wait:
            await conn.execute("SELECT pg_advisory_lock(%s)", [key])
            taken = True
        else:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", [key])
            row = await cur.fetchone()
            taken = bool(row and row["taken"])
        yield taken


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

    db = Instance(Database)
    spawner = Instance(Spawner)
    events = Instance(EventHub)
    token_key = Bytes(help="Secret from which agent tokens are derived (shared by replicas).")

    _clients: dict[uuid.UUID, AgentClient]
    _consumers: dict[uuid.UUID, SyncConsumer]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clients = {}
        self._consumers = {}
        self._consumer_tasks: set[asyncio.Task[Any]] = set()
        # Saves to mirror into sandboxes, one ordered queue (and one worker) per workspace.
        self._mirror_queues: dict[uuid.UUID, asyncio.Queue[tuple[str, str, str | None]]] = {}
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        # Health checks each sandbox has missed in a row (on the replica that checks).
        self._misses: dict[uuid.UUID, int] = {}
        # Names this process in sync leases.
        self.replica = uuid.uuid4()
        self.spawner.lifetime = self.agent_lifetime()

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

    def _forget_client(self, sandbox_id: uuid.UUID) -> None:
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
        if row is not None and row["state"] in ALIVE and not await self._alive(row):
            row = await self.get_row(row["id"])
        return row

    async def for_owner(self, owner_id: int, *, running_only: bool = False) -> list[SandboxRow]:
        """The sandboxes of one user's workspaces (only the running ones if ``running_only``),
        as their rows say: no agent is asked."""
        async with self.db.connection() as conn:
            return await store.for_owner(conn, owner_id, running_only=running_only)

    async def get_row(self, sandbox_id: uuid.UUID) -> SandboxRow | None:
        """A sandbox row by id."""
        async with self.db.connection() as conn:
            return await store.get(conn, sandbox_id)

    async def _alive(self, row: SandboxRow) -> bool:
        """Whether a running sandbox still runs; a dead one is marked failed."""
        if await self.spawner.poll(self.handle(row)):
            return True
        self.log.warning("sandbox %s | died unexpectedly", row["id"])
        self._forget_client(row["id"])
        await self._set_state(
            row["id"],
            "failed",
            "The sandbox stopped unexpectedly (killed, or out of memory). Your saved "
            "files are safe; opening a terminal starts a new sandbox.",
        )
        return False

    async def _set_state(
        self, sandbox_id: uuid.UUID, state: str, reason: str | None = None
    ) -> SandboxRow | None:
        """Record a state change and tell the workspace's editors."""
        async with self.db.transaction() as conn:
            await store.set_state(conn, sandbox_id, state, reason)
            row = await store.get(conn, sandbox_id)
            if row is not None and row["workspace_id"] is not None:
                await publish(conn, row["workspace_id"], {"type": "sandbox", **self.model(row)})
        return row

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
                await self._discard(row)
            warm = await self._claim_warm(workspace_id)
            if warm is not None:
                return warm
            return await self._start(workspace_id)

    async def _check_owner_cap(self, conn: Connection, workspace_id: uuid.UUID) -> None:
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

    async def _start(self, workspace_id: uuid.UUID | None) -> SandboxRow:
        """Start a sandbox for the workspace, or for the warm pool (``None``)."""
        sandbox_id = uuid.uuid4()
        started = time.monotonic()
        async with self.db.transaction() as conn:
            if workspace_id is not None:
                await self._check_owner_cap(conn, workspace_id)
            await store.insert_starting(conn, sandbox_id, workspace_id, type(self.spawner).__name__)
        self.log.info("sandbox %s | starting for workspace %s", sandbox_id, workspace_id)

        async def progress(percent: int, message: str) -> None:
            async with self.db.transaction() as conn:
                await store.set_progress(conn, sandbox_id, percent, message)
                if workspace_id is None:
                    return
                await publish(
                    conn,
                    workspace_id,
                    {
                        "type": "sandbox",
                        "state": "starting",
                        "progress": percent,
                        "message": message,
                    },
                )

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
                        conn, sandbox_id, endpoint_json(handle.endpoint), handle.state
                    )
                    row = await store.get(conn, sandbox_id)
                assert row is not None  # noqa: S101
                client = self.client(row)
                await progress(60, "Waiting for the agent")
                await wait_healthy(client)
                loaded = 0
                if workspace_id is not None:
                    await progress(80, "Loading your files")
                    load_began = datetime.now(UTC)
                    loaded = await self.load_files(workspace_id, client)
                row = await self._set_state(sandbox_id, "running")
                if workspace_id is not None:
                    await self._catch_up(workspace_id, client, load_began)
        except Exception as e:
            reason = start_failure_reason(e, self.start_timeout)
            self.log.error("sandbox %s | failed to start: %s", sandbox_id, reason)
            if handle is not None:
                await self.spawner.stop(handle)
            self._forget_client(sandbox_id)
            await self._set_state(sandbox_id, "failed", reason)
            raise SandboxFailed(reason) from e
        assert row is not None  # noqa: S101
        await self._claim_sync(sandbox_id)
        self.log.info(
            "sandbox %s | running in %.2fs (%d files loaded)",
            sandbox_id,
            time.monotonic() - started,
            loaded,
        )
        return row

    async def load_files(
        self, workspace_id: uuid.UUID, client: AgentClient, under: str | None = None
    ) -> int:
        """Copy the workspace's tree (or the subtree ``under``) from PostgreSQL into the
        sandbox in one streamed request."""
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        count = 0

        async def produce() -> None:
            nonlocal count
            tar, current = tarstream.TarWriter(), None
            try:
                async for path, kind, size, modified, data in self._tree(workspace_id, under):
                    if path != current:
                        await chunks.put(tar.item(path, kind, size, modified))
                        current = path
                        count += 1
                    if data:
                        await chunks.put(data)
                await chunks.put(tar.end())
            finally:
                await chunks.put(None)

        async def body(write: Any) -> None:
            while (chunk := await chunks.get()) is not None:
                await write(chunk)

        producer = asyncio.create_task(produce())
        try:
            await client.request("PUT", "/api/tree", body_producer=body, request_timeout=300)
        finally:
            producer.cancel()
        return count

    async def _tree(
        self, workspace_id: uuid.UUID, under: str | None
    ) -> AsyncIterator[tuple[str, str, int, datetime, bytes | None]]:
        """``(path, type, size, last_modified, part)`` of every item, in path order, a row per
        part of each file's content (one with ``None`` for a directory or an empty file).

        The cursor lives as long as the sandbox takes the stream: on a connection of its own,
        so that many loads at once never leave requests without a pooled connection."""
        async with (
            self.db.dedicated_connection() as conn,
            conn.transaction(),
            conn.cursor(name="tree") as cursor,
        ):
            cursor.itersize = 16  # parts are up to 1 MB: a few at a time in memory
            await cursor.execute(
                """SELECT i.path, i.type, i.size, i.last_modified, p.data
                   FROM workspace_items i
                   LEFT JOIN content_parts p ON p.content_id = i.content_id
                   WHERE i.workspace_id = %(ws)s
                     AND (%(under)s::text IS NULL OR i.path = %(under)s
                          OR (i.path >= %(under)s || '/' AND i.path < %(under)s || '0'))
                   ORDER BY i.path, p.seq""",
                {"ws": workspace_id, "under": under},
                binary=True,  # bytea as is, not as hex text
            )
            async for row in cursor:
                yield row["path"], row["type"], row["size"], row["last_modified"], row["data"]

    # --- mirroring saves into running sandboxes ---------------------------------------------

    async def contents_changed(
        self, workspace_id: uuid.UUID, action: str, path: str, source_path: str | None
    ) -> None:
        """Queue a change saved through the Contents API for the workspace's sandbox.

        The change is already committed in PostgreSQL (and its event published with it), so
        the save answers at once: the workspace's queue mirrors its changes in order, in the
        background. A change the sandbox cannot take is noted as pending in PostgreSQL
        (listed as not synced) and mirrored once the sandbox answers again.
        """
        queue = self._mirror_queues.get(workspace_id)
        if queue is None:
            queue = self._mirror_queues[workspace_id] = asyncio.Queue()
            task = asyncio.create_task(self._mirror_changes(workspace_id, queue))
            self._mirror_tasks.add(task)
            task.add_done_callback(self._mirror_tasks.discard)
        queue.put_nowait((action, path, source_path))

    async def _mirror_changes(
        self, workspace_id: uuid.UUID, queue: asyncio.Queue[tuple[str, str, str | None]]
    ) -> None:
        """Mirror one workspace's queued changes in order; ends when the queue is empty."""
        while True:
            action, path, source_path = await queue.get()
            try:
                await self._mirror_change(workspace_id, action, path, source_path)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("workspace %s | mirroring %s failed", workspace_id, action)
            if queue.empty():  # no await since: a change queued now finds no queue, makes one
                del self._mirror_queues[workspace_id]
                return

    async def _mirror_change(
        self, workspace_id: uuid.UUID, action: str, path: str, source_path: str | None
    ) -> None:
        row = await self.row(workspace_id)
        if row is None or row["state"] not in ALIVE:
            return  # nothing runs; a sandbox that is starting catches up when it runs
        touched = [path] if source_path is None or action != "rename" else [source_path, path]
        if row["state"] == "unresponsive":
            await self._note_pending(workspace_id, touched)
            return
        client = self.client(row)
        try:
            if action == "rename" and source_path is not None:
                await client.request(
                    "POST",
                    "/api/files-rename",
                    json_body={"from": source_path, "to": path, "overwrite": True},
                    expect=(204, 404),
                )
            await self._mirror(workspace_id, path, client)
        except AgentError as e:
            self.log.warning("sandbox %s | could not mirror %s: %s", row["id"], action, e)
            await self._note_pending(workspace_id, touched)

    async def _note_pending(self, workspace_id: uuid.UUID, paths: list[str]) -> None:
        """Note stored versions the sandbox lacks, for ``_mirror_pending``."""
        async with self.db.transaction() as conn:
            await store.note_pending(conn, workspace_id, paths)

    async def _mirror_pending(self, row: SandboxRow) -> None:
        """Mirror the changes noted as pending while the sandbox did not answer, in the
        order they were noted; stop at the first the sandbox cannot take."""
        workspace_id = row["workspace_id"]
        if workspace_id is None:
            return
        async with self.db.connection() as conn:
            pending = await store.pending(conn, workspace_id)
        client = self.client(row)
        for path, noted_at in pending:
            try:
                await self._mirror(workspace_id, path, client)
            except AgentError as e:
                self.log.warning("sandbox %s | could not catch up %s: %s", row["id"], path, e)
                return
            async with self.db.transaction() as conn:
                await store.clear_pending(conn, workspace_id, path, noted_at)
        if pending:
            self.log.info("sandbox %s | caught up %d pending changes", row["id"], len(pending))

    async def _catch_up(
        self, workspace_id: uuid.UUID, client: AgentClient, load_began: datetime
    ) -> None:
        """Mirror the saves that landed while the files were loading: the sandbox was not
        running yet, so ``contents_changed`` left them out. (Mirroring is idempotent, hence
        the margin for clock differences.)"""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                """SELECT path FROM workspace_items
                   WHERE workspace_id = %s AND last_modified >= %s ORDER BY path""",
                [workspace_id, load_began - timedelta(seconds=1)],
            )
            changed = [row["path"] for row in await cur.fetchall()]
            # Noted for an earlier sandbox of the workspace: this one has loaded them.
            await store.clear_pending(conn, workspace_id, None, load_began)
        for path in changed:
            try:
                await self._mirror(workspace_id, path, client)
            except AgentError as e:
                self.log.warning("workspace %s | could not catch up %s: %s", workspace_id, path, e)

    async def _mirror(self, workspace_id: uuid.UUID, path: str, client: AgentClient) -> None:
        """Make ``path`` in the sandbox what it is in PostgreSQL."""
        item: items.ContentRow | None
        async with self.db.connection() as conn:
            try:
                item = await items.get_item(conn, workspace_id, path, content=True)
            except NotFound:
                item = None
        url = "/api/files/" + quote(path)
        if item is None:
            await client.request("DELETE", url, expect=(204, 404))
        elif item["type"] == "directory":
            await self.load_files(workspace_id, client, under=path)
        else:
            await client.request("PUT", url, body=item["content"], expect=(200, 201, 204))

    async def workspace_deleting(self, workspace_id: uuid.UUID) -> None:
        """A workspace is about to be deleted: stop its sandbox first."""
        row = await self.row(workspace_id)
        if row is not None:
            await self._discard(row)

    async def push_back(self, workspace_id: uuid.UUID, path: str) -> None:
        """Give the sandbox the stored version of ``path`` (its own change lost)."""
        row = await self.row(workspace_id)
        if row is None or row["state"] != "running":
            return
        try:
            await self._mirror(workspace_id, path, self.client(row))
        except AgentError as e:
            self.log.warning("sandbox %s | could not push back %s: %s", row["id"], path, e)
            await self._note_pending(workspace_id, [path])

    # --- file sync (sandbox → PostgreSQL) ------------------------------------------------------

    def _consumer(self, row: SandboxRow) -> SyncConsumer:
        assert row["workspace_id"] is not None  # noqa: S101  (only assigned sandboxes sync)
        return SyncConsumer(
            db=self.db,
            workspace_id=row["workspace_id"],
            client=self.client(row),
            limits=PostgresContentsManager(parent=self, db=self.db, log=self.log),
            push_back=self.push_back,
            log=self.log,
        )

    def _run_consumer(self, row: SandboxRow) -> None:
        """Consume the sandbox's changes in the background (one consumer per sandbox here)."""
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
        self._consumer_tasks.add(task)
        task.add_done_callback(self._consumer_tasks.discard)

    def _stop_consumer(self, sandbox_id: uuid.UUID) -> None:
        consumer = self._consumers.pop(sandbox_id, None)
        if consumer is not None:
            consumer.close()

    async def _claim_sync(self, sandbox_id: uuid.UUID | None = None) -> None:
        """Take the sync leases nobody holds (or just this sandbox's) and consume them."""
        async with self.db.transaction() as conn:
            rows = await store.claim_sync(conn, self.replica, self.sync_lease, sandbox_id)
        for row in rows:
            self._run_consumer(row)

    async def _final_sync(self, row: SandboxRow) -> None:
        """Before a stop: every change made in the sandbox reaches PostgreSQL (bounded)."""
        consumer = self._consumers.get(row["id"])
        if consumer is None:
            # Another replica (or none) consumes it: take the channel over for the flush.
            self._run_consumer(row)
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

    async def sync_forever(self) -> None:
        """Renew this replica's sync leases and take over expired ones, every third of a lease."""
        while True:
            try:
                await self._claim_sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("sandboxes | claiming file sync failed")
            await asyncio.sleep(self.sync_lease / 3)

    async def log_survivors(self) -> None:
        """Say how many sandboxes outlive this process, and when they end by themselves."""
        async with self.db.connection() as conn:
            rows = await store.list_running(conn)
        if not rows:
            return
        lifetime = self.spawner.lifetime
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

    async def close(self) -> None:
        """Stop consuming (sandboxes go on running; another replica takes their sync over)
        and mirroring (what is left is mirrored by the next catch-up or start)."""
        for sandbox_id in list(self._consumers):
            self._stop_consumer(sandbox_id)
        for task in list(self._mirror_tasks):
            task.cancel()
        await asyncio.gather(*self._mirror_tasks, return_exceptions=True)
        self._mirror_queues.clear()
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE sandboxes SET sync_owner = NULL WHERE sync_owner = %s", [self.replica]
            )

    async def unsynced(self, workspace_id: uuid.UUID) -> list[dict[str, Any]]:
        """Files that stay in the sandbox only, and saved files the sandbox does not have yet
        (while it runs, or does not answer)."""
        async with self.db.connection() as conn:
            files = await store.unsynced_files(conn, workspace_id)
            sandbox = await store.get_for_workspace(conn, workspace_id)
            if sandbox is not None and sandbox["state"] in ALIVE:
                files.extend(await store.pending_files(conn, workspace_id))
        return sorted(files, key=lambda file: str(file["path"]))

    # --- stopping ------------------------------------------------------------------------

    async def stop(self, workspace_id: uuid.UUID) -> None:
        """Stop the workspace's sandbox, if it has one."""
        row = await self.row(workspace_id)
        if row is not None:
            await self._discard(row, keep_row=True)

    async def _discard(self, row: SandboxRow, *, keep_row: bool = False) -> None:
        """Stop a sandbox's processes and forget (or mark stopped) its row. An unresponsive
        one is killed at once: it could neither flush its changes nor shut down cleanly."""
        if row["state"] in {"starting", "running", "stopping", "unresponsive"}:
            if row["state"] == "running" and row["workspace_id"] is not None:
                await self._final_sync(row)
            hung = row["state"] == "unresponsive"
            await self._set_state(row["id"], "stopping")
            try:
                await self.spawner.stop(self.handle(row), now=hung)
            except SpawnerError:
                self.log.exception("sandbox %s | stop failed", row["id"])
            self.log.info("sandbox %s | stopped", row["id"])
        self._stop_consumer(row["id"])
        self._forget_client(row["id"])
        if keep_row:
            await self._set_state(row["id"], "stopped")
        else:
            async with self.db.transaction() as conn:
                await store.delete(conn, row["id"])

    # --- the warm pool ---------------------------------------------------------------------

    async def _claim_warm(self, workspace_id: uuid.UUID) -> SandboxRow | None:
        """Give the workspace a started, unassigned sandbox, loaded with its files; None if
        the pool is empty (or the claimed sandbox failed, or did not take the files within
        ``start_timeout``: it is then discarded)."""
        async with self.db.transaction() as conn:
            await self._check_owner_cap(conn, workspace_id)
            row = await store.claim_pooled(conn, workspace_id)
        if row is None:
            return None
        started = time.monotonic()
        try:
            if not await self.spawner.poll(self.handle(row)):
                msg = "the pooled sandbox is gone"
                raise AgentError(msg)
            load_began = datetime.now(UTC)
            async with asyncio.timeout(self.start_timeout):
                loaded = await self.load_files(workspace_id, self.client(row))
        except (AgentError, TimeoutError) as e:
            why = str(e) or f"no files loaded within {self.start_timeout:g} s"
            self.log.warning("sandbox %s | pooled sandbox unusable (%s)", row["id"], why)
            await self._discard(row)
            return None
        row = await self._set_state(row["id"], "running") or row
        await self._catch_up(workspace_id, self.client(row), load_began)
        await self._claim_sync(row["id"])
        self.log.info(
            "sandbox %s | claimed from the warm pool in %.3fs (%d files loaded)",
            row["id"],
            time.monotonic() - started,
            loaded,
        )
        self._refill_soon()
        return row

    def _refill_soon(self) -> None:
        task = asyncio.create_task(self.fill_pool())
        self._consumer_tasks.add(task)
        task.add_done_callback(self._consumer_tasks.discard)

    async def fill_pool(self) -> int:
        """Start pool sandboxes until there are ``Spawner.warm_pool_size``; one replica at a
        time. Returns how many were started."""
        wanted = self.spawner.warm_pool_size
        if wanted <= 0 or wanted <= await self._pool_size():  # the usual case: no lock
            return 0
        started = 0
        async with advisory_lock(self.db, POOL_LOCK_ID, wait=False) as taken:
            if not taken:
                return 0
            for _ in range(wanted - await self._pool_size()):
                try:
                    await self._start(None)
                    started += 1
                except SandboxFailed:
                    break  # logged by _start; the next round tries again
        return started

    async def _pool_size(self) -> int:
        async with self.db.connection() as conn:
            return await store.count_pool(conn)

    async def pool_forever(self) -> None:
        """Keep the warm pool full: logs failures and goes on."""
        while True:
            try:
                await self.fill_pool()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("sandboxes | filling the warm pool failed")
            await asyncio.sleep(POOL_INTERVAL)

    # --- reattaching after a restart ---------------------------------------------------------

    async def reconcile(self) -> None:
        """Match the spawner's sandboxes with the rows (at start-up, and after culling).

        The spawner reaps what no row knows (a sandbox whose workspace was deleted, or whose
        start was never recorded). It lists its sandboxes before it asks which ones are
        known, and every start records its row before it spawns: so a sandbox that another
        replica is starting has its row by then and is never taken for an orphan.

        Then, reading the rows afresh: a running row whose sandbox is gone is marked failed; a
        starting or stopping row whose state was set more than twice the start timeout ago (a
        start, a claim from the warm pool or a stop that a dead replica left half done) is
        discarded; rows of warm-pool sandboxes that ended are deleted, since no workspace shows
        them. Everything else is left running and reattached: its agent is reached through the
        row, its sync lease taken over.

        One replica at a time does it; the others skip the round, which would be the same.
        """
        async with advisory_lock(self.db, RECONCILE_LOCK_ID, wait=False) as taken:
            if not taken:
                return
            await self.spawner.reap(self._live_sandbox_ids)
            async with self.db.connection() as conn:
                rows = await store.list_running(conn)
            left_before = datetime.now(UTC) - timedelta(seconds=self.start_timeout * 2)
            for row in rows:
                if row["state"] in ALIVE:
                    await self._alive(row)  # an unresponsive one is the health checks' to end
                elif row["state_since"] < left_before:
                    await self._discard(row)
            async with self.db.connection() as conn:
                await store.delete_ended_unassigned(conn)

    async def _live_sandbox_ids(self) -> set[str]:
        """The ids of sandboxes whose rows say they are starting, running or stopping."""
        async with self.db.connection() as conn:
            return {str(row["id"]) for row in await store.list_running(conn)}

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
                if row["state"] != "running" or not await self._alive(row):
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
        await self._discard(row, keep_row=assigned)
        return True

    async def _cull_reason(self, row: SandboxRow, now: datetime) -> str | None:
        started = row["started_at"] or row["created_at"]
        if self.max_age and now - started > timedelta(seconds=self.max_age):
            return f"older than {self.max_age} s"
        if not self.idle_timeout or row["workspace_id"] is None:
            return None  # a warm-pool sandbox is waiting to be used, not idle
        async with self.db.connection() as conn:
            used = await store.workspace_activity(conn, row["workspace_id"])
        last = max(row["last_activity"], used or row["last_activity"])
        try:
            health = await self.client(row).health()
        except AgentUnresponsive:
            # The health checks mark it unresponsive, then replace it (unresponsive_timeout).
            return None if self.health_interval > 0 else "its agent does not answer"
        except AgentError:
            return "its agent does not answer"
        # Terminal input, and kernels that are busy or receiving requests, are activity.
        for key in ("last_input", "last_kernel_activity"):
            if health.get(key):
                last = max(last, datetime.fromisoformat(health[key]))
        if now - last > timedelta(seconds=self.idle_timeout):
            return f"idle for more than {self.idle_timeout} s"
        return None

    async def cull_forever(self) -> None:
        """The background culling loop: logs failures and goes on."""
        while True:
            await asyncio.sleep(min(self.cull_interval, 60))
            try:
                await self.cull_once()
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("sandboxes | culling failed")

    # --- health checks -----------------------------------------------------------------------

    async def check_health_once(self) -> None:
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
                *(self._check_health(row, row["workspace_id"] in with_pending) for row in rows),
                return_exceptions=True,
            )
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, Exception):
                    self.log.error("sandbox %s | health check failed: %r", row["id"], result)

    async def _check_health(self, row: SandboxRow, has_pending: bool) -> None:
        sandbox_id = row["id"]
        if row["endpoint"] is None:
            return
        try:
            await self.client(row).health(request_timeout=self.agent_request_timeout)
        except AgentError as e:
            if not isinstance(e, AgentUnresponsive) and not await self._alive(row):
                self._misses.pop(sandbox_id, None)
                return  # it died: marked failed
            await self._missed(row, e)
            return
        self._misses.pop(sandbox_id, None)
        if row["state"] == "unresponsive":
            if not await self._change_state(row, "unresponsive", "running"):
                return
            self.log.info("sandbox %s | answers again", sandbox_id)
            has_pending = True
        if has_pending:
            await self._mirror_pending(row)

    async def _missed(self, row: SandboxRow, error: AgentError) -> None:
        sandbox_id = row["id"]
        misses = self._misses[sandbox_id] = self._misses.get(sandbox_id, 0) + 1
        if row["state"] == "running" and misses >= self.health_misses:
            self.log.warning(
                "sandbox %s | unresponsive: %d health checks unanswered (%s)",
                sandbox_id,
                misses,
                error,
            )
            await self._change_state(
                row,
                "running",
                "unresponsive",
                "The sandbox is not responding. Your saved files are safe in the workspace; "
                "changes made in the sandbox reach it if the sandbox recovers.",
            )
        elif row["state"] == "unresponsive" and self.unresponsive_timeout > 0:
            hung_for = (datetime.now(UTC) - row["state_since"]).total_seconds()
            if hung_for >= self.unresponsive_timeout:
                await self._replace(row, hung_for)

    async def _replace(self, row: SandboxRow, hung_for: float) -> None:
        """Kill a sandbox unresponsive for too long; the next use starts a fresh one."""
        if not await self._change_state(row, "unresponsive", "stopping"):
            return
        self.log.warning(
            "sandbox %s | killed: unresponsive for %.0f s (unsynced changes in it are lost)",
            row["id"],
            hung_for,
        )
        self._misses.pop(row["id"], None)
        self._stop_consumer(row["id"])
        self._forget_client(row["id"])
        try:
            await self.spawner.stop(self.handle(row), now=True)
        except SpawnerError:
            self.log.exception("sandbox %s | stop failed", row["id"])
        await self._set_state(
            row["id"],
            "failed",
            f"The sandbox stopped responding and was stopped after {self.unresponsive_timeout:g}"
            " s. Your saved files are safe; opening a terminal starts a new sandbox (changes "
            "made in the old one that had not reached the workspace are lost).",
        )

    async def _change_state(
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

    async def health_forever(self) -> None:
        """The background health-check loop: logs failures and goes on."""
        if self.health_interval <= 0:
            return
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                await self.check_health_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("sandboxes | health checks failed")


def endpoint_json(endpoint: AgentEndpoint) -> dict[str, Any]:
    """An endpoint as stored in the row."""
    if endpoint.unix_socket is not None:
        return {"unix_socket": endpoint.unix_socket}
    return {"host": endpoint.host, "port": endpoint.port}


async def wait_healthy(client: AgentClient, within: float = 30.0) -> None:
    """Poll the agent's health until it answers, for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            await client.health(request_timeout=2.0)
            return
        except AgentError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def start_failure_reason(error: BaseException, timeout: float) -> str:
    """Words for the user about why a start failed."""
    if isinstance(error, TimeoutError):
        return f"The sandbox did not start within {timeout:.0f} s."
    if isinstance(error, SpawnerError | AgentError):
        return str(error)
    return f"The sandbox failed to start ({type(error).__name__}); see the server log."
