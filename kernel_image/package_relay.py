"""The package index inside the sandbox: ``http://127.0.0.1:<port>/index/``, relayed to the
platform over the package channel (``kernel_image.package_channel``).

Only ``GET`` and ``HEAD`` under ``/index/`` go anywhere; every other method is a 405 and every
other path a 404, answered here. The sandbox keeps no network: this server listens on the
sandbox's own loopback, which nothing outside it can reach, and the platform decides what each
request may fetch (its limits, its list of allowed projects) and answers with a reason that pip
shows (the HTTP reason phrase).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from kernel_image.package_channel import NoPlatform, PackageChannel

log = logging.getLogger("kernel_image.packages")

INDEX_PREFIX = "/index/"
HEAD_TIMEOUT = 600.0
"""Seconds to wait for the platform's answer to start (the cache may be downloading a large
file from its upstream first)."""
MAX_BODY = 64 * 1024
"""Bodies are never relayed; this only lets a POST with a small body reach its 405."""
FORWARDED_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "If-None-Match", "Range")
ANSWERED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "etag",
        "last-modified",
        "vary",
        "cache-control",
        "accept-ranges",
        "content-range",
    }
)
NO_PLATFORM = (
    "The package index is not reachable: the sandbox has no connection to the platform right "
    "now. Try again in a few seconds."
)


class IndexRelayHandler(web.RequestHandler):
    """``GET``/``HEAD /index/...``, relayed; any other method is refused with a 405."""

    request_id: int | None = None

    @property
    def channel(self) -> PackageChannel:
        """The agent's package channel."""
        channel: PackageChannel = self.settings["package_channel"]
        return channel

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A short plain-text reason (pip shows the status line; curl the body)."""
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if status_code == 405:
            self.set_header("Allow", "GET, HEAD")
        self.finish(f"{status_code} {self._reason}\n")

    async def get(self) -> None:
        """Relay a download or an index page."""
        await self.relay("GET")

    async def head(self) -> None:
        """Relay a ``HEAD`` (pip sends them for some links)."""
        await self.relay("HEAD")

    def _refuse(self) -> None:
        self.send_error(405, reason="The package index is read-only: only GET and HEAD")

    post = put = delete = patch = options = _refuse

    async def relay(self, method: str) -> None:
        """Ask the platform, then stream its answer to the client as it arrives."""
        headers = {k: v for k in FORWARDED_HEADERS if (v := self.request.headers.get(k))}
        try:
            self.request_id, reply = await self.channel.request(method, self.request.uri, headers)
            head = await asyncio.wait_for(asyncio.shield(reply.head), HEAD_TIMEOUT)
        except NoPlatform:
            self.send_error(503, reason=NO_PLATFORM)
            return
        except TimeoutError:
            self.send_error(504, reason="The platform did not answer the package request in time")
            return
        self.set_status(int(head["status"]), reason=str(head.get("reason") or "") or None)
        self.clear_header("Content-Type")
        for name, value in head.get("headers", {}).items():
            if name.lower() in ANSWERED_HEADERS:
                self.set_header(name, value)
        while (chunk := await reply.chunks.get()) is not None:
            if reply.broken:
                # Cut off mid-body: the client must see an incomplete answer, not a short file.
                self.request.connection.close()  # type: ignore[union-attr]
                return
            if chunk and method == "GET":
                self.write(chunk)
                await self.flush()
        self.channel.finished(self.request_id)
        self.request_id = None

    def on_connection_close(self) -> None:
        """pip went away: the platform stops sending."""
        if self.request_id is not None:
            self.channel.cancel(self.request_id)


class NotIndexHandler(web.RequestHandler):
    """Anything outside ``/index/``."""

    def prepare(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_status(404, reason="Only the package index is served here: /index/")
        self.finish("404 only the package index is served here: /index/\n")


def make_index_app(channel: PackageChannel) -> web.Application:
    """The loopback server's application."""
    return web.Application(
        [(r"/index/.*", IndexRelayHandler)],
        default_handler_class=NotIndexHandler,
        package_channel=channel,
        serve_traceback=False,
    )


def serve_index(channel: PackageChannel, port: int) -> HTTPServer:
    """Listen on ``127.0.0.1:port`` (the sandbox's own loopback) and relay."""
    server = HTTPServer(make_index_app(channel), max_body_size=MAX_BODY)
    server.add_sockets(bind_sockets(port, address="127.0.0.1"))
    return server
