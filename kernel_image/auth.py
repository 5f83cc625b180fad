"""The per-sandbox token check, and the base handler that applies it to every request."""

from __future__ import annotations

import hmac
import json
from typing import Any

from tornado import web
from tornado.websocket import WebSocketHandler

from kernel_image.config import AgentConfig


class ApiError(web.HTTPError):
    """An error answered as ``{"message": ...}``; the message is shown verbatim."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, reason=None)
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.message}"


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``token <token>`` (constant time)."""
    if not header or not token:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "token":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class AgentToken:
    """The agent's token, kept only in its memory: given at start, or set once by the first
    ``PUT /api/token`` (``--token-on-first-contact``)."""

    def __init__(self, value: str = "") -> None:
        self._value = value

    @property
    def value(self) -> str:
        """The token; empty until it is set."""
        return self._value

    def claim(self, token: str) -> bool:
        """Set the token unless one is set; whether ``token`` is the agent's token now (the
        same token again is no change: a retry, or another platform replica)."""
        if not self._value:
            self._value = token
            return True
        return hmac.compare_digest(token.encode(), self._value.encode())


class AgentBase(web.RequestHandler):
    """What every agent handler shares, REST or WebSocket: the token check and JSON errors
    (WebSocket handlers derive from ``AgentSocket``)."""

    @property
    def config(self) -> AgentConfig:
        """The agent's settings."""
        config: AgentConfig = self.settings["agent_config"]
        return config

    @property
    def token(self) -> AgentToken:
        """The agent's token (shared by every handler)."""
        token: AgentToken = self.settings["agent_token"]
        return token

    def check_token(self) -> None:
        """Raise 401 unless ``Authorization: token <t>`` matches the agent's token, and 503
        while the agent has no token yet (nothing runs before ``PUT /api/token``)."""
        token = self.token.value
        if not token:
            raise ApiError(503, "the agent has no token yet (PUT /api/token)")
        if not token_matches(self.request.headers.get("Authorization"), token):
            raise ApiError(401, "missing or invalid token")
        lifetime = self.settings.get("lifetime")
        if lifetime is not None:
            lifetime.heard(changes=self.request.method not in {"GET", "HEAD"})

    def check_xsrf_cookie(self) -> None:
        """No cookies are ever accepted, so there is nothing to forge."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Render every error as ``{"message": ...}``."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        if status_code == 401:
            self.set_header("WWW-Authenticate", "token")
        self.finish(json.dumps({"message": message}))


class AgentSocket(AgentBase, WebSocketHandler):
    """Base of every WebSocket handler: any origin (only the token opens a socket, and
    browsers cannot send that header); ``check_upgrade`` first in ``prepare``."""

    def check_origin(self, origin: str) -> bool:
        """Any origin."""
        return True

    def check_upgrade(self) -> None:
        """Authenticate, and refuse a plain request, before the upgrade (as JSON errors)."""
        self.check_token()
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(400, "this URL only accepts a WebSocket upgrade")


class AgentHandler(AgentBase):
    """Base of every REST handler: token auth first, JSON in and out."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> Any:
        """Authenticate. Override to do more, calling this first."""
        self.check_token()
        return None

    def write_json(self, model: Any, status: int = 200) -> None:
        """Finish with a JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model))

    def read_json_object(self) -> dict[str, Any]:
        """The request body as a JSON object (an empty body is ``{}``); 400 otherwise."""
        if not self.request.body.strip():
            return {}
        try:
            model = json.loads(self.request.body)
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(model, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return model
