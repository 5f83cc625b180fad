"""How a sandbox's start waits for its agent, and what a failed start tells the user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from extensions.sandboxes.agent_client import AgentClient, AgentError
from extensions.sandboxes.spawners.base import SpawnerError

# Why a start failed, when the sandbox ended while it started (its agent killed, or OOM).
ENDED_WHILE_STARTING = (
    "The sandbox stopped while it started (killed, or out of memory). Your saved files are "
    "safe; opening a terminal starts a new sandbox."
)


async def wait_healthy(
    client: AgentClient,
    within: float = 30.0,
    alive: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Poll the agent's health until it answers, for at most ``within`` seconds; give up at
    once (``SpawnerError``) when ``alive`` says the sandbox has ended."""
    deadline = time.monotonic() + within
    while True:
        try:
            await client.health(request_timeout=2.0)
            return
        except AgentError:
            if time.monotonic() > deadline:
                raise
            if alive is not None and not await alive():
                raise SpawnerError(ENDED_WHILE_STARTING) from None
            await asyncio.sleep(0.02)


def start_failure_reason(error: BaseException, timeout: float) -> str:
    """Words for the user about why a start failed."""
    if isinstance(error, TimeoutError):
        return f"The sandbox did not start within {timeout:.0f} s."
    if isinstance(error, SpawnerError | AgentError):
        return str(error)
    return f"The sandbox failed to start ({type(error).__name__}); see the server log."
