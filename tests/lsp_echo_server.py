"""A language server for tests of the bridge: it answers from what it was sent.

``initialize`` answers ``{"capabilities": {}}``; ``echo/seen`` answers every message it received
before; ``echo/ask`` sends the client a ``workspace/applyEdit`` request, and ``echo/config`` a
``workspace/configuration`` request, then answers with the client's answer; any other request
answers ``{"echo": params}``. Notifications are only kept.
"""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO


def read(stream: BinaryIO) -> dict[str, Any] | None:
    """The next message, None at the end of the input."""
    length = 0
    while True:
        line = stream.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    message: dict[str, Any] = json.loads(stream.read(length))
    return message


def write(message: dict[str, Any]) -> None:
    """Send one message."""
    body = json.dumps(message).encode()
    sys.stdout.buffer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    sys.stdout.buffer.flush()


def ask(method: str, params: Any, seen: list[dict[str, Any]]) -> Any:
    """Send the client a request; its answer (other messages meanwhile are kept)."""
    write({"jsonrpc": "2.0", "id": f"server-{len(seen)}", "method": method, "params": params})
    while (message := read(sys.stdin.buffer)) is not None:
        seen.append(message)
        if "method" not in message:
            return message
    return None


def main() -> None:
    seen: list[dict[str, Any]] = []
    asks = {"echo/ask": "workspace/applyEdit", "echo/config": "workspace/configuration"}
    while (message := read(sys.stdin.buffer)) is not None:
        method = message.get("method")
        if "id" not in message or method is None:
            seen.append(message)
            continue
        if method == "initialize":
            result: Any = {"capabilities": {}}
        elif method == "echo/seen":
            result = list(seen)
        elif method in asks:
            result = ask(asks[method], message.get("params"), seen)
        else:
            result = {"echo": message.get("params")}
        seen.append(message)
        write({"jsonrpc": "2.0", "id": message["id"], "result": result})


if __name__ == "__main__":
    main()
