"""``Members``: sharing a workspace with other users, each with a role (see ``roles``)."""

from __future__ import annotations

from typing import Any, TypedDict

from traitlets import Instance, Integer
from traitlets.config import LoggingConfigurable

from extensions.accounts import store as accounts_store
from extensions.workspaces import member_store
from extensions.workspaces.member_store import MemberRow, no_member
from extensions.workspaces.roles import MEMBER_ROLES, Access, Action
from platform_server.db import Connection, Database
from platform_server.errors import Conflict, InvalidInput, NotFound
from platform_server.timefmt import isoformat


class MemberModel(TypedDict):
    """A member as the API shows it."""

    username: str
    role: str
    added_at: str


def member_role(value: Any) -> str:
    """A role an owner may give: ``viewer`` or ``editor`` (400 otherwise)."""
    if not isinstance(value, str) or value not in {role.value for role in MEMBER_ROLES}:
        msg = "role must be 'viewer' or 'editor'."
        raise InvalidInput(msg)
    return value


def member_username(value: Any) -> str:
    """A username as sent (400 if it is not a short string)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        msg = "username must be a user's name."
        raise InvalidInput(msg)
    return value


def member_model(row: MemberRow) -> MemberModel:
    """The JSON model of one member."""
    return {
        "username": row["username"],
        "role": row["role"],
        "added_at": isoformat(row["added_at"]) or "",
    }


class Members(LoggingConfigurable):
    """The sharing rules; handlers call into this with the caller's ``Access``."""

    max_members_per_workspace = Integer(
        50, help="Most users one workspace may be shared with; adding more answers 409."
    ).tag(config=True)

    db = Instance(Database)

    async def listing(self, access: Access) -> list[MemberModel]:
        """The owner first (role ``owner``), then the members in the order they were added."""
        access.require(Action.READ)
        async with self.db.connection() as conn:
            rows = await member_store.members(conn, access.workspace_id)
        return [member_model(row) for row in rows]

    async def add(self, access: Access, body: dict[str, Any]) -> MemberModel:
        """Share the workspace: ``{username, role}``."""
        access.require(Action.SHARE)
        username = member_username(body.get("username"))
        role = member_role(body.get("role"))
        async with self.db.transaction() as conn:
            user_id, name = await self._user(conn, username)
            if user_id == access.owner_id:
                msg = f"{name} owns this workspace."
                raise Conflict(msg)
            if (
                await member_store.count_members(conn, access.workspace_id)
                >= self.max_members_per_workspace
            ):
                msg = (
                    f"This workspace is shared with {self.max_members_per_workspace} users, "
                    "the most allowed; remove one first."
                )
                raise Conflict(msg)
            row = await member_store.add_member(
                conn, access.workspace_id, user_id, name, role, access.user_id
            )
        self.log.info(
            "workspace %s | shared with user %d as %s by user %d",
            access.workspace_id,
            user_id,
            role,
            access.user_id,
        )
        return member_model(row)

    async def change(self, access: Access, username: str, body: dict[str, Any]) -> MemberModel:
        """Give a member another role: ``{role}``."""
        access.require(Action.SHARE)
        role = member_role(body.get("role"))
        async with self.db.transaction() as conn:
            user_id, name = await self._member(conn, access, username)
            row = await member_store.set_role(conn, access.workspace_id, user_id, name, role)
        self.log.info("workspace %s | user %d is now %s", access.workspace_id, user_id, role)
        return member_model(row)

    async def remove(self, access: Access, username: str) -> None:
        """Revoke a member's role (the owner), or leave (the member themselves)."""
        async with self.db.transaction() as conn:
            user_id, name = await self._member(conn, access, username)
            if user_id != access.user_id:
                access.require(Action.SHARE)
            await member_store.remove_member(conn, access.workspace_id, user_id, name)
        self.log.info("workspace %s | user %d removed", access.workspace_id, user_id)

    @staticmethod
    async def _user(conn: Connection, username: str) -> tuple[int, str]:
        """The account of that name. The 404 says no more than registering under the name
        would (that it is taken or not): nothing of the account itself."""
        user = await accounts_store.get_user_by_name(conn, username)
        if user is None or user["disabled"]:
            msg = f"There is no user named {username!r} to share this workspace with."
            raise NotFound(msg)
        return user["id"], user["username"]

    async def _member(self, conn: Connection, access: Access, username: str) -> tuple[int, str]:
        """A member's account (``NotFound`` for a non-member); the owner is not a member."""
        user = await accounts_store.get_user_by_name(conn, username)
        if user is not None and user["id"] == access.owner_id:
            access.require(Action.SHARE)
            msg = "The owner's role cannot change, nor can the owner leave: delete it instead."
            raise Conflict(msg)
        if user is None:
            raise no_member(username)
        return user["id"], user["username"]
