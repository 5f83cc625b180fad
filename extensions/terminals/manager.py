"""``Terminals``: create, list and delete a workspace's terminals through its agent."""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict
from urllib.parse import quote

from traitlets import Instance, Integer
from traitlets.config import LoggingConfigurable

from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.errors import SandboxUnavailable, SandboxUnresponsive
from extensions.sandboxes.locks import advisory_lock
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.store import SandboxRow
from platform_server.errors import Conflict, DomainError, InvalidInput, NotFound

# Statuses of an agent that refuses a request's input (not its credentials: 401 and 403 mean
# the platform and the agent disagree, which the client cannot fix).
AGENT_INPUT_ERRORS = frozenset({400, 404, 413, 422})


class TerminalModel(TypedDict):
    """jupyter_server's terminal model."""

    name: str
    last_activity: str


# Advisory-lock keys of one user's terminal opens: this base plus the user's id (mod 2**32).
# Its high bytes spell "term", so it meets no constant key nor a workspace's (manager.lock_key).
TERMINALS_LOCK_BASE = 0x7465726D << 32


class TooManyTerminals(Conflict):
    """The user has ``max_terminals_per_user`` terminals open already."""

    reason = "too_many_terminals"


def terminal_model(raw: dict[str, Any]) -> TerminalModel:
    """The Jupyter model of an agent's terminal record."""
    return {"name": str(raw["name"]), "last_activity": str(raw.get("last_activity", ""))}


def no_terminal(name: str) -> NotFound:
    """The 404 of a terminal that does not exist."""
    return NotFound(f"No terminal named '{name[:64]}'.")


class Terminals(LoggingConfigurable):
    """Terminals live in the agent; this maps Jupyter's API onto it."""

    max_terminals_per_user = Integer(
        20,
        help="Most terminals one user may have open at once, over all their workspaces; "
        "more answers 409. 0 disables the cap.",
    ).tag(config=True)

    sandboxes = Instance(Sandboxes, help="The sandboxes service (``PlatformApp.wire_services``).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # One waiter per user and process on PostgreSQL's lock (each holds a connection).
        self._opening: weakref.WeakValueDictionary[int, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def create(
        self, workspace_id: uuid.UUID, owner_id: int, body: dict[str, Any]
    ) -> TerminalModel:
        """Open a terminal (``{name?, cwd?}``), starting the sandbox if needed."""
        options = {key: body[key] for key in ("name", "cwd") if body.get(key) is not None}
        if not all(isinstance(value, str) and value for value in options.values()):
            msg = "name and cwd must be non-empty strings."
            raise InvalidInput(msg)
        # Checked first so that a user at the cap starts no sandbox; then again under the
        # user's lock, where it counts: opens at once (on any replica) cannot all pass it.
        await self._check_cap(owner_id)
        row = await self.sandboxes.ensure_running(workspace_id)
        client = self.sandboxes.client(row)
        async with self._opening_lock(owner_id):
            await self._check_cap(owner_id)
            try:
                created = await client.json("POST", "/api/terminals", json_body=options)
            except AgentError as e:
                raise self._agent_error(e) from e
        self.log.info("workspace %s | terminal %s opened", workspace_id, created["name"])
        return terminal_model(created)

    @asynccontextmanager
    async def _opening_lock(self, owner_id: int) -> AsyncIterator[None]:
        """Serialise one user's terminal opens, in this process and across replicas (a
        PostgreSQL advisory lock); without a cap, nothing is locked."""
        if not self.max_terminals_per_user:
            yield
            return
        lock = self._opening.get(owner_id)
        if lock is None:
            lock = self._opening[owner_id] = asyncio.Lock()
        key = TERMINALS_LOCK_BASE + owner_id % (1 << 32)
        async with lock, advisory_lock(self.sandboxes.db, key, wait=True):
            yield

    async def _check_cap(self, owner_id: int) -> None:
        """409 when the user already has ``max_terminals_per_user`` terminals open."""
        if not self.max_terminals_per_user:
            return
        rows = await self.sandboxes.for_owner(owner_id, running_only=True)
        count = sum(await asyncio.gather(*map(self._terminal_count, rows)))
        if count >= self.max_terminals_per_user:
            msg = (
                f"You have {count} terminals open, the most allowed; close one first "
                "(in this or another workspace)."
            )
            raise TooManyTerminals(msg)

    async def _terminal_count(self, row: SandboxRow) -> int:
        """How many terminals a running sandbox has (0 for one whose agent does not answer:
        a dead sandbox has none)."""
        try:
            return len(await self.sandboxes.client(row).json("GET", "/api/terminals"))
        except AgentError:
            return 0

    async def running(self, workspace_id: uuid.UUID) -> list[TerminalModel]:
        """The workspace's terminals; none while its sandbox is stopped."""
        row = await self._row(workspace_id)
        if row is None:
            return []
        try:
            found = await self.sandboxes.client(row).json("GET", "/api/terminals")
        except AgentError as e:
            raise self._agent_error(e) from e
        return [terminal_model(raw) for raw in found]

    async def get(self, workspace_id: uuid.UUID, name: str) -> TerminalModel:
        """One terminal."""
        raw = await self._on_agent(workspace_id, name, "GET")
        return terminal_model(raw)

    async def delete(self, workspace_id: uuid.UUID, name: str) -> None:
        """Close a terminal and end its processes."""
        await self._on_agent(workspace_id, name, "DELETE")
        self.log.info("workspace %s | terminal %s closed", workspace_id, name[:64])

    async def _row(self, workspace_id: uuid.UUID) -> SandboxRow | None:
        """The workspace's running sandbox; None if it has none, ``SandboxUnresponsive``
        (504, at once) if it does not answer."""
        row = await self.sandboxes.row(workspace_id)
        if row is not None and row["state"] == "unresponsive":
            raise SandboxUnresponsive
        return row if row is not None and row["state"] == "running" else None

    async def _on_agent(self, workspace_id: uuid.UUID, name: str, method: str) -> Any:
        row = await self._row(workspace_id)
        if row is None:
            raise no_terminal(name)
        try:
            return await self.sandboxes.client(row).json(
                method, f"/api/terminals/{quote(name, safe='')}"
            )
        except AgentError as e:
            if e.status == 404:
                raise no_terminal(name) from e
            raise self._agent_error(e) from e

    @staticmethod
    def _agent_error(error: AgentError) -> DomainError:
        if isinstance(error, AgentUnresponsive):
            return SandboxUnresponsive()
        if error.status == 409:
            return Conflict(str(error))
        if error.status in AGENT_INPUT_ERRORS and error.agent_message:
            # The agent refused what the client asked for (a bad name or cwd): say so.
            return InvalidInput(error.agent_message)
        return SandboxUnavailable()
