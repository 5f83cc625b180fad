"""Kernel clients: each client session's sockets and its bounded queue of messages to write."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kernel_image.kernels_wire import (
    V1_PROTOCOL,
    BadMessageError,
    Buffer,
    make_parts,
    serialize_legacy,
    serialize_v1,
)

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio
    from jupyter_client.manager import AsyncKernelManager

# The kernels' logger, as before these classes moved out of kernel_image.kernels.
log = logging.getLogger("kernel_image.kernels")

DELIMITER = b"<IDS|MSG>"
SOFT_QUEUE_BYTES = 8 * 1024 * 1024
"""Output queued for one client beyond which further output is dropped for it (bytes)."""
HARD_QUEUE_BYTES = 32 * 1024 * 1024
"""Messages queued for one client beyond which it is disconnected (bytes)."""
PARKED_QUEUE_BYTES = 16 * 1024 * 1024
"""Messages kept for a disconnected session beyond which it is discarded (bytes)."""
DROPPED_NOTICE = (
    "Some output was not shown: it came faster than this client could take it. "
    "The kernel kept running; print less, or write large output to a file.\n"
)


class _ClientsConfig(Protocol):
    @property
    def stalled_client_timeout(self) -> float: ...


class _ClientsManager(Protocol):
    @property
    def config(self) -> _ClientsConfig: ...


class ClientKernel(Protocol):
    """What a kernel client needs from its kernel (``kernel_image.kernel.Kernel``)."""

    @property
    def id(self) -> str: ...

    @property
    def manager(self) -> _ClientsManager: ...

    @property
    def km(self) -> AsyncKernelManager: ...

    @property
    def agent_session(self) -> str: ...

    def detach(self, client: KernelClient, socket: ClientSocket) -> None:
        """A client's WebSocket closed: park its session if it was the last one."""

    def discard_parked(self, client: KernelClient) -> None:
        """Forget a parked session (it fell too far behind)."""


class ClientSocket(Protocol):
    """What a kernel client needs from its WebSocket."""

    @property
    def protocol(self) -> str | None:
        """``V1_PROTOCOL`` or None (the legacy JSON format)."""

    def send_frame(self, frame: str | bytes) -> asyncio.Future[None] | None:
        """Queue one frame; the future resolves once it is written. None if closed."""

    def drop(self, code: int, reason: str) -> None:
        """Close the WebSocket."""


def zmq_parts(frames: Sequence[zmq.Frame]) -> list[Buffer] | None:
    """``[header, parent, metadata, content, *buffers]`` of a received ZMQ message, as views
    of its frames (a large output is not copied on the way in)."""
    for index, frame in enumerate(frames):
        if len(frame) == len(DELIMITER) and frame.bytes == DELIMITER:
            parts: list[Buffer] = [f.buffer for f in frames[index + 2 :]]
            return parts if len(parts) >= 4 else None
    return None


@dataclass(frozen=True)
class Queued:
    """A message waiting to be written to a client."""

    channel: str
    parts: Sequence[Buffer]
    size: int
    droppable: bool


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class KernelClient:
    """One client session of a kernel: its sockets and what waits to be written to it."""

    def __init__(
        self, kernel: ClientKernel, session_id: str, sockets: dict[str, zmq.asyncio.Socket]
    ) -> None:
        self.kernel = kernel
        self.session_id = session_id
        self.sockets = sockets
        self.socket: ClientSocket | None = None
        self.closed = False
        self._queue: deque[Queued] = deque()
        self._queued = 0
        self._output = 0
        self._wake = asyncio.Event()
        self._dropping = False
        self._writer: asyncio.Task[None] | None = None
        self._readers = [
            asyncio.create_task(self._read(channel, sock)) for channel, sock in sockets.items()
        ]

    # -- kernel → client ---------------------------------------------------------------------

    async def _read(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        """Queue the kernel's replies on one of this client's sockets."""
        from kernel_image.kernels_backend import ZMQError

        while True:
            try:
                message = await sock.recv_multipart(copy=False)
            except ZMQError:
                return
            parts = zmq_parts(message)
            if parts is not None:
                self.put(channel, parts, droppable=False)

    def put(self, channel: str, parts: Sequence[Buffer], *, droppable: bool) -> None:
        """Queue a message for the client (dropping output it cannot keep up with)."""
        if self.closed:
            return
        size = sum(len(part) for part in parts)
        # One large output still goes through; output piling up behind it does not.
        if droppable and self._output and self._output + size > SOFT_QUEUE_BYTES:
            if not self._dropping:
                # Said at once, so that it arrives before the request's final status.
                self._dropping = True
                self._notice_dropped(parts[1])
            return
        self._dropping = self._dropping and not droppable
        limit = HARD_QUEUE_BYTES if self.socket is not None else PARKED_QUEUE_BYTES
        if self._queued and self._queued + size > limit:
            self._overflow()
            return
        self._queue.append(Queued(channel, parts, size, droppable))
        self._queued += size
        self._output += size if droppable else 0
        self._wake.set()

    def _overflow(self) -> None:
        log.warning("kernel %s | session %s fell too far behind", self.kernel.id, self.session_id)
        self._queue.clear()
        self._queued = self._output = 0
        if self.socket is not None:
            self.socket.drop(1013, "client too slow: kernel messages not read in time")
        else:
            self.kernel.discard_parked(self)

    def attach(self, socket: ClientSocket) -> None:
        """Start writing to a WebSocket (first whatever was queued while parked)."""
        self.socket = socket
        self._writer = asyncio.create_task(self._write_loop(socket))

    def detach(self) -> None:
        """The WebSocket went away; keep queueing (parked) until ``close``."""
        self.socket = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    async def _write_loop(self, socket: ClientSocket) -> None:
        """Write queued messages one at a time, each once the previous one was taken."""
        timeout = self.kernel.manager.config.stalled_client_timeout
        v1 = socket.protocol == V1_PROTOCOL
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            try:
                frame = (
                    serialize_v1(item.channel, item.parts)
                    if v1
                    else serialize_legacy(item.channel, item.parts)
                )
            except BadMessageError as e:
                log.warning("kernel %s | unreadable message skipped: %s", self.kernel.id, e)
                frame = None
            if frame is not None:
                future = socket.send_frame(frame)
                if future is None:
                    return
                try:
                    await asyncio.wait_for(asyncio.shield(future), timeout)
                except TimeoutError:
                    future.add_done_callback(_consume)
                    log.warning(
                        "kernel %s | dropping a client that read nothing for %.0fs",
                        self.kernel.id,
                        timeout,
                    )
                    socket.drop(1013, "client too slow: kernel messages not read in time")
                    return
                except Exception:
                    return  # the socket closed; what is still queued waits for a reconnect
            del frame
            if self._queue and self._queue[0] is item:
                self._queue.popleft()
                self._queued -= item.size
                self._output -= item.size if item.droppable else 0

    def _notice_dropped(self, parent: Buffer) -> None:
        notice = make_parts(
            "stream", {"name": "stderr", "text": DROPPED_NOTICE}, self.kernel.agent_session, parent
        )
        size = sum(len(p) for p in notice)
        self._queue.append(Queued("iopub", notice, size, droppable=False))
        self._queued += size
        self._wake.set()

    # -- client → kernel ---------------------------------------------------------------------

    async def send(self, channel: str, parts: Sequence[Buffer]) -> None:
        """Sign a client's message with the kernel's key and send it on ``channel``."""
        sock = self.sockets.get(channel)
        if sock is None:
            log.info("kernel %s | ignoring a message on channel %r", self.kernel.id, channel)
            return
        signature = self.kernel.km.session.sign(list(parts[:4]))
        await sock.send_multipart([DELIMITER, signature, *parts])

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the sockets and the WebSocket, if any. Safe to call twice."""
        from kernel_image.kernels_backend import close_socket

        if self.closed:
            return
        self.closed = True
        socket = self.socket
        self.detach()
        for task in self._readers:
            task.cancel()
        for sock in self.sockets.values():
            close_socket(sock)
        self._queue.clear()
        self._queued = self._output = 0
        if socket is not None:
            socket.drop(code, reason)
