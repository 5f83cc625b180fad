"""``Kernels``: a workspace's Jupyter kernels and kernelspecs, answered by its sandbox's agent.

Kernels live in the agent, never here: every call asks it, so any replica sees the same kernels
and a restarted platform finds them again by listing.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote

from tornado.httpclient import HTTPResponse
from traitlets import Instance, Integer
from traitlets.config import LoggingConfigurable

from extensions.sandboxes.agent_client import AgentClient, AgentError, AgentUnresponsive
from extensions.sandboxes.errors import SandboxUnavailable, SandboxUnresponsive
from extensions.sandboxes.manager import Sandboxes
from platform_server.errors import Conflict, DomainError, InvalidInput, NotFound

PYTHON3 = "python3"
# What a Python kernel's spec looks like before any sandbox has answered (kernelspecs are asked
# for when JupyterLab opens, which must not start a sandbox).
FALLBACK_KERNELSPECS: dict[str, Any] = {
    "default": PYTHON3,
    "kernelspecs": {
        PYTHON3: {
            "name": PYTHON3,
            "spec": {
                "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "env": {},
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "interrupt_mode": "signal",
                "metadata": {"debugger": True},
                "kernel_protocol_version": "5.5",
            },
            "resources": {},
        }
    },
}
RESTART_TIMEOUT = 120.0
"""Seconds a restart may take: the agent answers once the new kernel does (at most 60 s)."""


class KernelModel(TypedDict):
    """jupyter_server's kernel model."""

    id: str
    name: str
    last_activity: str
    execution_state: str
    connections: int
    reason: NotRequired[str]


class KernelFailed(DomainError):
    """The agent could not start (or restart) the kernel; the message says why."""

    status_code = 500
    reason = "kernel_failed"


class UnknownKernelSpec(InvalidInput):
    """No kernelspec has that name."""

    reason = "no_such_kernelspec"


def kernel_model(raw: dict[str, Any]) -> KernelModel:
    """The Jupyter model of an agent's kernel record."""
    model: KernelModel = {
        "id": str(raw["id"]),
        "name": str(raw["name"]),
        "last_activity": str(raw["last_activity"]),
        "execution_state": str(raw["execution_state"]),
        "connections": int(raw["connections"]),
    }
    if raw.get("reason"):
        model["reason"] = str(raw["reason"])
    return model


def no_kernel(kernel_id: str) -> NotFound:
    """The 404 of a kernel that does not run (jupyter_server's words)."""
    return NotFound(f"Kernel does not exist: {kernel_id[:64]}")


def agent_message(response: HTTPResponse) -> str:
    """The ``message`` of an agent's JSON error."""
    try:
        return str(json.loads(response.body)["message"])
    except (ValueError, KeyError, TypeError):
        return f"the sandbox's agent answered {response.code}"


class Kernels(LoggingConfigurable):
    """Maps Jupyter's kernel and kernelspec APIs onto a workspace's agent."""

    max_kernels_per_workspace = Integer(
        4,
        help="Kernels one workspace may run at once; one more answers 409. 0 disables this "
        "cap (the agent's own --max-kernels, 4 by default, still applies).",
    ).tag(config=True)

    sandboxes = Instance(Sandboxes, help="The sandboxes service (``PlatformApp.wire_services``).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kernelspecs: dict[str, Any] | None = None

    # --- reaching the agent ------------------------------------------------------------------

    async def client(self, workspace_id: uuid.UUID) -> AgentClient | None:
        """The agent of the workspace's running sandbox; None when it has none,
        ``SandboxUnresponsive`` (504, at once) when it does not answer."""
        row = await self.sandboxes.row(workspace_id)
        if row is not None and row["state"] == "unresponsive":
            raise SandboxUnresponsive
        if row is None or row["state"] != "running":
            return None
        return self.sandboxes.client(row)

    async def _died(self, workspace_id: uuid.UUID) -> bool:
        """After an agent did not answer: whether its sandbox died (it is then marked failed,
        and its kernels are gone) rather than being slow."""
        row = await self.sandboxes.current(workspace_id)
        return row is None or row["state"] != "running"

    async def _call(
        self,
        client: AgentClient,
        method: str,
        path: str,
        body: Any = None,
        *,
        request_timeout: float = 30.0,
    ) -> HTTPResponse:
        """One agent request; its 4xx/5xx become domain errors (404 left to the caller)."""
        try:
            response = await client.request(
                method,
                path,
                json_body=body,
                request_timeout=request_timeout,
                expect=(200, 201, 204, 400, 404, 409, 500),
            )
        except AgentUnresponsive as e:
            self.log.warning("kernels | agent request %s %s unanswered: %s", method, path, e)
            raise SandboxUnresponsive from e
        except AgentError as e:
            self.log.warning("kernels | agent request %s %s failed: %s", method, path, e)
            raise SandboxUnavailable from e
        if response.code == 400:
            raise InvalidInput(agent_message(response))
        if response.code == 409:
            msg = f"The sandbox refused: {agent_message(response)}."
            raise Conflict(msg)
        if response.code == 500:
            raise KernelFailed(agent_message(response))
        return response

    async def _on_kernel(
        self,
        workspace_id: uuid.UUID,
        kernel_id: str,
        method: str,
        suffix: str = "",
        *,
        body: Any = None,
        request_timeout: float = 30.0,
    ) -> HTTPResponse:
        client = await self.client(workspace_id)
        if client is None:
            raise no_kernel(kernel_id)
        path = f"/api/kernels/{quote(kernel_id, safe='')}{suffix}"
        try:
            response = await self._call(client, method, path, body, request_timeout=request_timeout)
        except SandboxUnavailable:
            if await self._died(workspace_id):
                raise no_kernel(kernel_id) from None
            raise
        if response.code == 404:
            raise no_kernel(kernel_id)
        return response

    # --- kernelspecs -------------------------------------------------------------------------

    async def kernelspecs(self, workspace_id: uuid.UUID, base: str) -> dict[str, Any]:
        """jupyter_server's kernelspecs model; resource URLs under ``base`` (``.../w/<uuid>/``).

        From the running sandbox's agent, else from the last answer any agent gave (they all
        run the same image), else a built-in Python 3 spec: listing never starts a sandbox.
        """
        raw = None
        try:
            client = await self.client(workspace_id)
        except SandboxUnresponsive:
            client = None
        if client is not None:
            try:
                response = await self._call(client, "GET", "/api/kernelspecs")
                raw = json.loads(response.body)
                self._kernelspecs = raw
            except (SandboxUnavailable, SandboxUnresponsive, ValueError):
                raw = None
        specs = copy.deepcopy(raw or self._kernelspecs or FALLBACK_KERNELSPECS)
        for name, spec in specs.get("kernelspecs", {}).items():
            spec["resources"] = {
                key: f"{base}kernelspecs/{quote(name, safe='')}/{str(url).rsplit('/', 1)[-1]}"
                for key, url in spec.get("resources", {}).items()
            }
        return specs

    async def kernelspec(self, workspace_id: uuid.UUID, name: str, base: str) -> dict[str, Any]:
        """One kernelspec's model."""
        spec = (await self.kernelspecs(workspace_id, base))["kernelspecs"].get(name)
        if spec is None:
            msg = f"Kernel spec {name[:64]} not found"
            raise NotFound(msg)
        return dict(spec)

    async def resource(self, workspace_id: uuid.UUID, name: str, file: str) -> HTTPResponse:
        """A kernelspec's logo, from the running sandbox's agent (404 without one)."""
        client = await self.client(workspace_id)
        if client is None:
            msg = "Kernelspec resources are served while the sandbox runs."
            raise NotFound(msg)
        path = f"/kernelspecs/{quote(name, safe='')}/{quote(file, safe='')}"
        response = await self._call(client, "GET", path)
        if response.code != 200:
            msg = f"No resource '{file[:64]}' for kernelspec '{name[:64]}'."
            raise NotFound(msg)
        return response

    # --- kernels -----------------------------------------------------------------------------

    async def start(
        self,
        workspace_id: uuid.UUID,
        name: str | None = None,
        path: str | None = None,
        session_name: str | None = None,
    ) -> KernelModel:
        """Start a kernel in the workspace's sandbox (started if needed), in ``path``'s folder."""
        running = await self.running(workspace_id)
        client = await self.client(workspace_id)
        if self.max_kernels_per_workspace and len(running) >= self.max_kernels_per_workspace:
            msg = (
                f"This workspace runs {len(running)} kernels, the most allowed; shut one "
                "down first."
            )
            raise Conflict(msg)
        if client is None:
            row = await self.sandboxes.ensure_running(workspace_id)
            client = self.sandboxes.client(row)
        body = {"name": name or PYTHON3, "path": path or "", "session_name": session_name}
        try:
            response = await self._call(
                client, "POST", "/api/kernels", {k: v for k, v in body.items() if v is not None}
            )
        except InvalidInput as e:
            if "kernelspec" in e.message:
                msg = f"No kernelspec named '{(name or '')[:64]}'."
                raise UnknownKernelSpec(msg) from e
            raise
        model = kernel_model(json.loads(response.body))
        self.log.info("workspace %s | kernel %s started", workspace_id, model["id"])
        return model

    async def running(self, workspace_id: uuid.UUID) -> list[KernelModel]:
        """The workspace's kernels; none while its sandbox is stopped."""
        client = await self.client(workspace_id)
        if client is None:
            return []
        try:
            response = await self._call(client, "GET", "/api/kernels")
        except SandboxUnavailable:
            if await self._died(workspace_id):
                return []
            raise
        return [kernel_model(raw) for raw in json.loads(response.body)]

    async def by_id(self, workspace_id: uuid.UUID) -> dict[str, KernelModel]:
        """The workspace's kernels by id."""
        return {model["id"]: model for model in await self.running(workspace_id)}

    async def get(self, workspace_id: uuid.UUID, kernel_id: str) -> KernelModel:
        """One kernel."""
        response = await self._on_kernel(workspace_id, kernel_id, "GET")
        return kernel_model(json.loads(response.body))

    async def shutdown(self, workspace_id: uuid.UUID, kernel_id: str) -> None:
        """Shut a kernel down (the agent asks it to exit, then kills it)."""
        await self._on_kernel(workspace_id, kernel_id, "DELETE")
        self.log.info("workspace %s | kernel %s shut down", workspace_id, kernel_id[:64])

    async def rename_session(
        self, workspace_id: uuid.UUID, kernel_id: str, session_name: str
    ) -> None:
        """The kernel's session was renamed: it gets the new ``JPY_SESSION_NAME`` (a path
        relative to the workspace) when it next restarts."""
        await self._on_kernel(workspace_id, kernel_id, "PATCH", body={"session_name": session_name})

    async def interrupt(self, workspace_id: uuid.UUID, kernel_id: str) -> None:
        """Interrupt what the kernel runs."""
        await self._on_kernel(workspace_id, kernel_id, "POST", "/interrupt")

    async def restart(self, workspace_id: uuid.UUID, kernel_id: str) -> KernelModel:
        """Restart the kernel; answers once the new process answers."""
        response = await self._on_kernel(
            workspace_id, kernel_id, "POST", "/restart", request_timeout=RESTART_TIMEOUT
        )
        return kernel_model(json.loads(response.body))
