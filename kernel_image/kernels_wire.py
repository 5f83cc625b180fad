"""The kernel WebSocket's two wire formats, as jupyter_server speaks them (no ZMQ here).

A kernel message travels between the agent and the kernel as ZMQ parts ``[header, parent_header,
metadata, content, *buffers]`` (JSON bytes, then raw buffers), signed with the kernel's key.
Between a client and the agent it is one WebSocket frame in either format:

- ``v1.kernel.websocket.jupyter.org`` (the subprotocol current JupyterLab negotiates): a binary
  frame ``[n: u64 LE][offsets: n x u64 LE][channel][header][parent][metadata][content][buffers]``.
  The parts are the ZMQ parts themselves, so the agent passes them through without parsing.
- the legacy JSON format (no subprotocol): a text frame holding one JSON object ``{"header",
  "msg_id", "msg_type", "parent_header", "metadata", "content", "buffers": [], "channel"}``, or,
  for a message with buffers, a binary frame ``[n: u32 BE][offsets: n x u32 BE][JSON][buffers]``.

These mirror ``jupyter_server.services.kernels.connection.base`` (which the sandbox does not have).
"""

from __future__ import annotations

import itertools
import json
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

from kernel_image.timefmt import isoformat

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
CLIENT_CHANNELS = frozenset({"shell", "control", "stdin"})
"""Channels a client may send on (iopub is the kernel's alone)."""
MAX_BUFFERS = 1024
"""The most buffers one message may carry."""
PROTOCOL_VERSION = "5.4"

Buffer = bytes | memoryview


class BadMessageError(ValueError):
    """A frame that is not a kernel message in the socket's format; the text says why."""


def _json_part(obj: Any) -> bytes:
    """One JSON part, as jupyter_client's ``json_packer`` writes it."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode(
            "utf8", errors="surrogateescape"
        )
    except (TypeError, ValueError) as e:
        msg = f"a message part cannot be written as JSON: {e}"
        raise BadMessageError(msg) from None


def load_header(part: Buffer) -> dict[str, Any]:
    """A header (or parent header) part as a dict; ``BadMessageError`` if it is not one."""
    try:
        header = json.loads(bytes(part))
    except (ValueError, UnicodeDecodeError):
        msg = "message headers must be JSON"
        raise BadMessageError(msg) from None
    if not isinstance(header, dict):
        msg = "message headers must be JSON objects"
        raise BadMessageError(msg)
    return header


# --- v1 ---------------------------------------------------------------------------------------


def parse_v1(frame: bytes) -> tuple[str, list[Buffer]]:
    """Channel and parts of a v1 frame (views into it, nothing copied)."""
    if len(frame) < 8:
        msg = "v1 frames start with an offset count"
        raise BadMessageError(msg)
    count = int.from_bytes(frame[:8], "little")
    if not 6 <= count <= 6 + MAX_BUFFERS:
        msg = "v1 frames need a channel, a header, a parent header, metadata and content"
        raise BadMessageError(msg)
    table_end = 8 * (count + 1)
    if len(frame) < table_end:
        msg = "v1 frame shorter than its offset table"
        raise BadMessageError(msg)
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    if offsets[0] != table_end or any(b < a for a, b in itertools.pairwise(offsets)):
        msg = "v1 offsets must follow the table and never decrease"
        raise BadMessageError(msg)
    if offsets[-1] > len(frame):
        msg = "v1 offsets point past the end of the frame"
        raise BadMessageError(msg)
    view = memoryview(frame)
    try:
        channel = bytes(view[offsets[0] : offsets[1]]).decode()
    except UnicodeDecodeError:
        msg = "v1 channel names are UTF-8"
        raise BadMessageError(msg) from None
    parts: list[Buffer] = [view[start:end] for start, end in itertools.pairwise(offsets[1:])]
    return channel, parts


def serialize_v1(channel: str, parts: Sequence[Buffer]) -> bytes:
    """A v1 frame of ``channel`` and ZMQ parts."""
    name = channel.encode()
    offsets = [8 * (len(parts) + 3)]
    offsets.append(offsets[-1] + len(name))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    table = b"".join(n.to_bytes(8, "little") for n in [len(offsets), *offsets])
    return b"".join([table, name, *parts])


# --- legacy JSON ------------------------------------------------------------------------------


def parse_legacy(frame: str | bytes) -> tuple[str, list[Buffer]]:
    """Channel and ZMQ parts of a legacy frame (JSON text, or binary with buffers)."""
    buffers: list[Buffer] = []
    text: str | bytes = frame
    if isinstance(frame, bytes):
        text, buffers = _split_binary(frame)
    try:
        message = json.loads(text)
    except ValueError:
        msg = "frames must be JSON kernel messages"
        raise BadMessageError(msg) from None
    if not isinstance(message, dict) or not isinstance(message.get("header"), dict):
        msg = "a kernel message is a JSON object with a header"
        raise BadMessageError(msg)
    channel = message.get("channel") or "shell"
    if not isinstance(channel, str):
        msg = "channel must be a string"
        raise BadMessageError(msg)
    parts: list[Buffer] = [
        _json_part(message["header"]),
        _json_part(message.get("parent_header") or {}),
        _json_part(message.get("metadata") or {}),
        _json_part(message.get("content") or {}),
    ]
    return channel, parts + buffers


def _split_binary(frame: bytes) -> tuple[bytes, list[Buffer]]:
    """jupyter_server's ``deserialize_binary_message`` framing: the JSON, then buffers."""
    if len(frame) < 8:
        msg = "binary frames start with a buffer count"
        raise BadMessageError(msg)
    (count,) = struct.unpack("!I", frame[:4])
    if not 1 <= count <= 1 + MAX_BUFFERS or len(frame) < 4 * (count + 1):
        msg = "bad buffer table in a binary frame"
        raise BadMessageError(msg)
    offsets = list(struct.unpack("!" + "I" * count, frame[4 : 4 * (count + 1)]))
    ends = [*offsets[1:], len(frame)]
    if offsets[0] < 4 * (count + 1) or any(
        e < s or e > len(frame) for s, e in zip(offsets, ends, strict=True)
    ):
        msg = "bad buffer offsets in a binary frame"
        raise BadMessageError(msg)
    view = memoryview(frame)
    return bytes(view[offsets[0] : ends[0]]), [
        view[s:e] for s, e in zip(offsets[1:], ends[1:], strict=True)
    ]


def serialize_legacy(channel: str, parts: Sequence[Buffer]) -> str | bytes:
    """A legacy frame of ZMQ parts: JSON text, or the binary framing when there are buffers.

    The JSON parts are spliced in as they are (ipykernel writes compact JSON), so a large
    output is never parsed and written again; only the header is read, for ``msg_id`` and
    ``msg_type``.
    """
    header = load_header(parts[0])
    texts = [bytes(part).decode("utf-8", errors="replace") or "{}" for part in parts[:4]]
    buffers = parts[4:]
    fields = (
        f'"msg_id":{json.dumps(header.get("msg_id", ""))},'
        f'"msg_type":{json.dumps(header.get("msg_type", ""))},'
        f'"parent_header":{texts[1]},"metadata":{texts[2]},"content":{texts[3]},'
        f'"channel":{json.dumps(channel)}'
    )
    if not buffers:
        return f'{{"header":{texts[0]},{fields},"buffers":[]}}'
    body = f'{{"header":{texts[0]},{fields}}}'.encode()
    chunks: list[Buffer] = [body, *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    table = struct.pack("!" + "I" * (len(chunks) + 1), len(chunks), *offsets)
    return b"".join([table, *chunks])


# --- messages the agent writes itself ---------------------------------------------------------


def make_parts(
    msg_type: str, content: dict[str, Any], session: str, parent: Buffer | None = None
) -> list[bytes]:
    """The ZMQ parts of a new message from the agent (a status or a notice to clients)."""
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "kernel",
        "session": session,
        "date": isoformat(time.time()),
        "version": PROTOCOL_VERSION,
    }
    parent_part = bytes(parent) if parent is not None else b"{}"
    return [_json_part(header), parent_part, b"{}", _json_part(content)]
