"""``Workspaces``: create, list, rename and delete workspaces; who may reach one, and how."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

from traitlets import Instance, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from extensions.workspaces import member_store, store
from extensions.workspaces.contents import PostgresContentsManager
from extensions.workspaces.member_store import WorkspaceView
from extensions.workspaces.roles import Access, Action, Role, roles_allowing
from platform_server.db import Database
from platform_server.errors import InvalidInput, NotFound
from platform_server.timefmt import isoformat

DEFAULT_MAIN_PY = '''\
"""Your workspace's first program: run it with the Run button, F5, or `python main.py`."""


def main() -> None:
    print("Hello from your workspace!")


if __name__ == "__main__":
    main()
'''


# Contents managers kept for reuse (the most recently used workspaces').
KEPT_MANAGERS = 256


class WorkspaceModel(TypedDict):
    """A workspace as the API shows it."""

    uuid: str
    name: str
    created_at: str
    updated_at: str
    last_activity: str
    bytes_used: int
    role: str
    """The caller's role: ``owner``, ``editor`` or ``viewer`` (see ``roles``)."""
    owner: str
    """The owner's username."""
    shared: bool
    """Whether the workspace has at least one member."""


def is_user_action(method: str) -> bool:
    """Whether a request of this method is the user doing something: reads are not, since
    clients poll (JupyterLab lists terminals every few seconds, editors watch open files)."""
    return method not in {"GET", "HEAD", "OPTIONS"}


def parse_workspace_id(value: str) -> uuid.UUID:
    """The UUID in a URL; a malformed one names no workspace (404)."""
    try:
        return uuid.UUID(value)
    except ValueError as e:
        msg = f"No workspace {value[:64]}."
        raise NotFound(msg) from e


def workspace_name(value: Any) -> str:
    """A workspace name: 1-100 characters, no control characters, not only spaces."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > 100
        or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value)
    ):
        msg = "name must be 1-100 characters without control characters."
        raise InvalidInput(msg)
    return value


class Workspaces(LoggingConfigurable):
    """The workspace rules; handlers call into this."""

    max_workspaces_per_user = Integer(
        20, help="Most workspaces one user may own; creating more answers 409."
    ).tag(config=True)

    starter_file = Unicode(
        DEFAULT_MAIN_PY, help="Content of main.py in every new workspace; empty for none."
    ).tag(config=True)

    db = Instance(Database)

    listeners: List[Any] = List(
        help="Objects told of file changes (``contents_changed``, see ContentsListener) and "
        "of deletions (``async workspace_deleting(workspace_id)``), e.g. the sandboxes "
        "(not config).",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._managers: dict[uuid.UUID, PostgresContentsManager] = {}

    def contents_manager(self, workspace_id: uuid.UUID) -> PostgresContentsManager:
        """A contents manager bound to one workspace.

        Managers keep no state between requests, so the most recently used ones are kept:
        making one (traits, config) costs more than a database round trip.
        """
        manager = self._managers.pop(workspace_id, None)
        if manager is None:
            manager = PostgresContentsManager(
                parent=self,
                db=self.db,
                workspace_id=workspace_id,
                log=self.log,
                listeners=self.listeners,
            )
            if len(self._managers) >= KEPT_MANAGERS:
                del self._managers[next(iter(self._managers))]  # the least recently used
        self._managers[workspace_id] = manager
        return manager

    def model(self, workspace: WorkspaceView) -> WorkspaceModel:
        """The JSON model of a workspace, as the user it was read for sees it."""
        return {
            "uuid": str(workspace["id"]),
            "name": workspace["name"],
            "created_at": isoformat(workspace["created_at"]) or "",
            "updated_at": isoformat(workspace["updated_at"]) or "",
            "last_activity": isoformat(workspace["last_activity"]) or "",
            "bytes_used": workspace["bytes_used"],
            "role": workspace["role"],
            "owner": workspace["owner"],
            "shared": workspace["shared"],
        }

    async def create(self, owner_id: int, body: dict[str, Any]) -> WorkspaceView:
        """Create a workspace ``{name}`` with the starter ``main.py``."""
        name = workspace_name(body.get("name"))
        files = {"main.py": self.starter_file.encode()} if self.starter_file else {}
        async with self.db.transaction() as conn:
            created = await store.create_workspace(
                conn, owner_id, name, self.max_workspaces_per_user, files
            )
            workspace = await member_store.reachable_workspace(conn, created["id"], owner_id)
        self.log.info("workspace %s | created by user %d", workspace["id"], owner_id)
        return workspace

    async def reachable_by(self, user_id: int) -> list[WorkspaceView]:
        """The workspaces the user owns or was given a role in, most recently active first."""
        async with self.db.transaction() as conn:
            return await member_store.reachable_workspaces(conn, user_id)

    async def get(self, workspace_id: str, user_id: int) -> WorkspaceView:
        """A workspace the user owns or was given a role in (404 for any other)."""
        async with self.db.transaction() as conn:
            return await member_store.reachable_workspace(
                conn, parse_workspace_id(workspace_id), user_id
            )

    async def access(
        self, workspace_id: str, user_id: int, action: Action, *, active: bool = True
    ) -> Access:
        """The user's access to the workspace if it allows ``action``: ``NotFound`` when they
        have no role in it, ``NotAllowed`` when their role is too low.

        ``active``: the request is the user doing something (not a client polling), which
        keeps the workspace's sandbox from being culled as idle, whoever its user is; a
        refused request records nothing.
        """
        parsed = parse_workspace_id(workspace_id)
        async with self.db.connection() as conn:
            row = await member_store.access(
                conn, parsed, user_id, active_roles=roles_allowing(action) if active else []
            )
        granted = Access(parsed, Role(row["role"]), row["owner_id"], user_id)
        return granted.require(action)

    async def update(self, access: Access, body: dict[str, Any]) -> WorkspaceView:
        """Rename a workspace ``{name}``."""
        access.require(Action.CHANGE)
        if "name" not in body:
            msg = "Nothing to change: send {'name': ...}."
            raise InvalidInput(msg)
        name = workspace_name(body["name"])
        async with self.db.transaction() as conn:
            await store.rename_workspace(conn, access.workspace_id, access.owner_id, name)
            return await member_store.reachable_workspace(conn, access.workspace_id, access.user_id)

    async def delete(self, access: Access) -> None:
        """Delete a workspace and every file in it."""
        access.require(Action.DELETE)
        ws = access.workspace_id
        for listener in self.listeners:
            await listener.workspace_deleting(ws)
        async with self.db.transaction() as conn:
            await store.delete_workspace(conn, ws, access.owner_id)
        self.log.info("workspace %s | deleted by user %d", ws, access.owner_id)
