"""Mirroring, PostgreSQL → sandbox: saves made through the Contents API reach the workspace's
running sandbox, in order, after the save has answered; what a sandbox cannot take waits in
``pending_mirrors`` until it answers again."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

from extensions.sandboxes import store
from extensions.sandboxes.agent_client import AgentClient, AgentError
from extensions.sandboxes.part import SandboxesPart
from extensions.sandboxes.store import ALIVE, SandboxRow
from extensions.workspaces import items
from platform_server.errors import NotFound

if TYPE_CHECKING:
    from extensions.sandboxes.manager import Sandboxes

# One saved change: (action, path, source_path).
Change = tuple[str, str, str | None]


class Mirror(SandboxesPart):
    """Makes paths in running sandboxes what they are in PostgreSQL."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        super().__init__(sandboxes)
        # Saves to mirror into sandboxes, one ordered queue (and one worker) per workspace.
        self._queues: dict[uuid.UUID, asyncio.Queue[Change]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def contents_changed(
        self, workspace_id: uuid.UUID, action: str, path: str, source_path: str | None
    ) -> None:
        """Queue a committed change for the workspace's sandbox (see
        ``Sandboxes.contents_changed``)."""
        queue = self._queues.get(workspace_id)
        if queue is None:
            queue = self._queues[workspace_id] = asyncio.Queue()
            task = asyncio.create_task(self._mirror_changes(workspace_id, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait((action, path, source_path))

    async def _mirror_changes(self, workspace_id: uuid.UUID, queue: asyncio.Queue[Change]) -> None:
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
                del self._queues[workspace_id]
                return

    async def _mirror_change(
        self, workspace_id: uuid.UUID, action: str, path: str, source_path: str | None
    ) -> None:
        row = await self.sandboxes.row(workspace_id)
        if row is None or row["state"] not in ALIVE:
            return  # nothing runs; a sandbox that is starting catches up when it runs
        touched = [path] if source_path is None or action != "rename" else [source_path, path]
        if row["state"] == "unresponsive":
            await self.note_pending(workspace_id, touched)
            return
        client = self.sandboxes.client(row)
        try:
            if action == "rename" and source_path is not None:
                await client.request(
                    "POST",
                    "/api/files-rename",
                    json_body={"from": source_path, "to": path, "overwrite": True},
                    expect=(204, 404),
                )
            await self.mirror(workspace_id, path, client)
        except AgentError as e:
            self.log.warning("sandbox %s | could not mirror %s: %s", row["id"], action, e)
            await self.note_pending(workspace_id, touched)

    async def note_pending(self, workspace_id: uuid.UUID, paths: list[str]) -> None:
        """Note stored versions the sandbox lacks, for ``mirror_pending``."""
        async with self.db.transaction() as conn:
            await store.note_pending(conn, workspace_id, paths)

    async def mirror_pending(self, row: SandboxRow) -> None:
        """Mirror the changes noted as pending while the sandbox did not answer, in the
        order they were noted; stop at the first the sandbox cannot take."""
        workspace_id = row["workspace_id"]
        if workspace_id is None:
            return
        async with self.db.connection() as conn:
            pending = await store.pending(conn, workspace_id)
        client = self.sandboxes.client(row)
        for path, noted_at in pending:
            try:
                await self.mirror(workspace_id, path, client)
            except AgentError as e:
                self.log.warning("sandbox %s | could not catch up %s: %s", row["id"], path, e)
                return
            async with self.db.transaction() as conn:
                await store.clear_pending(conn, workspace_id, path, noted_at)
        if pending:
            self.log.info("sandbox %s | caught up %d pending changes", row["id"], len(pending))

    async def catch_up(
        self, workspace_id: uuid.UUID, client: AgentClient, load_began: datetime
    ) -> None:
        """Mirror the saves that landed while the files were loading: the sandbox was not
        running yet, so ``contents_changed`` left them out. (Mirroring is idempotent, hence
        the margin for clock differences.)"""
        async with self.db.transaction() as conn:
            changed = await store.changed_since(
                conn, workspace_id, load_began - timedelta(seconds=1)
            )
            # Noted for an earlier sandbox of the workspace: this one has loaded them.
            await store.clear_pending(conn, workspace_id, None, load_began)
        for path in changed:
            try:
                await self.mirror(workspace_id, path, client)
            except AgentError as e:
                self.log.warning("workspace %s | could not catch up %s: %s", workspace_id, path, e)

    async def mirror(self, workspace_id: uuid.UUID, path: str, client: AgentClient) -> None:
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
            await self.sandboxes.load_files(workspace_id, client, under=path)
        else:
            await client.request("PUT", url, body=item["content"], expect=(200, 201, 204))

    async def push_back(self, workspace_id: uuid.UUID, path: str) -> None:
        """Give the sandbox the stored version of ``path`` (its own change lost)."""
        row = await self.sandboxes.row(workspace_id)
        if row is None or row["state"] != "running":
            return
        try:
            await self.mirror(workspace_id, path, self.sandboxes.client(row))
        except AgentError as e:
            self.log.warning("sandbox %s | could not push back %s: %s", row["id"], path, e)
            await self.note_pending(workspace_id, [path])

    async def close(self) -> None:
        """Stop mirroring: what is left is mirrored by the next catch-up or start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queues.clear()
