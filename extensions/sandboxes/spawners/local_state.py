"""A local sandbox's platform-only folder, ``<run_dir>/<id>/`` (0700): its agent socket, its
``state.json`` (what finds it again after a restart) and its log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from extensions.sandboxes.spawners.base import SpawnerError

SOCKET_NAME = "agent.sock"
STATE_NAME = "state.json"
LOG_NAME = "sandbox.log"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the final NUL
SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def default_run_dir(data_dir: Path) -> str:
    """``<data_dir>/sandboxes``, or, when that is too long for a Unix socket path,
    ``/tmp/platform-sandboxes-<hash of data_dir>`` (the same after a restart)."""
    preferred = data_dir.absolute() / "sandboxes"
    longest = preferred / ("0" * 36) / SOCKET_NAME
    if len(os.fsencode(longest)) <= MAX_SOCKET_PATH:
        return str(preferred)
    digest = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:16]
    return f"/tmp/platform-sandboxes-{digest}"  # noqa: S108  (checked 0700 and ours)


def sandbox_folder(run_dir: Path, sandbox_id: str) -> Path:
    """The platform-only folder of one sandbox; ``SpawnerError`` for an invalid id."""
    if not SANDBOX_ID.fullmatch(sandbox_id):
        msg = f"Invalid sandbox id {sandbox_id!r}."
        raise SpawnerError(msg)
    return run_dir / sandbox_id


class LocalState(TypedDict):
    """``SandboxHandle.state`` of a local sandbox (also its ``state.json``)."""

    pid: int  # the init of the sandbox's PID namespace, as seen on the host
    start_time: int  # its start time (/proc/<pid>/stat field 22), against pid reuse
    uid: int  # the host uid it runs as (never 0)
    cgroups: list[str]
    # The agent (the init's child), asked to exit first on stop; absent from the state of
    # sandboxes started by an older platform, which are killed at once.
    agent_pid: NotRequired[int]
    agent_start_time: NotRequired[int]


def parse_state(value: Any) -> LocalState | None:
    """A ``LocalState`` from JSON, or None if it is not one."""
    if not isinstance(value, dict):
        return None
    try:
        state: LocalState = {
            "pid": int(value["pid"]),
            "start_time": int(value["start_time"]),
            "uid": int(value["uid"]),
            "cgroups": [str(p) for p in value.get("cgroups", [])],
        }
        if "agent_pid" in value:
            state["agent_pid"] = int(value["agent_pid"])
            state["agent_start_time"] = int(value["agent_start_time"])
    except (KeyError, TypeError, ValueError):
        return None
    return state


def read_state(folder: Path) -> LocalState | None:
    """The sandbox's ``state.json``; None if it has none (yet), or not a valid one."""
    try:
        return parse_state(json.loads((folder / STATE_NAME).read_text()))
    except (OSError, ValueError):
        return None


def write_state(folder: Path, state: LocalState) -> None:
    """Replace the sandbox's ``state.json`` at once (0600)."""
    path = folder / STATE_NAME
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state))
    tmp.replace(path)


def private_dir(path: Path, *, parents: bool = False) -> None:
    """Make ``path`` a 0700 folder of this user (a check, if it already exists)."""
    path.mkdir(mode=0o700, parents=parents, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
        msg = f"{path} must be a folder owned by the platform's user."
        raise SpawnerError(msg)
    if info.st_mode & 0o077:
        path.chmod(0o700)


def make_folder(folder: Path) -> socket.socket:
    """Make the sandbox's 0700 folder (and its parent's) and its listening socket."""
    socket_path = folder / SOCKET_NAME
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
        msg = (
            f"The agent socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes: "
            "set a shorter LocalSpawner.run_dir."
        )
        raise SpawnerError(msg)
    private_dir(folder.parent, parents=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError as e:
        msg = f"Sandbox {folder.name} already exists."
        raise SpawnerError(msg) from e
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(socket_path))
        socket_path.chmod(0o600)
        listener.listen(128)
    except OSError:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return listener


def in_use(socket_path: Path) -> bool:
    """Whether a process (a sandbox, or the platform starting one) holds the listening socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(socket_path))
        except BlockingIOError:
            return True  # its backlog is full
        except OSError:
            return False  # refused, or no socket at all
    return True


def age(path: Path) -> float:
    """Seconds since ``path`` was last modified (0 if it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def copy_output(output: int, log: Path, limit: int) -> None:
    """Append what bwrap wrote so far on the (non-blocking) ``output`` pipe to ``log``, which
    stays below ``limit`` bytes (0: no limit)."""
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(output, 65536):
            data += chunk
    if not data:
        return
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as f:
        room = limit - f.seek(0, os.SEEK_END) if limit else len(data)
        f.write(data[: max(0, room)])


def log_tail(path: Path, size: int = 2000) -> str:
    """A sentence quoting the end of a sandbox's log; empty if there is none."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            tail = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f" Its log ({path}) ends with: {tail}" if tail else ""
