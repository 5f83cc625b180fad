"""Linux inotify through ctypes (the standard library has no binding), and the agent's one
shared instance.

Linux caps inotify instances per user (``fs.inotify.max_user_instances``, 128 by default), and
every sandbox on a machine counts against the same user's cap (the user that started bubblewrap;
on a Kubernetes node, the uid all sandbox pods run as): an agent holding two would halve the
sandboxes a machine can start. So everything in the agent that watches folders (file sync, the
package recorder) shares one instance, read once and dispatched by watch descriptor.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = (
    IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Event:
    """One inotify event: the watch it came from, what happened, and the entry's name."""

    wd: int
    mask: int
    cookie: int
    name: str


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


class Inotify:
    """A non-blocking inotify instance; read it when its ``fd`` is readable."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))

    def add_watch(self, path: str) -> int:
        """Watch a directory (not following symlinks); return its watch descriptor."""
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), WATCH_MASK))

    def read(self) -> list[Event]:
        """Every event queued now (none if there is nothing to read)."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset : offset + length].split(b"\0", 1)[0]
            offset += length
            events.append(Event(wd, mask, cookie, os.fsdecode(raw)))
        return events

    def close(self) -> None:
        """Stop watching everything."""
        os.close(self.fd)


class Listener(Protocol):
    """Something that watches folders through the shared instance."""

    def inotify_events(self, events: list[Event]) -> None:
        """Events of this listener's watches, and queue overflows (``wd`` -1), in the order
        read; called once per read."""


class SharedInotify:
    """One inotify instance whose events go to the listener that added each watch."""

    def __init__(self) -> None:
        self._inotify: Inotify | None = None
        self._owners: dict[int, Listener] = {}

    def open(self) -> None:
        """Make the instance (once) and read it from now on; an OSError that says what to do
        when the machine has none left."""
        if self._inotify is not None:
            return
        try:
            self._inotify = Inotify()
        except OSError as e:
            limit = Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
            e.strerror = (
                f"{e.strerror}: no inotify instance left (fs.inotify.max_user_instances is "
                f"{limit} per user, and every sandbox on this machine takes one; raise it with "
                "sysctl)"
            )
            raise
        asyncio.get_running_loop().add_reader(self._inotify.fd, self._dispatch, self._inotify)

    def add_watch(self, path: str, listener: Listener) -> int:
        """Watch a directory for ``listener`` (after ``open``)."""
        if self._inotify is None:
            msg = "open() the shared inotify instance before adding watches"
            raise RuntimeError(msg)
        wd = self._inotify.add_watch(path)
        self._owners[wd] = listener
        return wd

    def read_pending(self) -> None:
        """Dispatch the events queued now (for a listener about to act on what it knows)."""
        if self._inotify is not None:
            self._dispatch(self._inotify)

    def _dispatch(self, instance: Inotify) -> None:
        batches: dict[int, tuple[Listener, list[Event]]] = {}
        for event in instance.read():
            owners = set(self._owners.values()) if event.wd == -1 else {self._owners.get(event.wd)}
            if event.mask & IN_IGNORED:
                self._owners.pop(event.wd, None)
            for owner in owners:
                if owner is not None:
                    batches.setdefault(id(owner), (owner, []))[1].append(event)
        for owner, events in batches.values():
            owner.inotify_events(events)


_shared = SharedInotify()


def shared() -> SharedInotify:
    """This process's shared instance."""
    return _shared
