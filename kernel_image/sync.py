"""File sync, sandbox → platform: watch the root with inotify, tell the platform what changed.

Sync is state-based: the watcher only remembers *which* paths changed (and moves, to keep
renames cheap); what is sent is each path's state when it is sent (a file with its bytes, a
folder, or gone). A message lost to a dropped connection is simply sent again, so the platform
can apply every message idempotently. Files the agent wrote itself (the platform sent them) are
not sent back.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from typing import Any, Protocol

from kernel_image import inotify
from kernel_image.files import TEMP_PREFIX

log = logging.getLogger("kernel_image.sync")

DEFAULT_IGNORE = ("__pycache__/", ".venv/", "node_modules/", ".cache/", "*.pyc")
DEBOUNCE = 0.2
"""Seconds to let a burst of writes settle before sending."""
BATCH = 100
"""Messages sent between two checks for new inotify events."""
READ_IN_THREAD = 1 << 20
"""Files larger than this (bytes) are read in a worker thread."""


class Ignore:
    """Which paths are never synced: ``dir/`` patterns match a folder anywhere in the path,
    the others a file name (fnmatch). The agent's own temporary files are always ignored."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.folders = [p.rstrip("/") for p in patterns if p.endswith("/")]
        self.names = [p for p in patterns if not p.endswith("/")] + [f"{TEMP_PREFIX}*"]

    def __call__(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` (relative, '/'-separated) is ignored."""
        parts = path.split("/")
        folders = parts if is_dir else parts[:-1]
        if any(fnmatch.fnmatchcase(part, p) for part in folders for p in self.folders):
            return True
        return not is_dir and any(fnmatch.fnmatchcase(parts[-1], p) for p in self.names)


class SenderGone(Exception):
    """The platform's connection closed while a change was being sent (it stays unacknowledged,
    and is sent again on the next connection)."""


class Sender(Protocol):
    """The platform's connection, as the sync channel uses it."""

    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message; ``SenderGone`` if the connection is gone."""


class Watcher:
    """Watches the root recursively and remembers what changed since it was last asked."""

    def __init__(self, root: str, ignore: Ignore) -> None:
        self.root = root
        self.ignore = ignore
        self.folders: dict[int, str] = {}
        self.dirty: dict[str, None] = {}
        self.moves: list[tuple[str, str]] = []
        self.written: dict[str, tuple[int, int]] = {}
        self.changed = asyncio.Event()
        self._moved_from: dict[int, str] = {}

    def start(self) -> None:
        """Watch every folder now; inotify's events come to ``inotify_events``."""
        inotify.shared().open()
        self._watch_tree("")

    def note_written(self, real_path: str) -> None:
        """The agent wrote this file itself: do not send it back unless it changes again."""
        rel = os.path.relpath(real_path, self.root)
        try:
            info = os.lstat(real_path)
        except OSError:
            return
        self.written[rel] = (info.st_mtime_ns, info.st_size)

    def _watch_tree(self, rel: str) -> None:
        """Watch ``rel`` and every folder below it; mark what is in them as changed."""
        top = f"{self.root}/{rel}" if rel else self.root
        for folder, dirs, names in os.walk(top):
            base = os.path.relpath(folder, self.root)
            base = "" if base == "." else base
            try:
                self.folders[inotify.shared().add_watch(folder, self)] = base
            except OSError as e:
                log.warning("sync | cannot watch %s: %s", base or "/", e.strerror)
            dirs[:] = [d for d in dirs if not self.ignore(_join(base, d), is_dir=True)]
            if rel:
                for name in [*dirs, *names]:
                    self._mark(_join(base, name))

    def _mark(self, path: str) -> None:
        # First-change order: a folder is marked before what is created in it.
        self.dirty.setdefault(path, None)
        self.changed.set()

    def inotify_events(self, events: list[inotify.Event]) -> None:
        """Take the events read from inotify into the change set."""
        for event in events:
            self._handle(event)
        # A move out of the root has no matching arrival: the entry is gone.
        for path in self._moved_from.values():
            self._mark(path)
        self._moved_from.clear()

    def _handle(self, event: inotify.Event) -> None:
        if event.mask & inotify.IN_Q_OVERFLOW:
            log.warning("sync | inotify queue overflowed; rescanning everything")
            self._watch_tree("")
            self._mark_all()
            return
        if event.mask & inotify.IN_IGNORED:
            self.folders.pop(event.wd, None)
            return
        base = self.folders.get(event.wd)
        if base is None or not event.name:
            return
        path = _join(base, event.name)
        is_dir = bool(event.mask & inotify.IN_ISDIR)
        if self.ignore(path, is_dir):
            return
        if event.mask & inotify.IN_MOVED_FROM:
            self._moved_from[event.cookie] = path
            return
        if event.mask & inotify.IN_MOVED_TO and event.cookie in self._moved_from:
            self._moved(self._moved_from.pop(event.cookie), path, is_dir)
            return
        self._mark(path)
        if is_dir and event.mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
            self._watch_tree(path)

    def _moved(self, source: str, target: str, is_dir: bool) -> None:
        """A rename inside the root: cheap for the platform, and pending changes follow it."""
        self.moves.append((source, target))
        prefix = source + "/"
        for path in [p for p in self.dirty if p == source or p.startswith(prefix)]:
            del self.dirty[path]
            self.dirty[target + path[len(source) :]] = None
        if is_dir:
            for wd, folder in list(self.folders.items()):
                if folder == source or folder.startswith(prefix):
                    self.folders[wd] = target + folder[len(source) :]
        else:
            self.dirty[target] = None
        self.changed.set()

    def _mark_all(self) -> None:
        for folder, dirs, names in os.walk(self.root):
            base = os.path.relpath(folder, self.root)
            base = "" if base == "." else base
            dirs[:] = [d for d in dirs if not self.ignore(_join(base, d), is_dir=True)]
            for name in [*dirs, *names]:
                self._mark(_join(base, name))

    def take(self) -> tuple[list[tuple[str, str]], list[str]]:
        """The moves and changed paths since the last call, in order."""
        inotify.shared().read_pending()
        moves, self.moves = self.moves, []
        dirty, self.dirty = list(self.dirty), {}
        self.changed.clear()
        return moves, dirty


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


class SyncChannel:
    """Sends the watcher's changes to the platform's one sync connection, in order, with
    sequence numbers; unacknowledged paths are sent again after a reconnect."""

    def __init__(self, watcher: Watcher, max_bytes: int) -> None:
        self.watcher = watcher
        self.max_bytes = max_bytes
        self.sender: Sender | None = None
        self.seq = 0
        self.unacked: dict[int, list[str]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sending whenever something changes and a platform is connected."""
        self._task = asyncio.create_task(self._run())

    def attach(self, sender: Sender) -> None:
        """A (new) platform connection: what the previous one did not confirm goes again."""
        self.sender = sender
        for paths in self.unacked.values():
            for path in paths:
                self.watcher.dirty[path] = None
        self.unacked.clear()
        self.watcher.changed.set()

    def detach(self, sender: Sender) -> None:
        """The connection closed."""
        if self.sender is sender:
            self.sender = None

    def has_unsynced(self) -> bool:
        """Whether changes have not reached the platform yet (sent or not)."""
        watcher = self.watcher
        return bool(self.unacked or watcher.dirty or watcher.moves)

    def ack(self, seq: int) -> None:
        """The platform has stored everything up to ``seq``."""
        for done in [s for s in self.unacked if s <= seq]:
            del self.unacked[done]

    async def flush(self, flush_id: Any) -> None:
        """Send every change made until now, then ``{"type": "flushed", "id": ...}``."""
        await self._send_pending()
        if self.sender is not None:
            await self.sender.send({"type": "flushed", "id": flush_id, "seq": self.seq})

    async def _run(self) -> None:
        while True:
            await self.watcher.changed.wait()
            await asyncio.sleep(DEBOUNCE)
            if self.sender is None:
                await asyncio.sleep(DEBOUNCE)
                continue
            try:
                await self._send_pending()
            except asyncio.CancelledError:
                raise
            except SenderGone:
                log.info("sync | the platform's connection closed; changes wait for the next")
            except Exception:
                log.exception("sync | sending changes failed")

    async def _send_pending(self) -> None:
        async with self._lock:
            sender = self.sender
            if sender is None:
                return
            moves, dirty = self.watcher.take()
            for source, target in moves:
                await self._send(sender, {"type": "moved", "from": source, "to": target}, [target])
            for path in dirty:
                message = await self.describe(path)
                if message is not None:
                    await self._send(sender, message, [path])

    async def _send(self, sender: Sender, message: dict[str, Any], paths: list[str]) -> None:
        self.seq += 1
        message["seq"] = self.seq
        self.unacked[self.seq] = paths
        try:
            await sender.send(message)
        except Exception:
            self.detach(sender)
            raise

    async def describe(self, path: str) -> dict[str, Any] | None:
        """What ``path`` is now: a file (with its bytes), a folder, too large, or deleted."""
        full = f"{self.watcher.root}/{path}"
        try:
            info = os.lstat(full)
        except FileNotFoundError:
            return {"type": "deleted", "path": path, "time": time.time()}
        except OSError:
            return None
        if stat.S_ISDIR(info.st_mode):
            return {"type": "directory", "path": path, "mtime": info.st_mtime}
        if not stat.S_ISREG(info.st_mode):
            return None  # symlinks, sockets, FIFOs are not synced
        if self.watcher.written.get(path) == (info.st_mtime_ns, info.st_size):
            return None
        if info.st_size > self.max_bytes:
            return {"type": "too_large", "path": path, "size": info.st_size, "mtime": info.st_mtime}
        try:
            data = (
                await asyncio.to_thread(_read, full)
                if info.st_size > READ_IN_THREAD
                else _read(full)
            )
        except FileNotFoundError:
            return {"type": "deleted", "path": path, "time": time.time()}
        except OSError:
            return None
        return {
            "type": "file",
            "path": path,
            "mtime": info.st_mtime,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content": base64.b64encode(data).decode(),
        }


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()
