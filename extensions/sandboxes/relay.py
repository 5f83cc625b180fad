"""A WebSocket relayed to a sandbox's agent: the part the terminal, kernel and language server
relays share.

The handler connects to the agent before it accepts the client's upgrade, then relays. Each
direction awaits the other side's write before it reads more, so a slow client slows the agent
instead of filling this process's memory. ``AgentRelay`` relays messages (Tornado reads and
writes each one); ``SplicedRelay`` relays frames as bytes, reading only what it must check.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketHandler

from extensions.sandboxes.frames import (
    CLOSE,
    CONTINUATION,
    PONG,
    PROTOCOL_ERROR,
    TOO_BIG,
    FrameError,
    next_frame,
)
from platform_server.handlers import write_json_error

# The close of a client's socket whose sandbox does not answer (1013: try again later).
UNRESPONSIVE_CLOSE = (1013, "The sandbox is not responding: try again in a moment.")


READ_BYTES = 1 << 20
"""The most bytes taken from one side's connection in one read."""


class RelayBase(WebSocketHandler):
    """What both relays share: JSON errors for a refused upgrade, and ``refusal``."""

    refusal: tuple[int, str] | None = None
    """Set before the upgrade when the agent cannot be reached: the client's socket is then
    accepted and closed at once with this (code, reason), which a browser can read (it
    cannot read an HTTP error answered to its upgrade)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refused upgrade is answered as every API error: JSON ``{"message", "reason"}``."""
        write_json_error(self, status_code, kwargs.get("exc_info"))


class AgentRelay(RelayBase):
    """Mixin of a ``WebSocketHandler`` relaying to ``upstream``; subclasses say what a closed
    upstream means to their clients (``upstream_closed``)."""

    upstream: WebSocketClientConnection | None = None
    _pump: asyncio.Task[None] | None = None

    def start_relay(self) -> None:
        """Relay the agent's messages to the client from now on (call from ``open``); close
        at once with ``refusal`` if set."""
        if self.refusal is not None:
            self.close(*self.refusal)
            return
        # Small, interactive frames: without this, Nagle's algorithm and the client's delayed
        # ACK can hold a frame back for ~40 ms.
        self.set_nodelay(True)
        self._pump = asyncio.create_task(self._relay_from_agent())

    def upstream_closed(self, upstream: WebSocketClientConnection) -> None:
        """The agent closed its side: close the client's, with a code it understands."""
        raise NotImplementedError

    async def _relay_from_agent(self) -> None:
        upstream = self.upstream
        assert upstream is not None  # noqa: S101  (connected before the upgrade)
        while True:
            message = await upstream.read_message()
            if message is None:
                self.upstream_closed(upstream)
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                upstream.close()
                return

    async def forward(self, message: str | bytes, lost: tuple[int, str]) -> None:
        """Send a client's message to the agent; close the client with ``lost`` (code,
        reason) if the agent's side is gone."""
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            self.close(*lost)

    def on_close(self) -> None:
        """Close the agent's side too."""
        if self.upstream is not None:
            self.upstream.close()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()


class SplicedRelay(RelayBase):
    """Mixin of a ``WebSocketHandler`` passing frames between its client and ``agent`` (the
    agent's WebSocket connection, upgraded: ``open_agent_stream``) as they are on the wire.

    Client and agent speak the same framing and neither side negotiates an extension, so a
    frame needs no decoding and re-encoding on the way. The client's frames are still read
    whole and checked before they go on (``check_message``), pongs are noted for the
    keep-alive pings of this side, and the agent's close becomes ``upstream_closed``; the
    agent's own pings pass through and the client answers them. Writes only ever carry
    whole frames, so a close or a ping Tornado writes on the client's socket lands between
    two frames.
    """

    agent: IOStream | None = None
    _output: asyncio.Task[None] | None = None
    _client_closing = False
    """The client sent its close: the agent's answer to it passes on."""
    _ended = False
    """The client's side has ended: nothing is left to tell it."""

    def get_compression_options(self) -> None:
        """No compression: a compressed frame could not pass through unchanged."""

    def check_message(self, opcode: int, payload: bytes) -> tuple[int, str] | None:
        """The close (code, reason) for a client's data message (``opcode`` text or binary,
        ``payload`` unmasked and whole) that must not reach the agent; None to pass it on.
        Override in a subclass: the default passes everything on."""
        return None

    def passes_messages(self) -> bool:
        """Whether the client's data messages, once checked, go on to the agent (else they
        are dropped; control frames always go on). Override in a subclass: the default is
        True."""
        return True

    def upstream_closed(self) -> None:
        """The agent closed its side or went away: close the client's, with a code it
        understands."""
        raise NotImplementedError

    def agent_gone(self) -> None:
        """A client's frame could not be written to the agent. Override in a subclass to
        close with another code: the default is ``upstream_closed``."""
        self.upstream_closed()

    async def splice(self) -> None:
        """Relay until the client's side ends (await it from ``open``: Tornado reads the
        client's socket itself only once ``open`` returns); close at once with ``refusal``
        if set."""
        if self.refusal is not None:
            self.close(*self.refusal)
            return
        agent, connection = self.agent, self.ws_connection
        assert agent is not None  # noqa: S101  (connected before the upgrade)
        assert connection is not None  # noqa: S101
        assert connection.stream is not None  # noqa: S101
        client = connection.stream
        # Small, interactive frames: without this, Nagle's algorithm and the client's delayed
        # ACK can hold a frame back for ~40 ms.
        self.set_nodelay(True)
        self._output = asyncio.create_task(self._agent_to_client(agent, client))
        try:
            await self._client_to_agent(client, agent)
        finally:
            self._ended = True
            agent.close()

    async def _client_to_agent(self, client: IOStream, agent: IOStream) -> None:
        """Pass the client's frames to the agent, whole and checked, until either side ends."""
        pending = bytearray()  # read, not yet a whole frame
        held = bytearray()  # the frames of a fragmented message, until its last one
        message: bytearray | None = None  # that message's payload so far
        opcode = 0  # and its opcode
        limit = self.max_message_size
        while True:
            try:
                pending += await client.read_bytes(READ_BYTES, partial=True)
            except StreamClosedError:
                return
            out = bytearray()
            scan = 0
            problem: tuple[int, str] | None = None
            try:
                while (
                    problem is None
                    and (frame := next_frame(pending, scan, masked=True, max_payload=limit))
                    is not None
                ):
                    scan = frame.end
                    raw = pending[frame.start : frame.end]
                    if frame.is_control:
                        if frame.opcode == PONG:
                            self.on_pong(frame.payload(pending))
                        elif frame.opcode == CLOSE and not self._client_closing:
                            if self.ws_connection is None:
                                client.close()  # the answer to our own close: done
                                return
                            self._client_closing = True
                        out += raw
                        continue
                    if (frame.opcode == CONTINUATION) != (message is not None):
                        raise FrameError(PROTOCOL_ERROR, "a continuation must continue a message")
                    if message is not None or not frame.fin:
                        if message is None:
                            message, opcode = bytearray(), frame.opcode
                        message += frame.payload(pending)
                        held += raw
                        if len(message) > limit:
                            raise FrameError(TOO_BIG, "message too big")
                        if not frame.fin:
                            continue
                        payload, raw, message, held = bytes(message), held, None, bytearray()
                    else:
                        opcode, payload = frame.opcode, frame.payload(pending)
                    problem = self.check_message(opcode, payload)
                    if problem is None and self.passes_messages():
                        out += raw
            except FrameError as e:
                problem = e.code, e.reason
            del pending[:scan]
            if problem is None and len(pending) + len(held) > 2 * limit:
                # Control frames between the parts of a message, without end.
                problem = TOO_BIG, "message too big"
            if out:
                # What came before a bad frame still goes on, as it would one by one.
                try:
                    await agent.write(memoryview(out))
                except StreamClosedError:
                    self.agent_gone()
                    return
            if problem is not None:
                self.close(*problem)
                return

    async def _agent_to_client(self, agent: IOStream, client: IOStream) -> None:
        """Pass the agent's frames to the client, whole, until either side ends."""
        pending = bytearray()
        limit = self.max_message_size
        while True:
            try:
                pending += await agent.read_bytes(READ_BYTES, partial=True)
            except StreamClosedError:
                if self._client_closing:
                    client.close()  # no answer to the client's close will come
                elif not self._ended:
                    self.upstream_closed()
                return
            scan, closed = 0, False
            try:
                while (
                    frame := next_frame(pending, scan, masked=False, max_payload=limit)
                ) is not None:
                    if frame.opcode == CLOSE:
                        # The answer to the client's close passes on; the agent's own close
                        # is told the client as the subclass says.
                        closed = True
                        if self._client_closing:
                            scan = frame.end
                        break
                    scan = frame.end
            except FrameError:
                closed = True
            if scan:
                try:
                    await client.write(memoryview(pending[:scan]))  # a copy: ``pending`` changes
                except StreamClosedError:
                    return
                del pending[:scan]
            if closed:
                agent.close()
                if self._client_closing:
                    client.close()
                else:
                    self.upstream_closed()
                return

    def on_close(self) -> None:
        """Close the agent's side too."""
        if self.agent is not None:
            self.agent.close()
        if self._output is not None and not self._output.done():
            self._output.cancel()
