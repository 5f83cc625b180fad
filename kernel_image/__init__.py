"""The agent that runs inside every sandbox: terminals, files and health over HTTP + WebSocket.

It imports nothing from the platform; the two share only the protocol in docs/agent-protocol.md.
"""

from __future__ import annotations

from pathlib import Path

# The project's one version: the package metadata (setup.cfg), the images' labels and the
# manifests read this file too; it lives here because the sandbox image carries only this folder.
__version__ = Path(__file__).with_name("VERSION").read_text().strip()
