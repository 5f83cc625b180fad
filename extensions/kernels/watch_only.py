"""What a viewer's kernel connection may send: only ``kernel_info_request`` on the shell
channel (a client asks it on connecting, and it runs nothing). Everything else a viewer sends
(code, completions, comm messages, input replies, interrupts) is dropped.

Both of jupyter_server's wire formats are read: ``v1.kernel.websocket.jupyter.org`` (binary:
offsets, channel, then the message's parts) and the legacy one (a JSON text frame). A frame
that cannot be read is not a kernel_info_request, so it is dropped too.
"""

from __future__ import annotations

import json
from typing import Any

ALLOWED = ("shell", "kernel_info_request")
"""The one (channel, msg_type) a viewer may send."""


def _v1_channel_and_type(frame: bytes) -> tuple[str, Any]:
    """(channel, header's msg_type) of a v1 binary frame, as jupyter_server's
    ``deserialize_msg_from_ws_v1`` reads it: offsets are little-endian 64-bit integers."""
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    channel = frame[offsets[0] : offsets[1]].decode("utf-8")
    header = json.loads(frame[offsets[1] : offsets[2]])
    return channel, header.get("msg_type")


def _legacy_channel_and_type(frame: str) -> tuple[Any, Any]:
    """(channel, header's msg_type) of a legacy JSON frame."""
    message = json.loads(frame)
    return message.get("channel"), message.get("header", {}).get("msg_type")


def viewer_may_send(frame: str | bytes, *, v1: bool) -> bool:
    """Whether a viewer's frame may reach the kernel (see the module's docstring); ``v1``:
    the connection speaks the v1 protocol."""
    try:
        if v1 and isinstance(frame, bytes):
            found = _v1_channel_and_type(frame)
        elif isinstance(frame, str):
            found = _legacy_channel_and_type(frame)
        else:
            return False  # a legacy binary frame carries buffers: never a kernel_info_request
    except (ValueError, IndexError, AttributeError, RecursionError):
        return False
    return found == ALLOWED
