"""The host user local sandboxes run as when the platform runs as root (made with useradd)."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from typing import Any

from extensions.sandboxes.spawners.base import SpawnerError

# (uid, gid) bwrap runs as; None: the platform's own user.
HostUser = tuple[int, int] | None


def sandbox_host_user(name: str, log: logging.Logger | logging.LoggerAdapter[Any]) -> HostUser:
    """(uid, gid) of ``name`` when the platform is root (made if missing); None otherwise.

    ``SpawnerError`` if it is root, or cannot be made.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _create_user(name)
        log.info("Created the sandbox user %s", name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        msg = f"The sandbox user {name!r} must not be root."
        raise SpawnerError(msg)
    return entry.pw_uid, entry.pw_gid


def user_kwargs(host_user: HostUser) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``host_user`` (none for the platform's)."""
    if host_user is None:
        return {}
    uid, gid = host_user
    return {"user": uid, "group": gid, "extra_groups": []}


def _create_user(name: str) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(  # noqa: S603 - fixed program, name from config
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir",
         "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0 and not _user_exists(name):
        msg = (
            f"Cannot create the sandbox user {name!r} "
            f"({result.stderr.strip() or result.returncode}). Create it yourself "
            f"(useradd --system --user-group {name}) or set "
            "LocalSpawner.sandbox_user to an existing unprivileged user."
        )
        raise SpawnerError(msg)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
