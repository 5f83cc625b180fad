"""Sandboxes' host processes: identity (pid + start time, against pid reuse), liveness, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path


class ProcessError(Exception):
    """A process may not be signalled, or did not exit; the message says why."""


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time_of(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when it started, in clock ticks after boot."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time``, and not a zombie."""
    fields = proc_stat(pid)
    return fields is not None and int(fields[19]) == start_time and fields[0] not in {"Z", "X"}


def exec_child(pid: int, skip: bytes) -> tuple[int, int] | None:
    """(pid, start time) of the child of ``pid`` (a sandbox's init) that runs a program other
    than bwrap (forked, not yet exec'd) and than ``skip``, a command line as
    /proc/<pid>/cmdline holds it (the wrapper that execs the program). None until there is one.
    """
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "bwrap":
                continue
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            start_time = start_time_of(int(child))
            # Empty while exec is still setting the new program up.
            if cmdline and cmdline != skip and start_time is not None:
                return int(child), start_time
    except FileNotFoundError:
        pass
    return None


def process_uid(pid: int) -> int:
    """The real uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    msg = f"No Uid in /proc/{pid}/status"
    raise ProcessError(msg)


async def kill(pid: int, start_time: int, *, grace: float, uid: int | None = None) -> None:
    """SIGKILL the process if it is still that one (and not root's), and wait for it to exit."""
    if not await signal_and_wait(pid, start_time, signal.SIGKILL, grace=grace, uid=uid):
        msg = f"Sandbox process {pid} did not exit within {grace} s of SIGKILL."
        raise ProcessError(msg)


async def signal_and_wait(
    pid: int, start_time: int, sig: int, *, grace: float, uid: int | None = None
) -> bool:
    """Send ``sig`` to the process if it is still that one, and wait at most ``grace`` seconds
    for it to exit; whether it has (True at once if it was gone already).

    ``ProcessError`` if it runs as root or, when ``uid`` is given, as another uid.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # Checked after opening the pidfd, which cannot be reused: this is the right process.
        if not alive(pid, start_time):
            return True
        try:
            owner = process_uid(pid)
            if owner == 0 or (uid is not None and owner != uid):
                msg = f"Refusing to signal pid {pid}: it runs as uid {owner}, not the sandbox's."
                raise ProcessError(msg)
            signal.pidfd_send_signal(pidfd, sig)
        except (FileNotFoundError, ProcessLookupError):
            return True  # it exited meanwhile
        return await _exited(pidfd, grace)
    finally:
        os.close(pidfd)


async def _exited(pidfd: int, within: float) -> bool:
    """Whether the process of ``pidfd`` exits within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    # A pidfd becomes readable when its process has exited.
    loop.add_reader(pidfd, _resolve, exited)
    try:
        await asyncio.wait_for(exited, within)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def kill_now(pid: int, start_time: int) -> None:
    """SIGKILL without waiting (from the launching thread, on failure)."""
    with contextlib.suppress(ProcessLookupError):
        pidfd = os.pidfd_open(pid)
        try:
            if alive(pid, start_time):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)


class Children:
    """This process's bwrap children, by sandbox id, until their exit status is collected."""

    def __init__(self) -> None:
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def add(self, sandbox_id: str, process: subprocess.Popen[bytes]) -> None:
        """Remember a sandbox's bwrap, to reap it once it ends."""
        self._processes[sandbox_id] = process

    def reap(self, sandbox_id: str, *, wait: bool = False) -> None:
        """Collect the sandbox's bwrap's exit status if it has ended (``wait``: within 5 s)."""
        process = self._processes.get(sandbox_id)
        if process is None:
            return
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if process.poll() is not None:
            del self._processes[sandbox_id]


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Kill and reap a child process (bwrap itself, when its sandbox could not be set up)."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
