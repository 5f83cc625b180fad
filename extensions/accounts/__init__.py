"""Accounts: users, logins, API tokens and administrators."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.accounts.app import AccountsApp

    return [{"module": "extensions.accounts", "app": AccountsApp}]
