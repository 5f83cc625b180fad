"""The agent ends its own sandbox after its limits, even when no platform is left to do it.

A running platform culls sandboxes itself (with a final sync) before these limits, which it
sets a margin later than its own; they matter when no platform is connected any more, so that
sandboxes outliving a stopped platform do not run for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kernel_image.lifetime")

CHECK_INTERVAL = 10.0
"""Seconds between two checks of the limits."""


@dataclass(frozen=True)
class Limits:
    """The agent's own limits, in seconds; 0 disables each."""

    idle_timeout: float = 0.0
    """Without activity (terminal input, kernel activity, a request that changes something)
    once claimed; never while changes wait to reach the platform."""
    max_age: float = 0.0
    """Since the agent started, whatever happens."""
    unclaimed_timeout: float = 0.0
    """Without any request while no workspace's files were loaded (a warm-pool sandbox whose
    platform went away)."""


class Lifetime:
    """What the agent heard and when; ``why_stop`` says whether a limit is reached."""

    def __init__(
        self,
        limits: Limits,
        activity: Callable[[], float | None],
        unsynced: Callable[[], bool],
        now: Callable[[], float] = time.time,
        on_claim: Callable[[], None] | None = None,
    ) -> None:
        self.limits = limits
        self._activity = activity
        self._unsynced = unsynced
        self._now = now
        self.started = now()
        self.last_heard = self.started
        self.last_change = self.started
        self.claimed = False
        self._on_claim = on_claim

    def heard(self, *, changes: bool) -> None:
        """An authenticated request; ``changes`` when it asks to change something."""
        self.last_heard = self._now()
        if changes:
            self.last_change = self.last_heard

    def claim(self) -> None:
        """A workspace's files were loaded: the sandbox belongs to a workspace now."""
        self.claimed = True
        self.last_change = self._now()
        if self._on_claim is not None:
            self._on_claim()

    def last_activity(self) -> float:
        """The latest of the requests that changed something and the terminals' and kernels'
        own activity."""
        other = self._activity()
        return self.last_change if other is None else max(self.last_change, other)

    def why_stop(self) -> str | None:
        """Why the sandbox should end now, or None."""
        now = self._now()
        limits = self.limits
        if limits.max_age and now - self.started > limits.max_age:
            return f"older than {limits.max_age:g} s"
        if not self.claimed:
            if limits.unclaimed_timeout and now - self.last_heard > limits.unclaimed_timeout:
                return f"unclaimed and alone for {limits.unclaimed_timeout:g} s"
            return None
        if limits.idle_timeout and now - self.last_activity() > limits.idle_timeout:
            if self._unsynced():
                return None  # its changes wait for a platform; max_age ends it at the latest
            return f"idle for {limits.idle_timeout:g} s"
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        """Set ``stop`` once a limit is reached."""
        limits = [t for t in vars(self.limits).values() if t > 0]
        if not limits:
            return
        # Often enough that even a short limit is kept to within a quarter of itself.
        interval = min(CHECK_INTERVAL, min(limits) / 4)
        while not stop.is_set():
            why = self.why_stop()
            if why is not None:
                lost = " (changes not synced are lost)" if self._unsynced() else ""
                log.info("agent | ending the sandbox: %s%s", why, lost)
                stop.set()
                return
            await asyncio.sleep(interval)
