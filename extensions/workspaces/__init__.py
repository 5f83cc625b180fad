"""Workspaces: named trees of files in PostgreSQL, served through the Jupyter Contents API."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.workspaces.app import WorkspacesApp

    return [{"module": "extensions.workspaces", "app": WorkspacesApp}]
