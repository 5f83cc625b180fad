"""The base of every platform API handler, and the platform's own endpoints (health)."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable
from http.client import responses
from pathlib import Path
from typing import Any, ClassVar, cast

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.services.api.handlers import IdentityHandler
from tornado import web

from platform_server.db import Database
from platform_server.db.embedded import EmbeddedPostgres
from platform_server.errors import DatabaseUnavailable, DomainError, PlatformError

DB_SETTING = "platform_db"
# The reason of an error raised without one, by status.
DEFAULT_REASONS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}
EMBEDDED_DB_SETTING = "platform_embedded_db"
# The start of every per-workspace URL, /w/<uuid>: the id is the ``workspace_id`` argument.
WORKSPACE_ROUTE = r"/w/(?P<workspace_id>[^/]+)"
# The OpenAPI document of the platform's own API, served at /api/openapi.json.
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
# The methods that change something: XSRF-checked for cookie logins.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def unauthenticated() -> PlatformError:
    """The 401 of a request without valid credentials."""
    return PlatformError(
        401,
        "Authentication required: log in, or send an API token as 'Authorization: token <t>'.",
        reason="unauthenticated",
    )


def default_reason(status_code: int) -> str:
    """The ``reason`` of an error raised without one (by tornado or jupyter_server)."""
    if status_code >= 500:
        return "server_error"
    return DEFAULT_REASONS.get(status_code, "bad_request")


def parse_json(data: bytes | str, what: str = "The request body") -> Any:
    """Parse a request's JSON (``what`` names it); a 400 (never a 500) for text that is not
    JSON, not UTF-8 or nested too deeply for the parser (``RecursionError``). The text is
    never logged."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise PlatformError(400, f"{what} is not valid JSON.", reason="invalid_json") from e


def not_an_object() -> PlatformError:
    """The 400 of a JSON body that is not an object."""
    return PlatformError(400, "The request body must be a JSON object.", reason="invalid_json")


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """A request body that must be a JSON object; None when it is empty."""
    if not body.strip():
        return None
    value = parse_json(body)
    if not isinstance(value, dict):
        raise not_an_object()
    return value


def write_json_error(handler: web.RequestHandler, status_code: int, exc_info: Any) -> None:
    """Answer an error as JSON ``{"message", "reason"}`` (the ``write_error`` of every
    platform handler, jupyter_server's subclasses included)."""
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
    reason = reason or default_reason(status_code)
    if isinstance(error, PlatformError):
        for name, value in error.headers.items():
            handler.set_header(name, value)
    if status_code == 401:
        handler.set_header("WWW-Authenticate", 'token realm="platform"')
    if status_code == 503:
        handler.set_header("Retry-After", "5")
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"message": message, "reason": reason}))


class PlatformAuthErrors(JupyterHandler):
    """Mixin of every platform REST handler, its own or jupyter_server's (contents): XSRF and
    authentication refusals that say what to do.

    - An anonymous request is never XSRF-checked: it carries no credentials to abuse, and it
      must hear 401 (log in), not 403, from every method.
    - A cookie-authenticated write must send the token in the ``X-XSRFToken`` header; an
      ``_xsrf`` argument (query string or form field) is refused, as it can ride in a URL.
    """

    # Whether authenticated writes may send bodies up to ServerApp.max_body_size rather than
    # PlatformApp.max_request_body_size (decided before the body is read: body_limit.py).
    large_request_bodies: ClassVar[bool] = False

    def check_xsrf_cookie(self) -> None:
        """Jupyter's XSRF check, with a message that says how to pass it."""
        if getattr(self, "_jupyter_current_user", None) is None:
            return  # before authentication (checked again after it), or anonymous
        if (
            self.request.method in WRITE_METHODS
            and not self.token_authenticated
            and "_xsrf" in self.request.arguments
        ):
            raise PlatformError(
                403,
                "Send the XSRF token in the 'X-XSRFToken' header, not as an '_xsrf' argument.",
                reason="xsrf",
            )
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

    def _handle_request_exception(self, e: BaseException) -> None:
        # Domain errors are expected outcomes, not crashes: answer with their status and
        # message instead of tornado's logged 500.
        if isinstance(e, DomainError):
            e = e.to_http()
        # tornado's web.authenticated and jupyter_server's prepare answer 403 to a request
        # without credentials; the client needs to hear that it must authenticate.
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
        """A 401 says how to authenticate (RFC 9110 asks for a challenge)."""
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'token realm="platform"')
        super().write_error(status_code, **kwargs)


class PlatformAPIHandler(PlatformAuthErrors, APIHandler):
    """JSON in, JSON out; domain errors become ``{"message", "reason"}`` with their status."""

    @property
    def db(self) -> Database:
        """The platform's connection pool."""
        return cast(Database, self.settings[DB_SETTING])

    def get_login_url(self) -> str:
        """API clients get 401, never a redirect to a login page."""
        raise unauthenticated()

    def read_json(self, allowed: frozenset[str] | None = None) -> dict[str, Any]:
        """The request body as a JSON object; 415/400 for anything else.

        Requiring ``application/json`` also means another site's HTML form cannot post here.
        """
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/json":
            raise PlatformError(
                415,
                "Send the request body as JSON with 'Content-Type: application/json'.",
                reason="unsupported_media_type",
            )
        body = parse_json_object(self.request.body)
        if body is None:
            raise not_an_object()
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

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Render every error as JSON ``{"message", "reason"}``."""
        write_json_error(self, status_code, kwargs.get("exc_info"))


class PlatformIdentityHandler(IdentityHandler):
    """jupyter_server's ``/api/me``, whose JSON (the ``permissions`` argument, a ``PATCH``
    body) goes through ``parse_json``: jupyter_server's own parsing lets undecodable or too
    deeply nested text through as a 500."""

    def get_json_body(self) -> dict[str, Any] | None:
        """The body as a JSON object; None when empty."""
        return parse_json_object(self.request.body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as every platform API answers them, with a ``reason``."""
        write_json_error(self, status_code, kwargs.get("exc_info"))

    @web.authenticated
    async def get(self) -> None:
        """The identity model, once ``permissions`` is known to parse."""
        permissions = self.get_argument("permissions", "")
        if permissions:
            parse_json(permissions, "The 'permissions' argument")
        # web.authenticated types the verb as maybe returning None; it returns the coroutine.
        await cast(Awaitable[None], super().get())


class HealthHandler(PlatformAPIHandler):
    """``GET /api/health``: 200 when this replica can serve requests, 503 otherwise."""

    @allow_unauthenticated
    async def get(self) -> None:
        """Report this replica's health, including the database's.

        With the embedded PostgreSQL, ``database`` is ``restarting`` while its supervisor
        restarts it, and ``database_restarts`` counts its restarts since this process started.
        """
        embedded = cast(EmbeddedPostgres | None, self.settings.get(EMBEDDED_DB_SETTING))
        extra = {} if embedded is None else {"database_restarts": embedded.restarts}
        state = "ok"
        if embedded is not None and embedded.restarting:
            state = "restarting"
        else:
            try:
                await self.db.ping()
            except DatabaseUnavailable:
                state = "unavailable"
        if state != "ok":
            self.set_header("Retry-After", "5")
            self.finish_json({"status": "unavailable", "database": state, **extra}, status=503)
            return
        self.finish_json({"status": "ok", "database": "ok", **extra})


class LivenessHandler(PlatformAPIHandler):
    """``GET /api/health/live``: 200 while this process serves requests, whatever the state
    of PostgreSQL (a liveness probe: restarting the process cannot fix a database outage)."""

    @allow_unauthenticated
    def get(self) -> None:
        """Answer at once."""
        self.finish_json({"status": "ok"})


class OpenAPIHandler(PlatformAPIHandler):
    """``GET /api/openapi.json``: the OpenAPI document of the platform's own API."""

    @allow_unauthenticated
    def get(self) -> None:
        """The document, as checked in (no authentication: it describes, it holds nothing)."""
        self.set_header("Content-Type", "application/json")
        self.finish(openapi_document())


@functools.cache
def openapi_document() -> bytes:
    """The bytes of ``openapi.json`` beside this module, read once."""
    return OPENAPI_PATH.read_bytes()


class NotFoundHandler(PlatformAPIHandler):
    """The last route: every URL nothing else serves is a JSON 404, whoever asks (it
    replaces jupyter_server's HTML ``Template404``)."""

    async def prepare(self) -> None:  # type: ignore[override]
        """Answer 404 before any authentication: an unknown URL says nothing about users."""
        raise PlatformError(404, "Not found.", reason="not_found")


default_handlers = [
    (r"/api/health", HealthHandler),
    (r"/api/health/live", LivenessHandler),
    (r"/api/openapi\.json", OpenAPIHandler),
]
