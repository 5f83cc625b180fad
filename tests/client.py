"""A small HTTP client for tests: JSON in and out, a cookie jar, never raising on 4xx/5xx."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.cookies import Morsel, SimpleCookie
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse


def _expired(morsel: Morsel[str]) -> bool:
    """Whether a Set-Cookie clears the cookie (empty, max-age 0 or expiry in the past)."""
    if not morsel.value or morsel["max-age"] == "0":
        return True
    if morsel["expires"]:
        return parsedate_to_datetime(morsel["expires"]) < datetime.now(UTC)
    return False


@dataclass
class Response:
    """What a test looks at: status, headers and the decoded JSON body."""

    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


@dataclass
class Client:
    """Talks to one server like a browser (cookies, XSRF header) or an API client (token)."""

    base_url: str
    token: str | None = None
    token_scheme: str = "token"
    send_xsrf: bool = True
    cookies: dict[str, str] = field(default_factory=dict)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> Response:
        """Send one request; JSON-encode ``body`` unless ``raw_body`` is given."""
        all_headers = dict(headers or {})
        if body is not None:
            raw_body = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if self.token:
            all_headers.setdefault("Authorization", f"{self.token_scheme} {self.token}")
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.send_xsrf and "_xsrf" in self.cookies:
            all_headers.setdefault("X-XSRFToken", self.cookies["_xsrf"])
        if raw_body is None and method in {"POST", "PUT", "PATCH"}:
            raw_body = b""
        response: HTTPResponse = await AsyncHTTPClient().fetch(
            self.base_url.rstrip("/") + path,
            method=method,
            body=raw_body,
            headers=all_headers,
            raise_error=False,
            follow_redirects=False,
            allow_nonstandard_methods=True,
        )
        for header in response.headers.get_list("Set-Cookie"):
            for name, morsel in SimpleCookie(header).items():
                if _expired(morsel):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Response(response.code, response.headers, response.body or b"")

    async def get(self, path: str, **kwargs: Any) -> Response:
        """GET ``path``."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Response:
        """POST ``body`` as JSON."""
        return await self.request("POST", path, body, **kwargs)

    async def patch(self, path: str, body: Any = None, **kwargs: Any) -> Response:
        """PATCH ``body`` as JSON."""
        return await self.request("PATCH", path, body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        """DELETE ``path``."""
        return await self.request("DELETE", path, **kwargs)
