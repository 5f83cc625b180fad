"""``AccountsApp``: the accounts extension's wiring into the server."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp

from extensions.accounts.handlers import default_handlers
from extensions.accounts.identity import PlatformIdentityProvider


class AccountsApp(ExtensionApp):
    """Users, logins, API tokens and administration under ``/api/accounts`` and ``/api/admin``."""

    name = "accounts"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        """Share the identity provider's ``Accounts`` with the handlers."""
        provider = self.serverapp.identity_provider if self.serverapp else None
        if not isinstance(provider, PlatformIdentityProvider):
            msg = (
                "The accounts extension needs ServerApp.identity_provider_class = "
                "extensions.accounts.identity.PlatformIdentityProvider (PlatformApp's default)."
            )
            raise TypeError(msg)
        self.settings["accounts"] = provider.accounts

    def initialize_handlers(self) -> None:
        """Register the REST handlers."""
        self.handlers.extend(default_handlers)
