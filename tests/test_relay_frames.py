"""WebSocket frames as the spliced relay reads them, and the keystrokes it accepts unparsed."""

from __future__ import annotations

import json
import os
import struct

import pytest

from extensions.sandboxes.frames import CLOSE, PING, TEXT, FrameError, next_frame
from extensions.terminals.proxy import invalid_frame, plain_stdin


def client_frame(payload: bytes, opcode: int = TEXT, *, fin: bool = True) -> bytes:
    """A masked frame, as a browser sends it."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header(len(payload), opcode, fin=fin, masked=True) + mask + masked


def header(length: int, opcode: int = TEXT, *, fin: bool = True, masked: bool = False) -> bytes:
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes([first, bit | length])
    if length <= 0xFFFF:
        return bytes([first, bit | 126]) + struct.pack("!H", length)
    return bytes([first, bit | 127]) + struct.pack("!Q", length)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_a_whole_frame_is_found_and_unmasked(size: int) -> None:
    payload = os.urandom(size)
    wire = b"junk" + client_frame(payload) + b"next"
    frame = next_frame(wire, 4, masked=True, max_payload=1 << 20)
    assert frame is not None
    assert (frame.fin, frame.opcode, frame.start, frame.end) == (True, TEXT, 4, len(wire) - 4)
    assert frame.payload(wire) == payload


def test_a_frame_cut_anywhere_waits_for_the_rest() -> None:
    wire = client_frame(b"x" * 300)
    for cut in range(len(wire)):
        assert next_frame(wire[:cut], 0, masked=True, max_payload=1 << 20) is None
    assert next_frame(wire, 0, masked=True, max_payload=1 << 20) is not None


def test_server_frames_are_unmasked() -> None:
    wire = header(5) + b"hello"
    frame = next_frame(wire, 0, masked=False, max_payload=100)
    assert frame is not None
    assert frame.payload(wire) == b"hello"


@pytest.mark.parametrize(
    ("wire", "masked", "code"),
    [
        (header(5) + b"hello", True, 1002),  # a client's frame must be masked
        (client_frame(b"hello"), False, 1002),  # a server's must not
        (bytes([0xC1, 0x80]) + b"\0" * 4, True, 1002),  # a reserved bit (compression)
        (header(0, 0x3), False, 1002),  # a reserved opcode
        (header(126, PING), False, 1002),  # a control frame over 125 bytes
        (header(0, CLOSE, fin=False), False, 1002),  # a fragmented control frame
        (header(1 << 40), False, 1009),  # too big, known from the header alone
    ],
)
def test_frames_that_break_the_protocol_are_refused(wire: bytes, masked: bool, code: int) -> None:
    with pytest.raises(FrameError) as refused:
        next_frame(wire, 0, masked=masked, max_payload=1 << 20)
    assert refused.value.code == code


@pytest.mark.parametrize(
    "message",
    [
        '["stdin","a"]',
        '["stdin", "a"]',
        '["stdin","héllo wörld ✓"]',
        '["stdin",""]',
        '["stdin","]',
        '["stdin", "]',
        '["stdin","a","b"]',
        '["stdin","a\\"]',
        '["stdin","a\\\\"]',
        '["stdin","\\r"]',
        '["stdin","\t"]',
        '["stdin","\x00"]',
        '["stdin","a"] ',
        '["stdin","a"]]',
        '["stdin", 1]',
        '["stdin","a"',
        '["stdinx","a"]',
    ],
)
def test_keystrokes_taken_unparsed_are_exactly_those_json_accepts(message: str) -> None:
    try:
        frame = json.loads(message)
        accepted = len(frame) == 2 and frame[0] == "stdin" and isinstance(frame[1], str)
    except ValueError:
        accepted = False
    if plain_stdin(message):
        assert accepted
    assert (invalid_frame(message) is None) == accepted
