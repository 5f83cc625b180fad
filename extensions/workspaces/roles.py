"""Who may do what in a workspace: the roles, the actions, and the one table between them.

Every route and WebSocket of a workspace names the action it performs; the caller's role (the
owner's, or the one the owner gave them) must be at least the action's minimum. A caller with
no role in the workspace is told it does not exist (404), as for a workspace that does not.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from platform_server.errors import Forbidden

READ_ONLY_MESSAGE = (
    "You can view this workspace but not change it: ask its owner for the editor role."
)
OWNER_ONLY_MESSAGE = "Only the workspace's owner can do this."


class Role(enum.Enum):
    """A user's role in a workspace, from least to most allowed."""

    VIEWER = "viewer"
    EDITOR = "editor"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        """The order of roles: each may do everything the one before it may."""
        return list(Role).index(self)

    def allows(self, action: Action) -> bool:
        """Whether this role may perform ``action``."""
        return self.rank >= MINIMUM_ROLE[action].rank


MEMBER_ROLES = frozenset({Role.VIEWER, Role.EDITOR})
"""The roles an owner gives (a workspace has exactly one owner)."""


class Action(enum.Enum):
    """What a request does in a workspace."""

    READ = "read"
    """Read files, listings, searches, states, members; the events socket."""
    START = "start"
    """Start the sandbox: runs no user code, and lets a viewer watch terminals and kernels."""
    WATCH = "watch"
    """Open a terminal's or kernel's socket (a viewer's is read-only: see ``INPUT``)."""
    INPUT = "input"
    """Send keys to a terminal, or code and requests to a kernel, over their sockets."""
    CHANGE = "change"
    """Write files; open or close terminals, kernels and sessions; stop the sandbox; forget a
    package; rename the workspace."""
    LANGUAGE_SERVER = "language_server"
    """Talk to the workspace's language servers (they read and may rewrite open documents)."""
    SHARE = "share"
    """Add members, change their roles, remove other members."""
    DELETE = "delete"
    """Delete the workspace with its files."""


MINIMUM_ROLE: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.START: Role.VIEWER,
    Action.WATCH: Role.VIEWER,
    Action.INPUT: Role.EDITOR,
    Action.CHANGE: Role.EDITOR,
    Action.LANGUAGE_SERVER: Role.EDITOR,
    Action.SHARE: Role.OWNER,
    Action.DELETE: Role.OWNER,
}
"""The least role that may perform each action (docs/api.md and docs/security.md show it)."""


class NotAllowed(Forbidden):
    """The caller has a role in the workspace, but too low a one for the action."""

    def __init__(self, role: Role) -> None:
        read_only = role is Role.VIEWER
        super().__init__(READ_ONLY_MESSAGE if read_only else OWNER_ONLY_MESSAGE)
        self.reason = "read_only" if read_only else "owner_only"


@dataclass(frozen=True)
class Access:
    """A caller's access to one workspace."""

    workspace_id: uuid.UUID
    role: Role
    owner_id: int
    """The owner's account: the sandbox, its limits and its packages are the owner's."""
    user_id: int
    """The caller's account."""

    def require(self, action: Action) -> Access:
        """This access, if it allows ``action``; ``NotAllowed`` otherwise."""
        if not self.role.allows(action):
            raise NotAllowed(self.role)
        return self


def roles_allowing(action: Action) -> list[str]:
    """The names of the roles that may perform ``action`` (for SQL)."""
    return [role.value for role in Role if role.allows(action)]
