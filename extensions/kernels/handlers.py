"""``/w/<uuid>/api/{kernelspecs,kernels,sessions}``: jupyter_server's REST APIs, per workspace."""

from __future__ import annotations

import uuid
from typing import Any, cast

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_escape, url_path_join
from tornado import web

from extensions.kernels.manager import Kernels
from extensions.kernels.sessions import Sessions
from extensions.workspaces.handlers import WorkspacesAPIHandler
from extensions.workspaces.roles import Action
from platform_server.errors import PlatformError
from platform_server.handlers import WORKSPACE_ROUTE, parse_json_object

KERNEL_ID = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"
SESSION_ID = r"(?P<session_id>\w+-\w+-\w+-\w+-\w+)"
KERNEL_NAME = r"(?P<kernel_name>[\w\.\-%]+)"


class KernelsAPIHandler(WorkspacesAPIHandler):
    """Base: the services, the role check of the URL's workspace, JSON bodies."""

    auth_resource = "kernels"

    @property
    def kernels(self) -> Kernels:
        """The kernels service."""
        return cast(Kernels, self.settings["kernels"])

    @property
    def sessions(self) -> Sessions:
        """The sessions service."""
        return cast(Sessions, self.settings["kernel_sessions"])

    def workspace_base(self, workspace_id: uuid.UUID) -> str:
        """``<base_url>w/<uuid>/``, the Jupyter base URL of the workspace."""
        return url_path_join(self.base_url, "w", str(workspace_id), "/")

    def json_body(self) -> dict[str, Any] | None:
        """The optional JSON object body (with or without a content type, as JupyterLab and
        jupyter_server treat it); None when empty."""
        return parse_json_object(self.request.body)


class KernelSpecsHandler(KernelsAPIHandler):
    """``GET /w/<uuid>/api/kernelspecs``."""

    auth_resource = "kernelspecs"

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str) -> None:
        """``{"default": "python3", "kernelspecs": {...}}``."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.kernels.kernelspecs(ws, self.workspace_base(ws)))


class KernelSpecHandler(KernelsAPIHandler):
    """``GET /w/<uuid>/api/kernelspecs/<name>``."""

    auth_resource = "kernelspecs"

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str, kernel_name: str) -> None:
        """One kernelspec."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.kernels.kernelspec(ws, kernel_name, self.workspace_base(ws)))


class KernelSpecResourceHandler(KernelsAPIHandler):
    """``GET /w/<uuid>/kernelspecs/<name>/<file>``: a kernelspec's logo."""

    auth_resource = "kernelspecs"

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str, kernel_name: str, path: str) -> None:
        """The file's bytes, from the sandbox's agent."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        response = await self.kernels.resource(ws, kernel_name, path)
        self.set_header("Cache-Control", "max-age=86400")
        self.set_header("X-Content-Type-Options", "nosniff")
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        self.finish(response.body, set_content_type=content_type)


class MainKernelHandler(KernelsAPIHandler):
    """``GET`` lists the workspace's kernels; ``POST`` starts one (and the sandbox)."""

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str) -> None:
        """The running kernels' models."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.kernels.running(ws))

    @web.authenticated
    @authorized
    async def post(self, workspace_id: str) -> None:
        """Start a kernel: body ``{"name"?: "python3", "path"?: "folder"}``; 201."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        body = self.json_body() or {}
        for key in ("name", "path"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise PlatformError(400, f"'{key}' must be a string.", reason="invalid_input")
        model = await self.kernels.start(ws, body.get("name"), body.get("path"))
        location = url_path_join(self.workspace_base(ws), "api", "kernels", url_escape(model["id"]))
        self.set_header("Location", location)
        self.finish_json(model, status=201)


class KernelHandler(KernelsAPIHandler):
    """``GET``/``DELETE`` one kernel."""

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str, kernel_id: str) -> None:
        """One kernel's model."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.kernels.get(ws, kernel_id))

    @web.authenticated
    @authorized
    async def delete(self, workspace_id: str, kernel_id: str) -> None:
        """Shut the kernel down."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        await self.kernels.shutdown(ws, kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(KernelsAPIHandler):
    """``POST .../interrupt`` (204) and ``.../restart`` (200 and the model)."""

    @web.authenticated
    @authorized
    async def post(self, workspace_id: str, kernel_id: str, action: str) -> None:
        """Interrupt or restart the kernel."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        if action == "interrupt":
            await self.kernels.interrupt(ws, kernel_id)
            self.set_status(204)
            self.finish()
            return
        self.finish_json(await self.kernels.restart(ws, kernel_id))


class SessionRootHandler(KernelsAPIHandler):
    """``GET`` lists the workspace's sessions; ``POST`` creates one (or finds the path's)."""

    auth_resource = "sessions"

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str) -> None:
        """Sessions whose kernels run."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.sessions.list_sessions(ws))

    @web.authenticated
    @authorized
    async def post(self, workspace_id: str) -> None:
        """``{"path", "type", "name"?, "kernel"?: {"name"} | {"id"}}``; 201 and the session."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        body = self.json_body()
        if body is None:
            raise PlatformError(400, "No JSON data provided", reason="invalid_input")
        model = await self.sessions.create(ws, body)
        location = url_path_join(self.workspace_base(ws), "api", "sessions", model["id"])
        self.set_header("Location", location)
        self.finish_json(model, status=201)


class SessionHandler(KernelsAPIHandler):
    """``GET``/``PATCH``/``DELETE`` one session."""

    auth_resource = "sessions"

    @web.authenticated
    @authorized
    async def get(self, workspace_id: str, session_id: str) -> None:
        """One session."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.sessions.get(ws, session_id))

    @web.authenticated
    @authorized
    async def patch(self, workspace_id: str, session_id: str) -> None:
        """Rename the session, or give it another kernel."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        body = self.json_body()
        if body is None:
            raise PlatformError(400, "No JSON data provided", reason="invalid_input")
        self.finish_json(await self.sessions.update(ws, session_id, body))

    @web.authenticated
    @authorized
    async def delete(self, workspace_id: str, session_id: str) -> None:
        """Shut the session's kernel down and delete the session."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        await self.sessions.delete(ws, session_id)
        self.set_status(204)
        self.finish()


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/api/kernelspecs", KernelSpecsHandler),
    (rf"{WORKSPACE_ROUTE}/api/kernelspecs/{KERNEL_NAME}", KernelSpecHandler),
    (rf"{WORKSPACE_ROUTE}/kernelspecs/{KERNEL_NAME}/(?P<path>[^/]+)", KernelSpecResourceHandler),
    (rf"{WORKSPACE_ROUTE}/api/kernels", MainKernelHandler),
    (rf"{WORKSPACE_ROUTE}/api/kernels/{KERNEL_ID}", KernelHandler),
    (
        rf"{WORKSPACE_ROUTE}/api/kernels/{KERNEL_ID}/(?P<action>restart|interrupt)",
        KernelActionHandler,
    ),
    (rf"{WORKSPACE_ROUTE}/api/sessions", SessionRootHandler),
    (rf"{WORKSPACE_ROUTE}/api/sessions/{SESSION_ID}", SessionHandler),
]
