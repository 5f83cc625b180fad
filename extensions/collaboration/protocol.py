"""The y-websocket protocol's frames as the platform checks them, and its two own messages.

A frame is ``[type, ...]``: 0 sync (step 1, step 2 or update, then one length-prefixed
payload), 1 awareness (one length-prefixed awareness update). The platform adds
``SAVE_REQUEST`` (a client asks for an immediate save, with no payload) and sends
``SAVE_STATUS`` (a JSON object ``{"saving": bool, "saved": bool}``). Clients ignore types they
do not know, as y-websocket does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pycrdt import Decoder, Encoder, YMessageType, YSyncMessageType

SAVE_REQUEST = 100
SAVE_STATUS = 101


class InvalidFrame(ValueError):
    """A frame that is not one of the protocol's messages."""


@dataclass(frozen=True)
class Frame:
    """A checked frame: its type, the sync step for sync frames, and its payload."""

    kind: int
    step: int | None
    payload: bytes

    @property
    def changes_document(self) -> bool:
        """Whether applying it may change the document (sync step 2 and updates)."""
        return self.kind == YMessageType.SYNC and self.step != YSyncMessageType.SYNC_STEP1


def _payload(data: bytes) -> bytes:
    """The one length-prefixed payload that ``data`` must be exactly."""
    decoder = Decoder(data)
    try:
        payload = decoder.read_message()
    except (RuntimeError, IndexError) as e:
        msg = "truncated payload"
        raise InvalidFrame(msg) from e
    if payload is None or decoder.i0 != len(data):
        msg = "a frame carries exactly one payload"
        raise InvalidFrame(msg)
    return payload


def parse_frame(message: bytes) -> Frame:
    """Check one binary frame from a client; ``InvalidFrame`` says why it is refused."""
    if not message:
        msg = "empty frame"
        raise InvalidFrame(msg)
    kind = message[0]
    if kind == SAVE_REQUEST and len(message) == 1:
        return Frame(kind, None, b"")
    if kind == YMessageType.SYNC:
        if len(message) < 2 or message[1] not in set(YSyncMessageType):
            msg = "unknown sync step"
            raise InvalidFrame(msg)
        return Frame(kind, message[1], _payload(message[2:]))
    if kind == YMessageType.AWARENESS:
        return Frame(kind, None, _payload(message[1:]))
    msg = f"unknown message type {kind}"
    raise InvalidFrame(msg)


@dataclass(frozen=True)
class AwarenessUpdate:
    """What an awareness update says: each client's clock, and the name it shows, if any."""

    clocks: dict[int, int]
    names: dict[int, str]


def read_awareness(update: bytes) -> AwarenessUpdate:
    """Read an awareness update (each client: id, clock, JSON state whose ``user.name`` is
    the name shown); ``InvalidFrame`` if it is not one."""
    decoder = Decoder(update)
    clocks: dict[int, int] = {}
    names: dict[int, str] = {}
    try:
        for _ in range(decoder.read_var_uint()):
            client_id = decoder.read_var_uint()
            clocks[client_id] = decoder.read_var_uint()
            text = decoder.read_var_string()
            state = json.loads(text) if text else None
            user = state.get("user") if isinstance(state, dict) else None
            if isinstance(user, dict) and "name" in user:
                names[client_id] = str(user["name"])
    except (RuntimeError, IndexError, ValueError, RecursionError) as e:
        msg = "invalid awareness update"
        raise InvalidFrame(msg) from e
    if decoder.i0 != len(update):
        msg = "invalid awareness update"
        raise InvalidFrame(msg)
    return AwarenessUpdate(clocks, names)


def awareness_removal(clients: dict[int, int]) -> bytes:
    """An awareness message that removes ``clients`` (id → last clock), as y-protocols sends
    when a client goes: each state ``null`` with the next clock."""
    encoder = Encoder()
    encoder.write_var_uint(len(clients))
    for client_id, clock in clients.items():
        encoder.write_var_uint(client_id)
        encoder.write_var_uint(clock + 1)
        encoder.write_var_string("null")
    update = encoder.to_bytes()
    prefix = Encoder()
    prefix.write_var_uint(len(update))
    return bytes([YMessageType.AWARENESS]) + prefix.to_bytes() + update


def save_status(*, saving: bool, saved: bool) -> bytes:
    """The ``SAVE_STATUS`` message."""
    return bytes([SAVE_STATUS]) + json.dumps({"saving": saving, "saved": saved}).encode()
