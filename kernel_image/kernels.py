"""Kernels: Jupyter kernels (ipykernel) run with jupyter_client, and the clients attached to them.

Each kernel has one IOPub subscription, read by one task, that tracks the kernel's execution
state and activity (with jupyter_server's rules) and fans every message out to the kernel's
clients. Each client (one WebSocket, named by its ``session_id``) has its own shell, control and
stdin sockets, whose identity is the session id, so the kernel's replies reach only the client
that asked.

Nothing is buffered without bound: a client's outgoing queue holds at most
``SOFT_QUEUE_BYTES`` of output (``stream``, ``display_data``, ``update_display_data``,
``clear_output``); output beyond that is dropped for that client only, and it is told so once
with a ``stream`` message on stderr, as jupyter_server does when its IOPub rate limit hits.
Other messages (status, results, replies, comms) are never dropped; past ``HARD_QUEUE_BYTES``, or
when the client takes nothing for ``stalled_client_timeout`` seconds, it is disconnected (1013).

When the last client of a kernel disconnects, its session is *parked* as jupyter_server's
buffering does: its sockets stay open and messages keep being queued (within the same bounds),
so a client that reconnects with the same ``session_id`` (a network blip, a platform restart)
gets what it missed. Another session connecting discards the parked one.

The clients' sockets and queues (and these bounds) are in ``kernel_clients``. jupyter_client
and pyzmq are imported when the first kernel starts (``kernels_backend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from kernel_image import files
from kernel_image.config import AgentConfig
from kernel_image.kernel_clients import DELIMITER, ClientSocket, KernelClient, zmq_parts
from kernel_image.kernels_spec import PYTHON3
from kernel_image.kernels_wire import BadMessageError, Buffer, load_header, make_parts
from kernel_image.spare_kernel import SpareKernel
from kernel_image.timefmt import isoformat

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager

log = logging.getLogger("kernel_image.kernels")

CLIENT_CHANNELS = ("shell", "control", "stdin")
NUDGE_INTERVAL = 0.5
"""Seconds between two ``kernel_info_request`` while waiting for a kernel to answer."""
DROPPABLE = frozenset({"stream", "display_data", "update_display_data", "clear_output"})
UNTRACKED = frozenset(
    {
        "comm_info_request",
        "comm_info_reply",
        "kernel_info_request",
        "kernel_info_reply",
        "shutdown_request",
        "shutdown_reply",
        "interrupt_request",
        "interrupt_reply",
        "debug_request",
        "debug_reply",
        "stream",
        "display_data",
        "update_display_data",
        "execute_input",
        "execute_result",
        "error",
        "status",
        "clear_output",
        "debug_event",
        "input_request",
        "input_reply",
    }
)
"""jupyter_server's ``untracked_message_types``: these do not count as user activity."""


@dataclass(frozen=True)
class KernelsConfig:
    """What the command line decided about kernels (see ``kernel_image.app.parse_args``)."""

    root: str
    max_kernels: int = 4
    idle_timeout: float = 1800.0
    """Seconds an idle, unconnected kernel lives on; 0 never culls."""
    stalled_client_timeout: float = AgentConfig.stalled_client_timeout
    ready_timeout: float = 60.0
    """Seconds a new or restarted kernel may take to answer before clients are let in anyway."""
    shutdown_wait: float = 3.0
    """Seconds a kernel gets to exit after a shutdown request (then SIGTERM, then SIGKILL)."""
    spare: bool = False
    """Start a kernel ahead of time for the first ``start`` (``kernel_image.spare_kernel``)."""
    spare_timeout: float = 600.0
    """Seconds after the workspace's files were loaded before an unused spare is shut down."""


class KernelModel(TypedDict):
    """A kernel as jupyter_server shows it."""

    id: str
    name: str
    last_activity: str
    execution_state: str
    connections: int
    reason: NotRequired[str]


class KernelsError(Exception):
    """Base of the errors handlers turn into HTTP answers."""


class NoSuchKernelError(KernelsError):
    """No running kernel has that id."""


class NoSuchKernelSpecError(KernelsError):
    """No kernelspec has that name."""


class MaxKernelsReachedError(KernelsError):
    """The agent runs ``max_kernels`` kernels already."""


class KernelStartError(KernelsError):
    """The kernel process could not be started."""


class Kernel:
    """One running kernel: its manager, state, activity and clients."""

    def __init__(self, manager: Kernels, kernel_id: str, name: str, km: AsyncKernelManager) -> None:
        self.manager = manager
        self.id = kernel_id
        self.name = name
        self.km = km
        self.execution_state = "starting"
        self.reason = ""
        self.last_activity = time.time()
        self.clients: dict[str, KernelClient] = {}
        self.parked: KernelClient | None = None
        self.closing = False
        self.lock = asyncio.Lock()
        # Names the agent in the few messages it writes itself.
        self.agent_session = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[bool] = loop.create_future()
        self._iopub_seen = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._iopub: zmq.asyncio.Socket | None = None

    def start(self) -> None:
        """Watch IOPub, follow automatic restarts, and find out when the kernel answers."""
        from kernel_image.kernels_backend import connect

        self._iopub = connect(self.km, "iopub")
        self._spawn(self._watch_iopub(self._iopub))
        self.km.add_restart_callback(self._on_restart, "restart")
        self.km.add_restart_callback(self._on_dead, "dead")
        self.become_ready()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def busy(self) -> bool:
        """Whether the kernel is executing something."""
        return self.execution_state == "busy"

    def model(self) -> KernelModel:
        """The REST representation (jupyter_server's kernel model)."""
        model: KernelModel = {
            "id": self.id,
            "name": self.name,
            "last_activity": isoformat(self.last_activity),
            "execution_state": self.execution_state,
            "connections": len(self.clients),
        }
        if self.reason:
            model["reason"] = self.reason
        return model

    # -- IOPub ------------------------------------------------------------------------------

    async def _watch_iopub(self, sock: zmq.asyncio.Socket) -> None:
        from kernel_image.kernels_backend import ZMQError

        while True:
            try:
                message = await sock.recv_multipart(copy=False)
            except ZMQError:
                return
            parts = zmq_parts(message)
            if parts is None:
                continue
            self._iopub_seen.set()
            try:
                msg_type = load_header(parts[0]).get("msg_type")
                parent = load_header(parts[1])
            except BadMessageError:
                continue
            # The agent's own requests (a spare's set-up) are neither activity nor state.
            if parent.get("session") != self.agent_session:
                self._record(msg_type, parent.get("msg_type"), parts)
            droppable = msg_type in DROPPABLE
            for client in self.all_clients():
                client.put("iopub", parts, droppable=droppable)

    def _record(self, msg_type: Any, parent_type: Any, parts: Sequence[Buffer]) -> None:
        """jupyter_server's ``record_activity``: activity and execution state."""

        def tracked(kind: Any) -> bool:
            return isinstance(kind, str) and kind not in UNTRACKED

        if tracked(msg_type) or tracked(parent_type) or self.busy:
            self.last_activity = time.time()
        if msg_type != "status":
            return
        try:
            state = load_header(parts[3]).get("execution_state")
        except BadMessageError:
            return
        if not isinstance(state, str):
            return
        if tracked(parent_type):
            self.execution_state = state
        elif self.execution_state == "starting" and state != "starting":
            # As jupyter_server: after start-up, status caused by untracked requests is idle.
            self.execution_state = "idle"

    def all_clients(self) -> list[KernelClient]:
        """Attached clients and the parked session, if any."""
        clients = list(self.clients.values())
        if self.parked is not None:
            clients.append(self.parked)
        return clients

    def broadcast_status(self, state: str) -> None:
        """Tell every client the kernel's state (after an automatic restart, or death)."""
        parts = make_parts("status", {"execution_state": state}, self.agent_session)
        for client in self.all_clients():
            client.put("iopub", parts, droppable=False)

    # -- readiness ----------------------------------------------------------------------------

    def become_ready(self) -> None:
        """Nudge the kernel (in the background) until it answers; then ``ready`` resolves."""
        if self.ready.done():
            self.ready = asyncio.get_running_loop().create_future()
        self._spawn(self._nudge(self.ready))

    async def wait_ready(self) -> bool:
        """Wait (at most ``ready_timeout``) until the kernel answers; whether it did."""
        try:
            return await asyncio.wait_for(
                asyncio.shield(self.ready), self.manager.config.ready_timeout
            )
        except TimeoutError:
            return False

    async def _nudge(self, ready: asyncio.Future[bool]) -> None:
        """Send ``kernel_info_request`` until one is answered *and* IOPub has delivered a
        message, which proves our subscription is in place (as jupyter_server's nudge)."""
        from kernel_image.kernels_backend import ZMQError, close_socket, connect

        shell = connect(self.km, "shell")
        answered = False
        deadline = time.monotonic() + self.manager.config.ready_timeout
        self._iopub_seen.clear()
        try:
            while time.monotonic() < deadline and not self.closing:
                # Sent again every round: each answer also publishes a status on IOPub.
                header, parent, metadata, content = make_parts(
                    "kernel_info_request", {}, self.agent_session
                )
                signature = self.km.session.sign([header, parent, metadata, content])
                await shell.send_multipart(
                    [DELIMITER, signature, header, parent, metadata, content]
                )
                until = min(deadline, time.monotonic() + NUDGE_INTERVAL)
                while time.monotonic() < until:
                    left = until - time.monotonic()
                    if not answered:
                        if await shell.poll(max(1, int(left * 1000))):
                            await shell.recv_multipart()
                            answered = True
                    elif self._iopub_seen.is_set():
                        break
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._iopub_seen.wait(), left)
                if answered and self._iopub_seen.is_set():
                    if self.execution_state == "starting":
                        self.execution_state = "idle"
                    break
        except ZMQError as e:
            log.warning("kernel %s | nudge failed: %s", self.id, e)
        finally:
            close_socket(shell)
            if not ready.done():
                ready.set_result(answered and self._iopub_seen.is_set())

    # -- clients ----------------------------------------------------------------------------

    def attach(self, socket: ClientSocket, session_id: str) -> KernelClient:
        """Connect a WebSocket as session ``session_id``. A session that is parked, or still
        connected (a client reconnecting before its old connection was noticed to be gone), is
        taken over: the new WebSocket first receives what is still queued for it."""
        from kernel_image.kernels_backend import connect

        current = self.clients.get(session_id)
        if current is not None:
            log.info("kernel %s | session %s took over its connection", self.id, session_id)
            old = current.socket
            current.detach()
            current.attach(socket)
            if old is not None:
                old.drop(1001, "replaced by a new connection of the same session")
            return current
        parked, self.parked = self.parked, None
        if parked is not None and parked.session_id == session_id:
            client = parked
            log.info("kernel %s | session %s reconnected", self.id, session_id)
        else:
            if parked is not None:
                parked.close()
            identity = session_id.encode()
            sockets = {
                channel: connect(self.km, channel, identity=identity) for channel in CLIENT_CHANNELS
            }
            client = KernelClient(self, session_id, sockets)
        self.clients[session_id] = client
        client.attach(socket)
        return client

    def detach(self, client: KernelClient, socket: ClientSocket) -> None:
        """A client's WebSocket closed: park its session if it was the last one."""
        if client.socket is not socket:
            return  # another WebSocket took the session over meanwhile
        if self.clients.get(client.session_id) is client:
            del self.clients[client.session_id]
        if client.closed:
            return
        client.detach()
        if self.clients or self.closing:
            client.close()
            return
        if self.parked is not None and self.parked is not client:
            self.parked.close()
        self.parked = client

    def discard_parked(self, client: KernelClient) -> None:
        """Forget a parked session (it fell too far behind)."""
        if self.parked is client:
            self.parked = None
        client.close()

    # -- automatic restarts -----------------------------------------------------------------

    def _on_restart(self) -> None:
        log.warning("kernel %s | died; restarting it", self.id)
        self.execution_state = "starting"
        self.broadcast_status("restarting")
        self.become_ready()

    def _on_dead(self) -> None:
        log.error("kernel %s | died and could not be restarted", self.id)
        self.execution_state = "dead"
        self.reason = "The kernel died and could not be restarted."
        self.broadcast_status("dead")
        self._spawn(self.manager.forget_dead(self))

    def close(self, reason: str) -> None:
        """Stop watching and disconnect every client (the kernel is gone or going)."""
        from kernel_image.kernels_backend import close_socket

        self.closing = True
        for client in self.all_clients():
            client.close(1000, reason)
        self.clients.clear()
        self.parked = None
        if self._iopub is not None:
            close_socket(self._iopub)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if not self.ready.done():
            self.ready.set_result(False)


class Kernels:
    """The agent's kernels: start, list, interrupt, restart, shut down, cull."""

    def __init__(self, config: KernelsConfig) -> None:
        self.config = config
        self.kernels: dict[str, Kernel] = {}
        self.last_client_activity: float | None = None
        """Unix time of the last kernel request or client message (None before any)."""
        self._starting = 0
        self._mkm: AsyncMultiKernelManager | None = None
        self._runtime_dir: str | None = None
        self._culler: asyncio.Task[None] | None = None
        self.spare: SpareKernel | None = None
        if config.spare:
            self.spare = SpareKernel(self, config.spare_timeout)

    # -- activity -----------------------------------------------------------------------------

    def note_activity(self) -> None:
        """A client asked something of a kernel."""
        self.last_client_activity = time.time()

    @property
    def last_activity(self) -> float | None:
        """Now while any kernel is busy; else the last client request (None before any)."""
        if any(kernel.busy for kernel in self.kernels.values()):
            return time.time()
        return self.last_client_activity

    # -- starting -----------------------------------------------------------------------------

    def _manager(self) -> AsyncMultiKernelManager:
        if self._mkm is None:
            from kernel_image.kernels_backend import make_manager

            # Connection files (the kernels' keys) and IPython's files live in a private folder.
            self._runtime_dir = tempfile.mkdtemp(prefix="agent-kernels-")
            self._mkm = make_manager(self._runtime_dir, self.config.shutdown_wait, log)
        return self._mkm

    def cwd_for(self, path: str | None) -> str:
        """A kernel's working folder: ``path`` if it is a folder, else the nearest folder above
        it (a notebook's own folder), inside the root, as jupyter_server's ``cwd_for_path``."""
        parts = files.split(path or "")
        for end in range(len(parts), -1, -1):
            try:
                return files.existing_directory(self.config.root, "/".join(parts[:end]))
            except (OSError, files.OutsideRootError):
                continue
        return self.config.root

    def _env(self, session_name: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"AGENT_TOKEN", "PYTHONPATH"}}
        # IPython's history and profile stay out of the workspace (they would be synced).
        assert self._runtime_dir is not None  # noqa: S101  (made by _manager)
        env.setdefault("IPYTHONDIR", str(Path(self._runtime_dir) / "ipython"))
        if session_name:
            env.update(self._session_env(session_name))
        return env

    def _session_env(self, session_name: str) -> dict[str, str]:
        """``JPY_SESSION_NAME``: the session's path in the root (``PathError`` if outside)."""
        return {"JPY_SESSION_NAME": str(Path(self.config.root, *files.split(session_name)))}

    async def start(
        self, name: str | None, path: str | None = None, session_name: str | None = None
    ) -> Kernel:
        """Start a kernel in ``path``'s folder; raises ``KernelsError`` subclasses."""
        name = name or PYTHON3
        if name != PYTHON3:
            raise NoSuchKernelSpecError(name)
        if len(self.kernels) + self._starting >= self.config.max_kernels:
            raise MaxKernelsReachedError(self.config.max_kernels)
        cwd = self.cwd_for(path)
        if session_name:
            files.split(session_name)  # a PathError before anything starts
        self.note_activity()
        self._starting += 1
        try:
            session_env = self._session_env(session_name) if session_name else {}
            kernel = await self.spare.take(cwd, session_env) if self.spare else None
            if kernel is None:
                kernel = await self.launch(name, cwd, session_name)
        except Exception as e:
            log.exception("kernels | could not start a %s kernel", name)
            raise KernelStartError(str(e) or type(e).__name__) from e
        finally:
            self._starting -= 1
        self.kernels[kernel.id] = kernel
        log.info("kernel %s | started in %s", kernel.id, cwd)
        return kernel

    async def launch(self, name: str, cwd: str, session_name: str | None) -> Kernel:
        """Start a kernel process and begin watching it, without listing it."""
        mkm = self._manager()
        kernel_id = await mkm.start_kernel(kernel_name=name, cwd=cwd, env=self._env(session_name))
        kernel = Kernel(
            self, kernel_id, name, cast("AsyncKernelManager", mkm.get_kernel(kernel_id))
        )
        kernel.start()
        return kernel

    async def stop_unlisted(self, kernel: Kernel) -> None:
        """Stop a kernel that was never listed (a spare)."""
        kernel.closing = True
        try:
            await self._manager().shutdown_kernel(kernel.id, now=True)
        except Exception:
            log.exception("kernel %s | shutdown failed", kernel.id)
        kernel.close("The kernel was shut down.")

    # -- finding ------------------------------------------------------------------------------

    def get(self, kernel_id: str) -> Kernel:
        """A running kernel; ``NoSuchKernelError`` otherwise."""
        kernel = self.kernels.get(kernel_id)
        if kernel is None or kernel.closing:
            raise NoSuchKernelError(kernel_id)
        return kernel

    def models(self) -> list[KernelModel]:
        """Every running kernel's model, in the order they started."""
        return [k.model() for k in self.kernels.values() if not k.closing]

    # -- actions ------------------------------------------------------------------------------

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt (SIGINT to the kernel's process group)."""
        kernel = self.get(kernel_id)
        self.note_activity()
        await kernel.km.interrupt_kernel()
        log.info("kernel %s | interrupted", kernel_id)

    def rename_session(self, kernel_id: str, session_name: str) -> Kernel:
        """The kernel's session was renamed: its next restarts (asked for or automatic) get the
        new ``JPY_SESSION_NAME``, as jupyter_server's ``update_session`` arranges."""
        kernel = self.get(kernel_id)
        kernel.km.update_env(env=self._session_env(session_name))
        log.info("kernel %s | session renamed", kernel_id)
        return kernel

    async def restart(self, kernel_id: str) -> Kernel:
        """Restart on the same ports (clients stay connected); return once it answers."""
        kernel = self.get(kernel_id)
        self.note_activity()
        async with kernel.lock:
            self.get(kernel_id)
            kernel.execution_state = "restarting"
            try:
                await self._manager().restart_kernel(kernel_id)
            finally:
                kernel.execution_state = "starting"
                kernel.become_ready()
        await kernel.wait_ready()
        log.info("kernel %s | restarted", kernel_id)
        return kernel

    async def shutdown_kernel(self, kernel_id: str, *, now: bool = False) -> None:
        """Ask the kernel to exit (SIGTERM, then SIGKILL, if it does not) and forget it."""
        kernel = self.get(kernel_id)
        self.note_activity()
        async with kernel.lock:
            if kernel.closing:
                return
            kernel.closing = True
            try:
                await self._manager().shutdown_kernel(kernel_id, now=now)
            except Exception:
                log.exception("kernel %s | shutdown failed", kernel_id)
                with contextlib.suppress(Exception):
                    self._manager().remove_kernel(kernel_id)
            finally:
                self.kernels.pop(kernel_id, None)
                kernel.close("The kernel was shut down.")
        log.info("kernel %s | shut down", kernel_id)

    async def forget_dead(self, kernel: Kernel) -> None:
        """Remove a kernel that died for good (as jupyter_server does)."""
        with contextlib.suppress(NoSuchKernelError):
            await self.shutdown_kernel(kernel.id, now=True)

    # -- culling ------------------------------------------------------------------------------

    def start_culling(self) -> None:
        """Cull idle kernels in the background (unless ``idle_timeout`` is 0)."""
        if self.config.idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.create_task(self._cull_forever())

    async def _cull_forever(self) -> None:
        interval = max(0.5, min(60.0, self.config.idle_timeout / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cull_once()
            except Exception:
                log.exception("kernels | culling failed")

    async def cull_once(self) -> int:
        """Shut down kernels idle (not busy, no client) for ``idle_timeout``; how many."""
        culled = 0
        now = time.time()
        for kernel in list(self.kernels.values()):
            idle_for = now - kernel.last_activity
            if kernel.busy or kernel.clients or idle_for <= self.config.idle_timeout:
                continue
            log.info("kernel %s | culled after %.0fs idle", kernel.id, idle_for)
            with contextlib.suppress(NoSuchKernelError):
                await self.shutdown_kernel(kernel.id)
                culled += 1
        return culled

    # -- the end ------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Shut every kernel down (at the agent's exit) and remove the private folder."""
        if self._culler is not None:
            self._culler.cancel()
        if self.spare is not None:
            await self.spare.discard("the agent is stopping")
        if self.kernels:
            log.info("kernels | shutting down %d kernel(s)", len(self.kernels))
        await asyncio.gather(
            *(self.shutdown_kernel(kernel_id) for kernel_id in list(self.kernels)),
            return_exceptions=True,
        )
        if self._mkm is not None:
            self._mkm.context.destroy(linger=0)
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
