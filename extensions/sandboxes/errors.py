"""The domain errors of sandboxes, with the status and ``reason`` handlers answer them with."""

from __future__ import annotations

from platform_server.errors import DomainError


class SandboxFailed(DomainError):
    """The sandbox could not start; the message says why."""

    status_code = 503
    reason = "sandbox_failed"


class TooManySandboxes(DomainError):
    """The owner has ``max_sandboxes_per_user`` sandboxes running; the message says which."""

    status_code = 409
    reason = "too_many_sandboxes"


class SandboxUnavailable(DomainError):
    """The sandbox's agent cannot be reached (what an ``AgentError`` means to a client)."""

    status_code = 503
    reason = "sandbox_unavailable"

    def __init__(
        self,
        message: str = "The workspace's sandbox is not answering. Try again; if it persists, "
        "stop and start the sandbox.",
    ) -> None:
        super().__init__(message)


class SandboxUnresponsive(DomainError):
    """The sandbox's agent does not answer (it hangs, or is stopped); it may come back."""

    status_code = 504
    reason = "sandbox_unresponsive"

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "The sandbox is not responding. Your saved files are safe: wait a moment and "
            "try again, or stop the sandbox to start a fresh one."
        )
