"""``Packages``: the part of the ``Sandboxes`` service that runs this replica's package
channels and puts a workspace's recorded packages back into its new sandbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from extensions.sandboxes.agent_client import AgentError
from extensions.sandboxes.packages import store
from extensions.sandboxes.packages.index import PackageIndex
from extensions.sandboxes.packages.relay import PackageRelay
from extensions.sandboxes.part import SandboxesPart
from extensions.sandboxes.store import SandboxRow
from extensions.workspaces.events import publish

if TYPE_CHECKING:
    from extensions.sandboxes.manager import Sandboxes

Progress = Callable[[int, str], Awaitable[None]]
NAMES_SHOWN = 8
CONNECT_WAIT = 10.0


def describe(rows: list[store.PackageRow]) -> str:
    """``numpy 2.1, requests 2.32 and 3 more``."""
    names = [f"{r['display_name']} {r['version']}" for r in rows[:NAMES_SHOWN]]
    more = len(rows) - NAMES_SHOWN
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


class Packages(SandboxesPart):
    """This replica's package channels (one per sandbox whose file sync it holds, and the
    sandboxes it is starting), and restoring packages into new sandboxes."""

    def __init__(self, sandboxes: Sandboxes, index: PackageIndex) -> None:
        super().__init__(sandboxes)
        self.index = index
        self._relays: dict[uuid.UUID, PackageRelay] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, row: SandboxRow) -> PackageRelay | None:
        """Serve the sandbox's package channel in the background (once per sandbox here)."""
        if not self.index.enabled or row["workspace_id"] is None:
            return None
        if (relay := self._relays.get(row["id"])) is not None:
            return relay
        relay = PackageRelay(
            index=self.index,
            db=self.db,
            workspace_id=row["workspace_id"],
            client=self.sandboxes.client(row),
            log=self.log,
        )
        self._relays[row["id"]] = relay

        async def serve() -> None:
            try:
                await relay.run()
            except asyncio.CancelledError:
                raise
            except (AgentError, OSError, StreamClosedError, WebSocketClosedError) as e:
                self.log.debug("sandbox %s | package channel ended: %s", row["id"], e)
            except Exception:
                self.log.exception("sandbox %s | package channel failed", row["id"])
            finally:
                if self._relays.get(row["id"]) is relay:
                    del self._relays[row["id"]]

        task = asyncio.create_task(serve())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return relay

    def stop(self, sandbox_id: uuid.UUID) -> None:
        """Close the sandbox's package channel here."""
        relay = self._relays.pop(sandbox_id, None)
        if relay is not None:
            relay.close()

    async def restore(self, row: SandboxRow, progress: Progress) -> None:
        """Install the workspace's recorded packages into its new sandbox, saying which in the
        start progress. What cannot be installed is said (event and log), and stays recorded:
        the next sandbox tries again. Never fails the start."""
        workspace_id = row["workspace_id"]
        if not self.index.enabled or workspace_id is None:
            return
        async with self.db.connection() as conn:
            rows = await store.recorded(conn, workspace_id)
        if not rows:
            return
        await progress(90, f"Installing your packages: {describe(rows)}")
        relay = self.run(row)
        if relay is not None:
            try:
                await asyncio.wait_for(relay.connected.wait(), CONNECT_WAIT)
            except TimeoutError:
                self.log.warning("sandbox %s | package channel did not open", row["id"])
        body = {
            "packages": [
                {"name": r["display_name"], "version": r["version"], "source": r["source"]}
                for r in rows
            ]
        }
        try:
            result = await self.sandboxes.client(row).json(
                "POST",
                "/api/packages/install",
                json_body=body,
                request_timeout=self.index.restore_timeout,
            )
            failed = result.get("failed") or []
        except (AgentError, TimeoutError) as e:
            failed = [{"name": describe(rows), "reason": str(e) or "no answer"}]
        if failed:
            await self._report_failures(row["id"], workspace_id, failed)

    async def _report_failures(
        self, sandbox_id: uuid.UUID, workspace_id: uuid.UUID, failed: list[dict[str, str]]
    ) -> None:
        text = "; ".join(f"{f.get('name')}: {f.get('reason')}" for f in failed)
        message = (
            f"Some of your packages could not be installed again: {text}. They stay recorded "
            "and the next sandbox tries again; install them yourself with pip, or forget them "
            "(DELETE /api/workspaces/<uuid>/packages/<name>)."
        )
        self.log.warning("sandbox %s | %s", sandbox_id, message)
        async with self.db.transaction() as conn:
            await publish(conn, workspace_id, {"type": "packages", "message": message})

    async def close(self) -> None:
        """Close every channel here, and the cache."""
        for sandbox_id in list(self._relays):
            self.stop(sandbox_id)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.index.close()
