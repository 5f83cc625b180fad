"""``SandboxesPart``: the base of the parts of the ``Sandboxes`` service (mirror, sync leases,
warm pool, culler, health checks), and their background loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from platform_server.db import Database

if TYPE_CHECKING:
    from extensions.sandboxes.manager import Sandboxes


class SandboxesPart:
    """One job of the ``Sandboxes`` service, made and wired by it (``Sandboxes.__init__``);
    it reads the service's traits, and calls its state and lifecycle methods."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        self.sandboxes = sandboxes

    @property
    def db(self) -> Database:
        """The service's database."""
        return self.sandboxes.db

    @property
    def log(self) -> logging.Logger:
        """The service's log."""
        return cast(logging.Logger, self.sandboxes.log)

    async def repeat(
        self,
        step: Callable[[], Awaitable[object]],
        interval: Callable[[], float],
        failure: str,
        *,
        wait_first: bool = False,
    ) -> None:
        """Await ``step`` forever, ``interval()`` seconds apart (also before the first round
        with ``wait_first``). A failure is logged with ``failure`` and the loop goes on;
        cancelling the loop ends it."""
        while True:
            if wait_first:
                await asyncio.sleep(interval())
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception(failure)
            if not wait_first:
                await asyncio.sleep(interval())
