"""Language servers: each workspace's, run by its sandbox's agent and bridged to the browser."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.language_servers.app import LanguageServersApp

    return [{"module": "extensions.language_servers", "app": LanguageServersApp}]
