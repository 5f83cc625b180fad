"""What users install, reported to the platform, and put back into a new sandbox.

``EnvironmentRecorder`` watches the workspace venv's ``site-packages`` (inotify, not
recursive: a ``.dist-info`` folder appears or goes for every install, upgrade and uninstall,
whichever tool made it) and reports each change as a difference from what it reported last:
the distributions installed or changed, and the names removed. The platform keeps the list in
PostgreSQL; ``POST /api/packages/install`` (``InstallHandler``) puts it back into a new sandbox,
and what that installs is not reported back (it is what the platform already has).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from kernel_image import inotify
from kernel_image.auth import AgentHandler, ApiError
from kernel_image.package_channel import PackageChannel
from kernel_image.pyenv import Dist, WorkspaceEnv

log = logging.getLogger("kernel_image.packages")

SETTLE = 1.0
"""Seconds without a change in site-packages before it is scanned (an install writes many
folders in a burst)."""
INSTALL_TIMEOUT = 900.0
MAX_PACKAGES = 2000
VERSION_PATTERN = re.compile(r"[A-Za-z0-9.+!_-]{1,100}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class EnvironmentRecorder:
    """Reports the venv's changes on the package channel."""

    def __init__(self, env: WorkspaceEnv, channel: PackageChannel) -> None:
        self.env = env
        self.channel = channel
        self.reported: dict[str, Dist] = env.installed() or {}
        self.paused = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch ``site-packages`` and report from now on."""
        try:
            inotify.shared().open()
            inotify.shared().add_watch(str(self.env.site_packages), self)
        except OSError as e:
            log.warning("packages | cannot watch %s: %s", self.env.site_packages, e.strerror)
            return
        self._task = asyncio.create_task(self._run())

    def inotify_events(self, events: list[inotify.Event]) -> None:
        """Something in ``site-packages`` changed: report once the burst settles."""
        self._changed.set()

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            # Settle: report once the burst of writes is over.
            while True:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), SETTLE)
                    continue
                break
            if not self.paused:
                self.report_changes()

    def report_changes(self) -> None:
        """Compare the venv with what was reported; report the difference, if any."""
        current = self.env.installed()
        if current is None:
            self._changed.set()  # an install is still writing: look again once it settles
            return
        installed = [d.as_json() for n, d in current.items() if self.reported.get(n) != d]
        removed = [self.reported[n].name for n in self.reported if n not in current]
        self.reported = current
        if installed or removed:
            names = [d["name"] for d in installed] + [f"-{n}" for n in removed]
            log.info("packages | environment changed: %s", ", ".join(map(str, names)))
            self.channel.report({"installed": installed, "removed": removed})

    @contextlib.asynccontextmanager
    async def restoring(self) -> AsyncIterator[None]:
        """While the platform's own list is installed: nothing of it is reported back."""
        self.paused = True
        try:
            yield
        finally:
            self.reported = self.env.installed() or self.reported
            self.paused = False


def requirement(dist: dict[str, Any], root: str) -> str:
    """What to install for one recorded distribution; ``ApiError`` 400 for a malformed one,
    ``ValueError`` (with the reason) for one that cannot be installed again."""
    name, version, source = dist.get("name"), dist.get("version"), dist.get("source")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ApiError(400, "each package needs a valid 'name'")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ApiError(400, f"package {name!r} needs a valid 'version'")
    if source is None:
        return f"{name}=={version}"
    if not isinstance(source, str):
        raise ApiError(400, f"package {name!r}: 'source' must be a string or null")
    url = urlsplit(source)
    path = Path(unquote(url.path))
    if url.scheme == "file" and path.is_relative_to(root) and path.is_file():
        return str(path)
    msg = f"installed from {source}, not from the package index: install it again"
    raise ValueError(msg)


class InstallHandler(AgentHandler):
    """``POST /api/packages/install`` ``{"packages": [{"name", "version", "source"}]}``: put
    the platform's list back into the venv, without resolving dependencies again (the list has
    them all). Answers ``{"installed": [names], "failed": [{"name", "reason"}]}``."""

    async def post(self) -> None:
        env: WorkspaceEnv | None = self.settings["workspace_env"]
        recorder: EnvironmentRecorder | None = self.settings["environment_recorder"]
        if env is None or recorder is None:
            raise ApiError(404, "this agent has no workspace venv (--workspace-env)")
        packages = self.read_json_object().get("packages")
        if not isinstance(packages, list) or len(packages) > MAX_PACKAGES:
            raise ApiError(400, f"'packages' must be a list of at most {MAX_PACKAGES}")
        wanted: dict[str, str] = {}
        failed: list[dict[str, str]] = []
        for dist in packages:
            if not isinstance(dist, dict):
                raise ApiError(400, "each package must be an object")
            try:
                wanted[dist["name"]] = requirement(dist, env.root)
            except ValueError as e:
                failed.append({"name": dist["name"], "reason": str(e)})
        async with recorder.restoring():
            reason = await install(env, list(wanted.values())) if wanted else None
            if reason is not None:
                # Something failed: install one by one to say which.
                for name, requirement_text in list(wanted.items()):
                    if (why := await install(env, [requirement_text])) is not None:
                        failed.append({"name": name, "reason": why})
                        del wanted[name]
        self.write_json({"installed": list(wanted), "failed": failed})


async def install(env: WorkspaceEnv, requirements: list[str]) -> str | None:
    """Install with uv (pip's resolver is not needed: every dependency is listed); None when
    it worked, else the reason uv gave."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uv",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--python",
        str(env.python),
        *requirements,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=env.root,
        env={**os.environ, **env.variables()},
    )
    try:
        _, errors = await asyncio.wait_for(process.communicate(), INSTALL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return f"not installed within {INSTALL_TIMEOUT:g} s"
    if process.returncode == 0:
        return None
    lines = [line for line in errors.decode(errors="replace").splitlines() if line.strip()]
    return " ".join(lines[-3:])[:500] or f"uv exited with status {process.returncode}"
