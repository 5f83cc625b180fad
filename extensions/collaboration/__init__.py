"""Live co-editing of a workspace's text files: Y.js documents kept by the platform."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.collaboration.app import CollaborationApp

    return [{"module": "extensions.collaboration", "app": CollaborationApp}]
