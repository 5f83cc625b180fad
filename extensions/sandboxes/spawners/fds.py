"""File descriptors handed to bwrap: pipes holding generated files, and the platform's ends."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass, field

from extensions.sandboxes.spawners.base import SpawnerError


@dataclass
class Fds:
    """File descriptors made for one bwrap: those it inherits, and the platform's ends."""

    passed: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    def data(self, content: bytes) -> int:
        """A pipe already holding ``content`` (small: it must fit the pipe's buffer)."""
        read, write = os.pipe()
        self.passed.append(read)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(write, view) :]
        finally:
            os.close(write)
        return read

    def pipe(self, *, child_reads: bool) -> tuple[int, int]:
        """(bwrap's end, the platform's end) of a new pipe."""
        read, write = os.pipe()
        theirs, ours = (read, write) if child_reads else (write, read)
        self.passed.append(theirs)
        self.kept.append(ours)
        return theirs, ours

    def close_passed(self) -> None:
        """Close bwrap's ends once it has them."""
        for fd in self.passed:
            os.close(fd)
        self.passed.clear()

    def close(self) -> None:
        """Close everything."""
        self.close_passed()
        for fd in self.kept:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kept.clear()


def nul_join(args: list[str]) -> bytes:
    """Arguments as bwrap's ``--args`` and /proc/<pid>/cmdline hold them."""
    return b"".join(os.fsencode(a) + b"\0" for a in args)


def read_child_pid(fd: int, process: subprocess.Popen[bytes], timeout: float) -> int:
    """The sandbox init's pid from bwrap's ``--info-fd`` JSON."""
    data = b""
    deadline = time.monotonic() + timeout
    # poll, not select: a platform holding a few hundred sandboxes' sockets has descriptors
    # past select's limit (1024), and select then refuses them.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = f"bwrap did not report its sandbox within {timeout} s."
            raise SpawnerError(msg)
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 4096)
        data += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(data)["child-pid"])
        if not chunk:
            process.wait(timeout=5)
            msg = f"bwrap failed (exit status {process.returncode}) before making the sandbox."
            raise SpawnerError(msg)
