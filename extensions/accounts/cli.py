"""``platform-server create-user [--admin] NAME``: make an account from the command line."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import Any, ClassVar

from jupyter_core.application import JupyterApp
from traitlets import Bool, Unicode

from extensions.accounts import validation
from extensions.accounts.manager import Accounts
from platform_server.app import PlatformApp
from platform_server.db import Database
from platform_server.errors import DomainError


class CreateUserApp(JupyterApp):
    """Create a user; the password comes from a prompt, or from standard input when piped."""

    name = "platform-server-create-user"
    description = "Create a platform user. Usage: platform-server create-user [--admin] NAME"

    admin = Bool(False, help="Make the user an administrator.").tag(config=True)
    email = Unicode("", help="The user's email address (optional).").tag(config=True)

    flags: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "admin": ({"CreateUserApp": {"admin": True}}, "Make the user an administrator."),
    }
    aliases: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "email": "CreateUserApp.email",
        "db-url": "PlatformApp.db_url",
        "data-dir": "PlatformApp.data_dir",
    }

    def read_password(self) -> str:
        """Ask twice on a terminal; read one line otherwise."""
        if sys.stdin.isatty():
            first = getpass.getpass("Password: ")
            if first != getpass.getpass("Repeat password: "):
                self.exit("The passwords differ; nothing was created.")
            return first
        return sys.stdin.readline().rstrip("\r\n")

    def start(self) -> None:
        """Validate, then create the user in the platform's database."""
        if len(self.extra_args) != 1:
            self.exit("Give exactly one username: platform-server create-user [--admin] NAME")
        try:
            username = validation.username(self.extra_args[0])
            password = validation.password(self.read_password())
            email = validation.email(self.email)
        except DomainError as e:
            self.exit(e.message)
        # Options given after the subcommand (--PlatformApp.db_url=...) are in this app's config.
        platform = PlatformApp(config=self.config, log=self.log)
        conninfo = platform.start_database()
        try:
            asyncio.run(self._create(conninfo, username, password, email))
        except DomainError as e:
            self.exit(e.message)
        finally:
            platform.stop_embedded_database()
        print(f"Created {'administrator' if self.admin else 'user'} {username}.")

    async def _create(self, conninfo: str, username: str, password: str, email: str | None) -> None:
        db = Database(conninfo, max_size=1, log=self.log)
        try:
            accounts = Accounts(parent=self, db=db)
            await accounts.create_user(username, password, email, is_admin=self.admin)
        finally:
            await db.close()
