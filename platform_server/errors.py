"""Errors: domain errors raised by storage and services, and the one HTTP error handlers raise."""

from __future__ import annotations

from tornado import web


class PlatformError(web.HTTPError):
    """An error shown to the API client as ``{"message": ..., "reason": ...}``.

    The message is shown verbatim (it is never %-formatted), so it may contain user input.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # No format args are passed, so tornado never %-formats the (maybe user-given) text.
        super().__init__(status_code, message, reason=reason)
        self.message = message
        # Sent with the error response (tornado clears headers set before an error).
        self.headers = headers or {}


class DomainError(Exception):
    """Base of the errors that storage and services raise; handlers map them to HTTP."""

    status_code = 400
    reason = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Headers the HTTP answer must carry. Override in a subclass."""
        return {}

    def to_http(self) -> PlatformError:
        """The HTTP error an API handler answers with."""
        return PlatformError(
            self.status_code, self.message, reason=self.reason, headers=self.headers()
        )


class InvalidInput(DomainError):
    """Input that fails validation; nothing was changed."""

    status_code = 400
    reason = "invalid_input"


class InvalidPath(InvalidInput):
    """A file path that cannot name a workspace file; nothing was changed."""

    reason = "invalid_path"


class NotFound(DomainError):
    """The thing does not exist, or the caller may not know that it does."""

    status_code = 404
    reason = "not_found"


class Conflict(DomainError):
    """The request conflicts with the current state (a name taken, a limit reached)."""

    status_code = 409
    reason = "conflict"


class Forbidden(DomainError):
    """The caller is known but not allowed to do this."""

    status_code = 403
    reason = "forbidden"


class DatabaseUnavailable(DomainError):
    """PostgreSQL cannot be reached; the request may be retried once it is back."""

    status_code = 503
    reason = "database_unavailable"


class TooLarge(DomainError):
    """The request would store more bytes than a limit allows; nothing was changed."""

    status_code = 413
    reason = "too_large"


class QuotaExceeded(TooLarge):
    """The write would take a workspace over its storage quota; nothing was changed."""

    reason = "quota_exceeded"


class EditConflict(Conflict):
    """The file changed since the client read it (its ``If-Match`` is stale); nothing was saved."""

    reason = "edit_conflict"
