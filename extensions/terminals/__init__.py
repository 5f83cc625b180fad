"""Terminals: Jupyter's terminal API for every workspace, served by its sandbox's agent."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.terminals.app import TerminalsApp

    return [{"module": "extensions.terminals", "app": TerminalsApp}]
