"""The agent that runs inside every sandbox: terminals, files and health over HTTP + WebSocket.

It imports nothing from the platform; the two share only the protocol in docs/agent-protocol.md.
"""

from __future__ import annotations

__version__ = "0.1.0"
