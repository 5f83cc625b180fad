"""The platform's end of one sandbox's package channel (the agent's ``WS /api/packages``).

Each request the agent relays from pip is checked here, never trusted: the method (GET, HEAD),
the path (under ``/index/``, nothing else of the cache), the project against the operator's
allow and deny lists, the sandbox's request rate, the workspace's bytes for the day and the
size of the file. What passes is fetched from the cache and streamed back; every package file
fetched is logged, counted in /metrics and written to the download trail. Environment changes
the agent reports are stored as the workspace's recorded packages, then acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError

from extensions.sandboxes.agent_client import AgentClient
from extensions.sandboxes.packages import store
from extensions.sandboxes.packages.index import PackageIndex, normalize
from platform_server.db import Database
from platform_server.metrics import (
    PACKAGE_DOWNLOAD_BYTES,
    PACKAGE_DOWNLOADS,
    PACKAGE_REFUSALS,
)

ID = struct.Struct(">I")
CHUNK = 64 * 1024
MAX_MESSAGE_BYTES = 4 << 20  # an environment report of a few thousand distributions
MAX_PATH = 1000
PATH_PATTERN = re.compile(r"/index/(?:[A-Za-z0-9._-]{1,200}/(?:[A-Za-z0-9._+!%-]{1,300})?)?")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9.+!_-]{1,100}")
FORWARDED = ("Accept", "Accept-Encoding", "User-Agent", "If-None-Match", "Range")
ANSWERED = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "ETag",
    "Last-Modified",
    "Vary",
    "Cache-Control",
    "Accept-Ranges",
    "Content-Range",
)
CACHE_WAIT = 30.0


class Refused(Exception):
    """A request the platform answers itself: status and the reason pip shows."""

    def __init__(self, status: int, reason: str, metric: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.metric = metric


@dataclass
class TokenBucket:
    """``rate`` requests per second, bursts up to twice that; rate 0 lets everything by."""

    rate: float
    tokens: float = 0.0
    updated: float = 0.0

    def take(self) -> bool:
        """Whether one more request may go now."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        capacity = 2 * self.rate
        if not self.updated:
            self.tokens = capacity
        self.tokens = min(capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def distribution(filename: str) -> tuple[str, str] | None:
    """The project and version a wheel or sdist file name says; None for anything else
    (index pages, ``.metadata`` files)."""
    try:
        if filename.endswith(".whl"):
            name, version, *_ = parse_wheel_filename(filename)
            return str(name), str(version)
        name, parsed = parse_sdist_filename(filename)
        return str(name), str(parsed)
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def recorded_rows(message: dict[str, Any]) -> tuple[list[store.PackageRow], list[str]]:
    """An environment report's installed rows and removed names, checked (``ValueError``)."""
    installed, removed = message.get("installed"), message.get("removed")
    if not isinstance(installed, list) or not isinstance(removed, list):
        raise ValueError
    rows = []
    for dist in installed:
        name, version, source = dist.get("name"), dist.get("version"), dist.get("source")
        if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name)):
            raise ValueError
        if not (isinstance(version, str) and VERSION_PATTERN.fullmatch(version)):
            raise ValueError
        if source is not None and not (isinstance(source, str) and len(source) <= 2000):
            raise ValueError
        row = store.PackageRow(
            name=normalize(name), display_name=name, version=version, source=source
        )
        rows.append(row)
    if not all(isinstance(n, str) and NAME_PATTERN.fullmatch(n) for n in removed):
        raise ValueError
    return rows, [normalize(n) for n in removed]


class PackageRelay:
    """Serves one sandbox's package channel until it closes."""

    def __init__(
        self,
        *,
        index: PackageIndex,
        db: Database,
        workspace_id: uuid.UUID,
        client: AgentClient,
        log: logging.Logger,
    ) -> None:
        self.index = index
        self.db = db
        self.workspace_id = workspace_id
        self.client = client
        self.log = log
        self.bucket = TokenBucket(index.requests_per_second)
        self.connection: WebSocketClientConnection | None = None
        self.connected = asyncio.Event()
        self._requests: dict[int, asyncio.Task[None]] = {}
        self._answering: set[int] = set()
        """Requests whose answer's head went to the agent."""
        self._owner: tuple[int, str] | None = None

    async def run(self) -> None:
        """Serve until the channel closes."""
        self.connection = await self.client.websocket(
            "/api/packages", max_message_size=MAX_MESSAGE_BYTES
        )
        self.connected.set()
        try:
            while (raw := await self.connection.read_message()) is not None:
                if isinstance(raw, bytes):
                    continue
                message = json.loads(raw)
                kind = message.get("type")
                request_id = message.get("id")
                if kind == "request" and isinstance(request_id, int):
                    self._start(request_id, message)
                elif kind == "cancel" and isinstance(request_id, int):
                    if (task := self._requests.pop(request_id, None)) is not None:
                        task.cancel()
                elif kind == "environment":
                    await self.record(message)
        finally:
            for task in self._requests.values():
                task.cancel()
            self.connection.close()

    def _start(self, request_id: int, message: dict[str, Any]) -> None:
        task = asyncio.create_task(self.serve(request_id, message))
        self._requests[request_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            if self._requests.get(request_id) is task:
                del self._requests[request_id]

        task.add_done_callback(forget)

    def close(self) -> None:
        """Close the channel."""
        if self.connection is not None:
            self.connection.close()

    # --- environment reports -----------------------------------------------------------------

    async def record(self, message: dict[str, Any]) -> None:
        """Store the workspace venv's change, then acknowledge it."""
        try:
            installed, removed = recorded_rows(message)
        except (ValueError, AttributeError):
            self.log.warning(
                "workspace %s | packages: malformed environment report", self.workspace_id
            )
            return
        async with self.db.transaction() as conn:
            await store.record(conn, self.workspace_id, installed, removed)
        changes = [f"{r['display_name']} {r['version']}" for r in installed]
        changes += [f"-{n}" for n in removed]
        self.log.info("workspace %s | packages recorded: %s", self.workspace_id, ", ".join(changes))
        await self._send_json({"type": "ack", "seq": message.get("seq")})

    # --- requests ----------------------------------------------------------------------------

    async def serve(self, request_id: int, message: dict[str, Any]) -> None:
        """Answer one relayed request: refused here, or fetched from the cache."""
        method, path = message.get("method"), message.get("path")
        try:
            project, filename = await self.check(method, path)
            await self.forward(request_id, str(method), str(path), message, project, filename)
        except Refused as e:
            PACKAGE_REFUSALS.labels(e.metric).inc()
            if e.metric != "not_found":
                self.log.info("workspace %s | package request refused: %s", self.workspace_id, e)
            await self._answer(request_id, e.status, e.reason)
        except asyncio.CancelledError:
            raise
        except WebSocketClosedError:
            return
        except Exception as e:
            if request_id in self._answering:
                # Cut off mid-body: the sandbox must see a broken answer, never a short file.
                self.log.warning(
                    "workspace %s | package download cut off: %s", self.workspace_id, e
                )
                await self._send_json({"type": "abort", "id": request_id})
                return
            if isinstance(e, aiohttp.ClientError | OSError):
                self.log.warning(
                    "workspace %s | package cache unreachable: %s", self.workspace_id, e
                )
            else:
                self.log.exception("workspace %s | package request failed", self.workspace_id)
            await self._answer(request_id, 502, "The package cache is not reachable; try again")
        finally:
            self._answering.discard(request_id)

    async def check(self, method: Any, path: Any) -> tuple[str | None, str | None]:
        """The request's project and file name, or ``Refused``."""
        if method not in ("GET", "HEAD"):
            raise Refused(405, "The package index is read-only: only GET and HEAD", "method")
        if not isinstance(path, str) or len(path) > MAX_PATH:
            raise Refused(404, "Not a package index path", "not_found")
        path = path.split("?", 1)[0]
        if not PATH_PATTERN.fullmatch(path) or "/../" in path or "/./" in path:
            raise Refused(404, "Not a package index path", "not_found")
        parts = path.split("/")  # "", "index", then a project and a file name, or neither
        project = parts[2] if len(parts) == 4 else None
        filename = parts[3] if len(parts) == 4 and parts[3] else None
        # Refused at the file, not the project's page: pip says why only for a download.
        if filename is not None and (reason := self.index.refusal(project or "")) is not None:
            raise Refused(403, reason, "denied")
        if not self.bucket.take():
            rate = self.index.requests_per_second
            reason = f"Too many package index requests from this sandbox (more than {rate:g}/s)"
            raise Refused(429, reason, "rate")
        return project, filename

    async def check_daily_bytes(self, size: int) -> None:
        """``Refused`` if a file of ``size`` bytes would take the workspace over its bytes
        for the last 24 hours."""
        allowed = self.index.bytes_per_day
        if allowed <= 0:
            return
        async with self.db.connection() as conn:
            used = await store.bytes_today(conn, self.workspace_id)
        if used + size > allowed:
            reason = (
                f"This workspace fetched {used / 1024**2:.1f} of its {allowed / 1024**2:.1f} MB "
                "of packages for the last 24 hours; try later"
            )
            raise Refused(429, reason, "daily_bytes")

    async def forward(
        self,
        request_id: int,
        method: str,
        path: str,
        message: dict[str, Any],
        project: str | None,
        filename: str | None,
    ) -> None:
        """Fetch from the cache and stream the answer to the agent."""
        if not await self.index.ready(CACHE_WAIT):
            raise Refused(503, "The package cache is starting; try again in a moment", "cache")
        given = message.get("headers")
        headers = {
            k: v
            for k in FORWARDED
            if isinstance(given, dict) and isinstance(v := given.get(k), str)
        }
        url = self.index.base_url() + path
        async with self.index.session().request(
            method, url, headers=headers, allow_redirects=False
        ) as response:
            if 300 <= response.status < 400:
                # The cache gave up waiting for its upstream and points there: out of reach.
                raise Refused(504, "The package cache is still downloading it; try again", "cache")
            size = response.content_length
            if filename is not None:
                await self.check_daily_bytes(size or 0)
            limit = self.index.max_file_size
            if filename is not None and limit > 0 and size is not None and size > limit:
                reason = (
                    f"{filename} is larger than this platform's limit of {limit / 1024**2:.0f} MB"
                )
                raise Refused(403, reason, "too_large")
            self._answering.add(request_id)
            await self._send_json(
                {
                    "type": "response",
                    "id": request_id,
                    "status": response.status,
                    "reason": response.reason or "",
                    "headers": {k: response.headers[k] for k in ANSWERED if k in response.headers},
                }
            )
            sent = 0
            async for chunk in response.content.iter_chunked(CHUNK):
                sent += len(chunk)
                if filename is not None and limit > 0 and sent > limit:
                    await self._send_json({"type": "abort", "id": request_id})
                    return
                await self._send_binary(request_id, chunk)
            await self._send_json({"type": "end", "id": request_id})
        if method == "GET" and response.status == 200 and filename and project:
            await self.note(project, filename, sent)

    async def note(self, project: str, filename: str, size: int) -> None:
        """A package file reached the sandbox: the log, the metrics and the trail."""
        dist = distribution(filename)
        if dist is None:
            return
        name, version = dist
        if self._owner is None:
            async with self.db.connection() as conn:
                self._owner = await store.owner_of(conn, self.workspace_id) or (0, "?")
        user_id, username = self._owner
        async with self.db.transaction() as conn:
            await store.note_download(
                conn, self.workspace_id, user_id, name, version, filename, size
            )
        PACKAGE_DOWNLOADS.inc()
        PACKAGE_DOWNLOAD_BYTES.inc(size)
        self.log.info(
            "packages | workspace %s user %s fetched %s %s (%s, %d bytes)",
            self.workspace_id,
            username,
            name,
            version,
            filename,
            size,
        )

    async def _answer(self, request_id: int, status: int, reason: str) -> None:
        body = f"{status} {reason}\n".encode()
        head = {
            "type": "response",
            "id": request_id,
            "status": status,
            "reason": reason,
            "headers": {"Content-Type": "text/plain; charset=utf-8"},
        }
        await self._send_json(head)
        await self._send_binary(request_id, body)
        await self._send_json({"type": "end", "id": request_id})

    async def _send_json(self, message: dict[str, Any]) -> None:
        assert self.connection is not None  # noqa: S101
        await self.connection.write_message(json.dumps(message))

    async def _send_binary(self, request_id: int, data: bytes) -> None:
        assert self.connection is not None  # noqa: S101
        await self.connection.write_message(ID.pack(request_id) + data, binary=True)
