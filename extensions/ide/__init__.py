"""The IDE: login, register, workspace list and editor pages, and the built front end."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.ide.app import IdeApp

    return [{"module": "extensions.ide", "app": IdeApp}]
