"""The base of every platform API handler, and the platform's own endpoints (health)."""

from __future__ import annotations

import json
from http.client import responses
from typing import Any, cast

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from tornado import web

from platform_server.db import Database
from platform_server.errors import DatabaseUnavailable, DomainError, PlatformError

DB_SETTING = "platform_db"


def unauthenticated() -> PlatformError:
    """The 401 of a request without valid credentials."""
    return PlatformError(
        401,
        "Authentication required: log in, or send an API token as 'Authorization: token <t>'.",
        reason="unauthenticated",
    )


class PlatformAPIHandler(APIHandler):
    """JSON in, JSON out; domain errors become ``{"message", "reason"}`` with their status."""

    @property
    def db(self) -> Database:
        """The platform's connection pool."""
        return cast(Database, self.settings[DB_SETTING])

    def get_login_url(self) -> str:
        """API clients get 401, never a redirect to a login page."""
        raise unauthenticated()

    def check_xsrf_cookie(self) -> None:
        """Jupyter's XSRF check, with a message that says how to pass it."""
        try:
            super().check_xsrf_cookie()
        except PlatformError:
            raise
        except web.HTTPError as e:
            if e.status_code != 403:
                raise
            raise PlatformError(
                403,
                "Missing or wrong XSRF token: send the value of the '_xsrf' cookie in the "
                "'X-XSRFToken' header, or authenticate with an API token.",
                reason="xsrf",
            ) from e

    def read_json(self, allowed: frozenset[str] | None = None) -> dict[str, Any]:
        """The request body as a JSON object; 415/400 for anything else.

        Requiring ``application/json`` also means another site's HTML form cannot post here.
        """
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/json":
            raise PlatformError(
                415, "Send the request body as JSON with 'Content-Type: application/json'."
            )
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise PlatformError(400, "The request body is not valid JSON.") from e
        if not isinstance(body, dict):
            raise PlatformError(400, "The request body must be a JSON object.")
        if allowed is not None:
            unknown = sorted(set(body) - allowed)
            if unknown:
                raise PlatformError(
                    400, f"Unknown field(s): {', '.join(unknown)}.", reason="invalid_input"
                )
        return body

    def finish_json(self, model: Any, status: int = 200) -> None:
        """Answer with ``model`` as JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model, default=str))

    def _handle_request_exception(self, e: BaseException) -> None:
        # Domain errors are expected outcomes, not crashes: answer with their status and
        # message instead of tornado's logged 500.
        if isinstance(e, DomainError):
            e = e.to_http()
        # tornado's web.authenticated and the XSRF check answer 403 to a write without
        # credentials; the client needs to hear that it must authenticate.
        auth_refusal = (
            isinstance(e, web.HTTPError)
            and e.status_code == 403
            and (not isinstance(e, PlatformError) or e.reason == "xsrf")
        )
        if auth_refusal and getattr(self, "_jupyter_current_user", "unset") is None:
            e = unauthenticated()
        try:
            # tornado reads the error from sys.exc_info(), so the replacement must be raised.
            raise e
        except BaseException as raised:
            super()._handle_request_exception(raised)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Render every error as JSON ``{"message", "reason"}``."""
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        reason = None
        if isinstance(error, PlatformError):
            message, reason = error.message, error.reason
        elif isinstance(error, web.HTTPError) and error.get_message():
            message = error.get_message() or ""
            reason = error.reason
        elif status_code >= 500:
            message = "Internal server error; the server log has the details."
        else:
            message = responses.get(status_code, "Error")
        if isinstance(error, PlatformError):
            for name, value in error.headers.items():
                self.set_header(name, value)
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'token realm="platform"')
        if status_code == 503:
            self.set_header("Retry-After", "5")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": reason}))


class HealthHandler(PlatformAPIHandler):
    """``GET /api/health``: 200 when this replica can serve requests, 503 otherwise."""

    @allow_unauthenticated
    async def get(self) -> None:
        """Report this replica's health, including the database's."""
        try:
            await self.db.ping()
        except DatabaseUnavailable:
            self.set_header("Retry-After", "5")
            self.finish_json({"status": "unavailable", "database": "unavailable"}, status=503)
            return
        self.finish_json({"status": "ok", "database": "ok"})


class LivenessHandler(PlatformAPIHandler):
    """``GET /api/health/live``: 200 while this process serves requests, whatever the state
    of PostgreSQL (a liveness probe: restarting the process cannot fix a database outage)."""

    @allow_unauthenticated
    def get(self) -> None:
        """Answer at once."""
        self.finish_json({"status": "ok"})


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/health/live", LivenessHandler),
]
