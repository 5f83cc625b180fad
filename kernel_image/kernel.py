"""One running kernel (``Kernel``): jupyter_client's manager of it, its state and activity,
and the clients attached to it.

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
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from kernel_image.kernel_clients import DELIMITER, ClientSocket, KernelClient, zmq_parts
from kernel_image.kernels_wire import BadMessageError, Buffer, load_header, make_parts
from kernel_image.timefmt import isoformat

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio
    from jupyter_client.manager import AsyncKernelManager

    from kernel_image.kernels import Kernels

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


class KernelModel(TypedDict):
    """A kernel as jupyter_server shows it."""

    id: str
    name: str
    last_activity: str
    execution_state: str
    connections: int
    reason: NotRequired[str]


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
