"""jupyter_server's own contents and files handlers, bound to the workspace in the URL.

The REST layer is jupyter_server's (so JupyterLab sees exactly the API it expects); only the
contents manager changes, to the one of ``/w/<uuid>/``'s workspace, after an owner check.
"""

from __future__ import annotations

import mimetypes
import os
import uuid
from collections.abc import Awaitable
from typing import Any, cast

from jupyter_server.base.handlers import JupyterHandler, path_regex
from jupyter_server.files.handlers import FilesHandler
from jupyter_server.services.contents.handlers import (
    CheckpointsHandler,
    ContentsHandler,
    ModifyCheckpointsHandler,
)
from jupyter_server.services.contents.manager import AsyncContentsManager
from jupyter_server.utils import url_escape, url_path_join

from extensions.accounts.identity import PlatformUser
from extensions.workspaces.manager import Workspaces, is_user_action
from platform_server.errors import DomainError

WORKSPACE = r"/w/(?P<workspace>[^/]+)"
CHECKPOINT_ID = r"(?P<checkpoint_id>[\w-]+)"
# Types a browser would run as code: always downloaded, never rendered on the platform's origin.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
    }
)


class WorkspaceBound(JupyterHandler):
    """Mixin: take the workspace out of the URL, check the owner, serve its contents manager.

    Tornado calls ``prepare`` with ``path_kwargs`` already parsed, so the extra URL group is
    removed there and jupyter_server's verbs keep their own signatures.
    """

    workspace_id: uuid.UUID
    _workspace_contents: AsyncContentsManager | None = None

    @property
    def workspaces(self) -> Workspaces:
        """The workspaces service."""
        return cast(Workspaces, self.settings["workspaces"])

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate, then 404 unless the caller owns the URL's workspace."""
        raw_id = self.path_kwargs.pop("workspace")
        await super().prepare()
        user = self.current_user
        if not isinstance(user, PlatformUser):
            return  # the verb's @web.authenticated refuses the request
        try:
            self.workspace_id = await self.workspaces.touch(
                raw_id, user.user_id, active=is_user_action(self.request.method or "GET")
            )
        except DomainError as e:
            raise e.to_http() from e

    @property
    def contents_manager(self) -> AsyncContentsManager:
        """The contents manager of this request's workspace."""
        if self._workspace_contents is None:
            self._workspace_contents = self.workspaces.contents_manager(self.workspace_id)
        return self._workspace_contents

    @property
    def workspace_url(self) -> str:
        """``<base_url>w/<uuid>/``: the base URL a Jupyter client uses for this workspace."""
        return url_path_join(self.base_url, "w", str(self.workspace_id), "/")


class WorkspaceContentsHandler(WorkspaceBound, ContentsHandler):
    """``/w/<uuid>/api/contents/<path>``: jupyter_server's ContentsHandler."""

    def location_url(self, path: str) -> str:
        """Locations point into this workspace, not at the server's root contents."""
        return url_path_join(self.workspace_url, "api", "contents", url_escape(path))


class WorkspaceCheckpointsHandler(WorkspaceBound, CheckpointsHandler):
    """``/w/<uuid>/api/contents/<path>/checkpoints``."""

    def location_url(self, path: str) -> str:
        """See ``WorkspaceContentsHandler.location_url``."""
        return url_path_join(self.workspace_url, "api", "contents", url_escape(path))


class WorkspaceModifyCheckpointsHandler(WorkspaceBound, ModifyCheckpointsHandler):
    """``/w/<uuid>/api/contents/<path>/checkpoints/<id>``."""


class WorkspaceFilesHandler(WorkspaceBound, FilesHandler):
    """``/w/<uuid>/files/<path>``: raw bytes, never run as the platform's origin."""

    def initialize(self) -> None:  # type: ignore[override]
        """No static root: the bytes come from the workspace's contents manager."""
        super().initialize(path=os.devnull)

    @property
    def content_security_policy(self) -> str:
        """A sandbox without ``allow-same-origin`` or scripts: a user's page cannot act."""
        # FilesHandler's own policy adds "sandbox allow-scripts"; start from the base one.
        base = cast(str, JupyterHandler.content_security_policy.fget(self))  # type: ignore[attr-defined]
        return base + "; sandbox"

    async def get(self, path: str, include_body: bool = True) -> None:
        """Serve a file; active types (HTML, SVG, XML, JavaScript) only as downloads."""
        name = path.strip("/").rsplit("/", 1)[-1]
        if mimetypes.guess_type(name)[0] in ACTIVE_TYPES:
            self.set_attachment_header(name)
        await cast(Awaitable[None], super().get(path, include_body=include_body))


def workspace_routes() -> list[tuple[str, Any]]:
    """The per-workspace Jupyter routes, most specific first."""
    return [
        (rf"{WORKSPACE}/api/contents{path_regex}/checkpoints", WorkspaceCheckpointsHandler),
        (
            rf"{WORKSPACE}/api/contents{path_regex}/checkpoints/{CHECKPOINT_ID}",
            WorkspaceModifyCheckpointsHandler,
        ),
        (rf"{WORKSPACE}/api/contents{path_regex}", WorkspaceContentsHandler),
        (rf"{WORKSPACE}/files/(?P<path>.*)", WorkspaceFilesHandler),
    ]
