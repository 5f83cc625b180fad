"""``/api/kernelspecs``, ``/api/kernels`` and ``WS /api/kernels/<id>/channels``: jupyter_server's
kernel APIs, answered by the agent's :class:`~kernel_image.kernels.Kernels`.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import uuid
from typing import Any

from tornado.websocket import WebSocketClosedError

from kernel_image import files
from kernel_image.auth import AgentHandler, AgentSocket, ApiError
from kernel_image.kernel import Kernel
from kernel_image.kernel_clients import KernelClient
from kernel_image.kernels import (
    Kernels,
    KernelStartError,
    MaxKernelsReachedError,
    NoSuchKernelError,
    NoSuchKernelSpecError,
)
from kernel_image.kernels_spec import kernelspec_model, kernelspecs_model, resource_path
from kernel_image.kernels_wire import (
    V1_PROTOCOL,
    BadMessageError,
    load_header,
    parse_legacy,
    parse_v1,
)

log = logging.getLogger(__name__)

KERNEL_ID = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"
SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_KERNEL_MESSAGE_BYTES = 32 * 1024 * 1024
"""The largest WebSocket message a kernel client may send (larger closes the socket, 1009)."""


class KernelsBase(AgentHandler):
    """A REST handler that uses the agent's kernels."""

    @property
    def kernels(self) -> Kernels:
        """The agent's kernels."""
        kernels: Kernels = self.settings["kernels"]
        return kernels

    def kernel(self, kernel_id: str) -> Kernel:
        """A running kernel, or 404."""
        try:
            return self.kernels.get(kernel_id)
        except NoSuchKernelError:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}") from None


class KernelSpecsHandler(KernelsBase):
    """``GET /api/kernelspecs``: ``{"default": "python3", "kernelspecs": {...}}``."""

    def get(self) -> None:
        self.write_json(kernelspecs_model())


class KernelSpecHandler(KernelsBase):
    """``GET /api/kernelspecs/<name>``."""

    def get(self, name: str) -> None:
        model = kernelspec_model(name)
        if model is None:
            raise ApiError(404, f"Kernel spec {name} not found")
        self.write_json(model)


class KernelSpecResourceHandler(KernelsBase):
    """``GET /kernelspecs/<name>/<file>``: a kernelspec's logo."""

    def get(self, name: str, file: str) -> None:
        path = resource_path(name, file)
        if path is None:
            raise ApiError(404, f"no resource {file!r} for kernelspec {name!r}")
        self.set_header("Content-Type", mimetypes.guess_type(file)[0] or "application/octet-stream")
        self.set_header("Cache-Control", "max-age=86400")
        self.finish(path.read_bytes())


class KernelRootHandler(KernelsBase):
    """``GET /api/kernels`` lists kernels; ``POST`` starts one."""

    def get(self) -> None:
        self.write_json(self.kernels.models())

    async def post(self) -> None:
        body = self.read_json_object()
        options = {key: body.get(key) for key in ("name", "path", "session_name")}
        for key, value in options.items():
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"{key} must be a string")
        try:
            kernel = await self.kernels.start(
                options["name"], options["path"], options["session_name"]
            )
        except NoSuchKernelSpecError:
            raise ApiError(400, f"no kernelspec named {options['name']!r}") from None
        except MaxKernelsReachedError as e:
            raise ApiError(409, f"at most {e.args[0]} kernels may run at once") from None
        except files.PathError as e:
            raise ApiError(400, f"bad path: {e}") from None
        except KernelStartError as e:
            raise ApiError(500, f"the kernel could not be started: {e}") from None
        self.set_header("Location", f"/api/kernels/{kernel.id}")
        self.write_json(kernel.model(), status=201)


class KernelHandler(KernelsBase):
    """``GET /api/kernels/<id>`` shows a kernel; ``PATCH`` renames its session; ``DELETE``
    shuts it down."""

    def get(self, kernel_id: str) -> None:
        self.write_json(self.kernel(kernel_id).model())

    def patch(self, kernel_id: str) -> None:
        session_name = self.read_json_object().get("session_name")
        if not isinstance(session_name, str) or not session_name:
            raise ApiError(400, "session_name must be a non-empty string")
        try:
            kernel = self.kernels.rename_session(kernel_id, session_name)
        except NoSuchKernelError:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}") from None
        except files.PathError as e:
            raise ApiError(400, f"bad session_name: {e}") from None
        self.write_json(kernel.model())

    async def delete(self, kernel_id: str) -> None:
        self.kernel(kernel_id)
        try:
            await self.kernels.shutdown_kernel(kernel_id)
        except NoSuchKernelError:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}") from None
        self.set_status(204)
        self.finish()


class KernelActionHandler(KernelsBase):
    """``POST /api/kernels/<id>/interrupt`` (204) and ``.../restart`` (200, the model)."""

    async def post(self, kernel_id: str, action: str) -> None:
        self.kernel(kernel_id)
        try:
            if action == "interrupt":
                await self.kernels.interrupt(kernel_id)
                self.set_status(204)
                self.finish()
                return
            kernel = await self.kernels.restart(kernel_id)
        except NoSuchKernelError:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}") from None
        except RuntimeError as e:
            raise ApiError(409, f"the kernel cannot {action} now: {e}") from None
        self.write_json(kernel.model())


class KernelSocket(AgentSocket):
    """``WS /api/kernels/<id>/channels[?session_id=...]``: one client of one kernel.

    Speaks ``v1.kernel.websocket.jupyter.org`` when the client offers it, else jupyter_server's
    legacy JSON format.
    """

    kernel: Kernel | None = None
    client: KernelClient | None = None
    session_id = ""
    _protocol: str | None = None

    @property
    def kernels(self) -> Kernels:
        """The agent's kernels."""
        kernels: Kernels = self.settings["kernels"]
        return kernels

    @property
    def max_message_size(self) -> int:
        """Kernel messages carry code, comms and buffers: more than terminal frames."""
        return MAX_KERNEL_MESSAGE_BYTES

    @property
    def protocol(self) -> str | None:
        """The negotiated subprotocol (``V1_PROTOCOL``), or None for legacy JSON."""
        return self._protocol

    def get_compression_options(self) -> None:
        """No compression (as jupyter_server's default)."""
        return

    async def prepare(self) -> None:
        """Authenticate, find the kernel and wait until it answers, before the upgrade."""
        self.check_upgrade()
        kernel_id = self.path_kwargs.get("kernel_id", "")
        try:
            kernel = self.kernels.get(kernel_id)
        except NoSuchKernelError:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}") from None
        session_id = self.get_query_argument("session_id", None)
        if session_id is None:
            session_id = uuid.uuid4().hex
        elif not SESSION_ID.fullmatch(session_id):
            raise ApiError(400, "session_id must be 1 to 128 letters, digits, '.', '_', ':', '-'")
        self.session_id = session_id
        # As jupyter_server: the socket opens once the kernel answers (or gave up waiting).
        if not await kernel.wait_ready():
            log.warning("kernel %s | not answering; letting a client in anyway", kernel_id)
        if kernel.closing:
            raise ApiError(404, f"Kernel does not exist: {kernel_id}")
        self.kernel = kernel

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """v1 when offered (as jupyter_server chooses), else the legacy format."""
        return V1_PROTOCOL if V1_PROTOCOL in subprotocols else None

    def open(self, *args: str, **kwargs: str) -> None:
        """Attach to the kernel as ``session_id``."""
        kernel = self.kernel
        if kernel is None or kernel.closing:
            self.close(1011, "the kernel has gone")
            return
        self._protocol = self.selected_subprotocol
        # Kernel messages are small and interactive: no Nagle delay (over TCP).
        self.set_nodelay(True)
        self.client = kernel.attach(self, self.session_id)

    async def on_message(self, message: str | bytes) -> None:
        """A client message: check its framing, then sign and send it to the kernel."""
        client = self.client
        if client is None:
            return
        try:
            if self.protocol == V1_PROTOCOL:
                if not isinstance(message, bytes):
                    self.drop(1003, f"{V1_PROTOCOL} frames are binary")
                    return
                channel, parts = parse_v1(message)
            else:
                channel, parts = parse_legacy(message)
            load_header(parts[0])
        except BadMessageError as e:
            self.drop(1007, f"bad kernel message: {e}")
            return
        self.kernels.note_activity()
        try:
            await client.send(channel, parts)
        except Exception as e:
            log.warning("kernel %s | could not pass a message on: %s", client.kernel.id, e)
            self.drop(1011, "the kernel's channel is closed")

    def on_close(self) -> None:
        """Detach: the session is parked if it was the kernel's last client."""
        client, self.client = self.client, None
        if client is not None:
            client.kernel.detach(client, self)

    # -- ClientSocket -------------------------------------------------------------------------

    def send_frame(self, frame: str | bytes) -> Any:
        """Queue one frame; the future resolves once it is written (None if closed)."""
        try:
            return self.write_message(frame, binary=isinstance(frame, bytes))
        except WebSocketClosedError:
            return None

    def drop(self, code: int, reason: str) -> None:
        """Detach at once (later frames are ignored) and close."""
        self.on_close()
        self.close(code, reason)


default_handlers = [
    (r"/api/kernelspecs", KernelSpecsHandler),
    (r"/api/kernelspecs/([^/]+)", KernelSpecHandler),
    (r"/kernelspecs/([^/]+)/([^/]+)", KernelSpecResourceHandler),
    (r"/api/kernels", KernelRootHandler),
    (rf"/api/kernels/{KERNEL_ID}", KernelHandler),
    (rf"/api/kernels/{KERNEL_ID}/(?P<action>restart|interrupt)", KernelActionHandler),
    (rf"/api/kernels/{KERNEL_ID}/channels", KernelSocket),
]
