"""``Terminals``: create, list and delete a workspace's terminals through its agent."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict
from urllib.parse import quote

from traitlets import Instance, Integer
from traitlets.config import LoggingConfigurable

from extensions.sandboxes.agent_client import AgentError
from extensions.sandboxes.manager import Sandboxes
from platform_server.errors import Conflict, DomainError, InvalidInput, NotFound


class TerminalModel(TypedDict):
    """jupyter_server's terminal model."""

    name: str
    last_activity: str


class SandboxUnavailable(DomainError):
    """The sandbox's agent cannot be reached."""

    status_code = 503
    reason = "sandbox_unavailable"


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

    sandboxes = Instance(Sandboxes)

    async def create(
        self, workspace_id: uuid.UUID, owner_id: int, body: dict[str, Any]
    ) -> TerminalModel:
        """Open a terminal (``{name?, cwd?}``), starting the sandbox if needed."""
        options = {key: body[key] for key in ("name", "cwd") if body.get(key) is not None}
        if not all(isinstance(value, str) and value for value in options.values()):
            msg = "name and cwd must be non-empty strings."
            raise InvalidInput(msg)
        await self._check_cap(owner_id)
        row = await self.sandboxes.ensure_running(workspace_id)
        client = self.sandboxes.client(row)
        try:
            created = await client.json("POST", "/api/terminals", json_body=options)
        except AgentError as e:
            raise self._agent_error(e) from e
        self.log.info("workspace %s | terminal %s opened", workspace_id, created["name"])
        return terminal_model(created)

    async def _check_cap(self, owner_id: int) -> None:
        """409 when the user already has ``max_terminals_per_user`` terminals open."""
        if not self.max_terminals_per_user:
            return
        count = 0
        for row in await self.sandboxes.for_owner(owner_id, running_only=True):
            try:
                count += len(await self.sandboxes.client(row).json("GET", "/api/terminals"))
            except AgentError:
                continue  # a dead sandbox has no terminals
        if count >= self.max_terminals_per_user:
            msg = (
                f"You have {count} terminals open, the most allowed; close one first "
                "(in this or another workspace)."
            )
            raise Conflict(msg)

    async def running(self, workspace_id: uuid.UUID) -> list[TerminalModel]:
        """The workspace's terminals; none while its sandbox is stopped."""
        row = await self.sandboxes.row(workspace_id)
        if row is None or row["state"] != "running":
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

    async def _on_agent(self, workspace_id: uuid.UUID, name: str, method: str) -> Any:
        row = await self.sandboxes.row(workspace_id)
        if row is None or row["state"] != "running":
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
        if error.status == 409:
            return Conflict(str(error))
        return SandboxUnavailable(
            "The workspace's sandbox is not answering. Try again; if it persists, stop and "
            "start the sandbox."
        )
