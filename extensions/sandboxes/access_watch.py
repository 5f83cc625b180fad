"""A member's WebSocket closes as soon as the owner changes or revokes their role.

Membership changes are published as workspace events (``member_store``, in the transaction
that makes them), which every replica's ``EventHub`` hears: the member's sockets close on
whichever replica holds them. A client that reconnects is checked again, with its new role.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from tornado.websocket import WebSocketHandler

from extensions.sandboxes.manager import Sandboxes
from extensions.workspaces.manager import Workspaces
from extensions.workspaces.member_store import MEMBER_EVENT
from extensions.workspaces.roles import Access, Action, Role
from platform_server.errors import DomainError, NotFound

ACCESS_CHANGED = 4403
"""The close code of a socket whose user's role changed (a reconnect is checked again)."""
REVOKED = "Your access to this workspace was revoked."


def role_changed(role: str) -> str:
    """The close reason of a socket whose user now has ``role``."""
    return f"Your role in this workspace is now {role}."


class AccessWatch(WebSocketHandler):
    """Mixin of a workspace's ``WebSocketHandler``: set ``access`` before the upgrade and
    call ``watch_access`` from ``open``. Put it before a base whose ``on_close`` does not
    call ``super()``."""

    access: Access | None = None
    _unwatch: Callable[[], None] | None = None
    _recheck: asyncio.Task[None] | None = None

    def watch_access(self) -> None:
        """Close this socket when its user's role in the workspace changes (an owner's never
        does). The role is read once more after subscribing: a change made between the check
        before the upgrade and the subscription is seen too."""
        if self.access is None or self.access.role is Role.OWNER:
            return
        hub = cast(Sandboxes, self.settings["sandboxes"]).events
        self._unwatch = hub.subscribe(self.access.workspace_id, self._on_workspace_event)
        self._recheck = asyncio.create_task(self._check_again(self.access))

    async def _check_again(self, access: Access) -> None:
        workspaces = cast(Workspaces, self.settings["workspaces"])
        try:
            now = await workspaces.access(
                str(access.workspace_id), access.user_id, Action.READ, active=False
            )
        except NotFound:
            self.close(ACCESS_CHANGED, REVOKED)
            return
        except DomainError as e:  # the database is down: the events will tell once it is back
            workspaces.log.warning(
                "workspace %s | role not checked again: %s", access.workspace_id, e
            )
            return
        if now.role is not access.role:
            self.close(ACCESS_CHANGED, role_changed(now.role.value))

    def _on_workspace_event(self, event: dict[str, Any]) -> None:
        if self.access is None or event.get("type") != MEMBER_EVENT:
            return
        if event.get("user_id") != self.access.user_id:
            return
        if event.get("role") is None:
            self.close(ACCESS_CHANGED, REVOKED)
        else:
            self.close(ACCESS_CHANGED, role_changed(str(event["role"])))

    def on_close(self) -> None:
        """Stop watching."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._recheck is not None and not self._recheck.done():
            self._recheck.cancel()
        super().on_close()
