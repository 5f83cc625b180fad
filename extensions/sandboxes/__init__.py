"""Sandboxes: the isolated environment where a workspace's code runs, and its lifecycle."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.sandboxes.app import SandboxesApp

    return [{"module": "extensions.sandboxes", "app": SandboxesApp}]
