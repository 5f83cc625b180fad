"""WebSocket frames (RFC 6455) found in a byte buffer, for a relay that passes them on as bytes.

Only what a relay needs: where a frame starts and ends, its opcode, and its payload unmasked
when it has to be read. No extensions are negotiated on either side of a relay, so a frame
with a reserved bit set is an error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
PROTOCOL_ERROR, TOO_BIG = 1002, 1009


class FrameError(Exception):
    """A frame that breaks the protocol or the size limit; ``code`` is the close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame of a buffer: ``buffer[start:end]``, its payload from ``payload_start``."""

    fin: bool
    opcode: int
    mask: bytes
    """The 4-byte masking key; empty for an unmasked frame (a server's)."""
    start: int
    payload_start: int
    end: int

    @property
    def is_control(self) -> bool:
        """Close, ping or pong."""
        return bool(self.opcode & 0x8)

    def payload(self, buffer: bytes | bytearray) -> bytes:
        """The frame's payload, unmasked."""
        data = bytes(buffer[self.payload_start : self.end])
        if not self.mask or not data:
            return data
        # XOR with the key repeated over the payload, as one big-integer operation.
        key = (self.mask * (len(data) // 4 + 1))[: len(data)]
        unmasked = int.from_bytes(data, "big") ^ int.from_bytes(key, "big")
        return unmasked.to_bytes(len(data), "big")


def next_frame(
    buffer: bytes | bytearray, start: int, *, masked: bool, max_payload: int
) -> Frame | None:
    """The frame at ``buffer[start:]`` if the buffer holds all of it, else None.

    ``masked`` is what the sender must do (clients mask, servers do not). Raises
    ``FrameError`` for a frame that breaks RFC 6455 or whose payload exceeds ``max_payload``
    bytes, as soon as its header shows it.
    """
    available = len(buffer) - start
    if available < 2:
        return None
    first, second = buffer[start], buffer[start + 1]
    if first & 0x70:
        raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
    opcode = first & 0x0F
    if opcode not in OPCODES:
        raise FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
    if bool(second & 0x80) != masked:
        raise FrameError(PROTOCOL_ERROR, "client frames must be masked, server frames not")
    length, header = second & 0x7F, 2
    if opcode & 0x8 and (length > 125 or not first & 0x80):
        raise FrameError(PROTOCOL_ERROR, "control frames are whole and at most 125 bytes")
    if length == 126:
        if available < 4:
            return None
        (length,), header = struct.unpack_from("!H", buffer, start + 2), 4
    elif length == 127:
        if available < 10:
            return None
        (length,), header = struct.unpack_from("!Q", buffer, start + 2), 10
    if length > max_payload:
        raise FrameError(TOO_BIG, "message too big")
    mask = b""
    if masked:
        if available < header + 4:
            return None
        mask = bytes(buffer[start + header : start + header + 4])
        header += 4
    end = start + header + length
    if end > len(buffer):
        return None
    return Frame(bool(first & 0x80), opcode, mask, start, start + header, end)
