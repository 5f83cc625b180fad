"""The agent's settings, fixed at start-up and shared by every handler."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentConfig:
    """What the command line decided (see ``kernel_image.app.parse_args`` for units)."""

    root: str
    """Real path of the folder that file paths and terminal cwds are relative to."""
    token: str
    """The per-sandbox secret every request must carry; empty with
    ``--token-on-first-contact`` (the first ``PUT /api/token`` sets it)."""
    max_terminals: int = 16
    scrollback_bytes: int = 256 * 1024
    max_file_bytes: int = 1024**3
    max_tree_bytes: int = 2 * 1024**3
    stalled_client_timeout: float = 30.0
