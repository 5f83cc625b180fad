"""jupyter_server's own contents and files handlers, bound to the workspace in the URL.

The REST layer is jupyter_server's (so JupyterLab sees exactly the API it expects); only the
contents manager changes, to the one of ``/w/<uuid>/``'s workspace, after a role check (reads:
any role; writes: an editor's).
"""

from __future__ import annotations

import json
import mimetypes
import os
import uuid
from collections.abc import Awaitable
from typing import Any, cast

from jupyter_client.jsonutil import json_default
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler, path_regex
from jupyter_server.files.handlers import FilesHandler
from jupyter_server.services.contents.handlers import (
    CheckpointsHandler,
    ContentsHandler,
    ModifyCheckpointsHandler,
)
from jupyter_server.services.contents.manager import AsyncContentsManager
from jupyter_server.utils import url_escape, url_path_join
from tornado import web

from extensions.accounts.identity import PlatformUser
from extensions.workspaces.contents import PostgresContentsManager
from extensions.workspaces.manager import Workspaces, is_user_action
from extensions.workspaces.roles import Action, Role
from platform_server.errors import DomainError, PlatformError
from platform_server.handlers import (
    WORKSPACE_ROUTE,
    PlatformAuthErrors,
    default_reason,
    parse_json_object,
    unauthenticated,
    write_json_error,
)

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
# Fields of a contents model that jupyter_server uses as strings ("path" may not be null).
MODEL_STRING_FIELDS = ("path", "copy_from", "type", "format", "ext")


class WorkspaceBound(PlatformAuthErrors, JupyterHandler):
    """Mixin: take the workspace out of the URL, check the caller's role, serve its contents
    manager.

    Tornado calls ``prepare`` with ``path_kwargs`` already parsed, so the extra URL group is
    removed there and jupyter_server's verbs keep their own signatures.
    """

    workspace_id: uuid.UUID
    role: Role = Role.VIEWER
    _workspace_contents: AsyncContentsManager | None = None

    @property
    def workspaces(self) -> Workspaces:
        """The workspaces service."""
        return cast(Workspaces, self.settings["workspaces"])

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate, then 404 unless the caller has a role in the URL's workspace, 403
        when a viewer's request would change something."""
        raw_id = self.path_kwargs.pop("workspace_id")
        await super().prepare()
        user = self.current_user
        if not isinstance(user, PlatformUser):
            return  # the verb's @web.authenticated refuses the request
        writes = is_user_action(self.request.method or "GET")
        try:
            access = await self.workspaces.access(
                raw_id, user.user_id, Action.CHANGE if writes else Action.READ, active=writes
            )
        except DomainError as e:
            raise e.to_http() from e
        self.workspace_id = access.workspace_id
        self.role = access.role

    def get_login_url(self) -> str:
        """An anonymous request hears 401 (jupyter_server's files handler would redirect)."""
        raise unauthenticated()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as the platform's JSON ``{"message", "reason"}``."""
        write_json_error(self, status_code, kwargs.get("exc_info"))

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

    # Saves and uploads: authenticated writes keep ServerApp.max_body_size (body_limit.py).
    large_request_bodies = True

    def location_url(self, path: str) -> str:
        """Locations point into this workspace, not at the server's root contents."""
        return url_path_join(self.workspace_url, "api", "contents", url_escape(path))

    def _finish_model(self, model: dict[str, Any], location: bool = True) -> None:
        """A viewer's models (and a listing's) say ``writable: false``, as Jupyter says of a
        file it may not change: JupyterLab then opens them read-only."""
        if not self.role.allows(Action.CHANGE):
            model = {**model, "writable": False}
            if model["type"] == "directory" and isinstance(model["content"], list):
                model["content"] = [{**child, "writable": False} for child in model["content"]]
        cast(Any, super())._finish_model(model, location)

    async def _finish_error(self, code: int, message: str) -> None:
        """jupyter_server answers a missing path's GET in plain text: answer JSON instead."""
        status = int(code)
        raise PlatformError(status, message, reason=default_reason(status))

    def get_json_body(self) -> dict[str, Any] | None:
        """The body as a JSON object with strings where jupyter_server expects them; 400
        otherwise. jupyter_server's own parser turns undecodable text into a 500, and wrong
        types reach its handlers (``model.get`` of a list, ``{}`` in a set) as 500s."""
        model = parse_json_object(self.request.body)
        if model is None:
            return None
        for key in MODEL_STRING_FIELDS:
            value = model.get(key)
            if key in model and not isinstance(value, str) and (value is not None or key == "path"):
                msg = f"'{key}' must be a string."
                raise PlatformError(400, msg, reason="invalid_input")
        return model


class WorkspaceCheckpointsHandler(WorkspaceBound, CheckpointsHandler):
    """``/w/<uuid>/api/contents/<path>/checkpoints``."""

    def location_url(self, path: str) -> str:
        """See ``WorkspaceContentsHandler.location_url``."""
        return url_path_join(self.workspace_url, "api", "contents", url_escape(path))


class WorkspaceModifyCheckpointsHandler(WorkspaceBound, ModifyCheckpointsHandler):
    """``/w/<uuid>/api/contents/<path>/checkpoints/<id>``, with a ``GET`` beyond Jupyter."""

    @web.authenticated
    @authorized
    async def get(self, path: str, checkpoint_id: str) -> None:
        """A checkpoint with the content it saved (to compare it with the file)."""
        manager = self.contents_manager
        if not isinstance(manager, PostgresContentsManager):
            msg = "Reading a checkpoint needs the PostgreSQL contents manager."
            raise PlatformError(501, msg, reason="unsupported")
        model = await manager.get_checkpoint(checkpoint_id, path)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model, default=json_default))


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
        (rf"{WORKSPACE_ROUTE}/api/contents{path_regex}/checkpoints", WorkspaceCheckpointsHandler),
        (
            rf"{WORKSPACE_ROUTE}/api/contents{path_regex}/checkpoints/{CHECKPOINT_ID}",
            WorkspaceModifyCheckpointsHandler,
        ),
        (rf"{WORKSPACE_ROUTE}/api/contents{path_regex}", WorkspaceContentsHandler),
        (rf"{WORKSPACE_ROUTE}/files/(?P<path>.*)", WorkspaceFilesHandler),
    ]
