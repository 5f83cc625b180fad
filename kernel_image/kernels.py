"""The agent's kernels (``Kernels``): start (the spare first, ``spare_kernel``), list, interrupt,
restart, shut down and cull Jupyter kernels (ipykernel) run with jupyter_client; each one is a
``kernel.Kernel``. Until the first kernel starts, nothing of them is imported: not ``kernel``
(with the clients and the wire format), not ``spare_kernel`` without a spare, not
jupyter_client and pyzmq (``kernels_backend``); an agent that only serves terminals stays
smaller (docs/performance.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from kernel_image import files
from kernel_image.config import AgentConfig
from kernel_image.kernels_spec import PYTHON3

if TYPE_CHECKING:
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.multikernelmanager import AsyncMultiKernelManager

    from kernel_image.kernel import Kernel, KernelModel
    from kernel_image.spare_kernel import SpareKernel

log = logging.getLogger("kernel_image.kernels")


@dataclass(frozen=True)
class KernelsConfig:
    """What the command line decided about kernels (see ``kernel_image.app.parse_args``)."""

    root: str
    max_kernels: int = 4
    idle_timeout: float = 1800.0
    """Seconds an idle, unconnected kernel lives on; 0 never culls."""
    stalled_client_timeout: float = AgentConfig.stalled_client_timeout
    ready_timeout: float = 60.0
    """Seconds a new or restarted kernel may take to answer before clients are let in anyway."""
    shutdown_wait: float = 3.0
    """Seconds a kernel gets to exit after a shutdown request (then SIGTERM, then SIGKILL)."""
    spare: bool = False
    """Start a kernel ahead of time for the first ``start`` (``kernel_image.spare_kernel``)."""
    spare_timeout: float = 600.0
    """Seconds after the workspace's files were loaded before an unused spare is shut down."""


class KernelsError(Exception):
    """Base of the errors handlers turn into HTTP answers."""


class NoSuchKernelError(KernelsError):
    """No running kernel has that id."""


class NoSuchKernelSpecError(KernelsError):
    """No kernelspec has that name."""


class MaxKernelsReachedError(KernelsError):
    """The agent runs ``max_kernels`` kernels already."""


class KernelStartError(KernelsError):
    """The kernel process could not be started."""


class Kernels:
    """The agent's kernels: start, list, interrupt, restart, shut down, cull."""

    def __init__(self, config: KernelsConfig) -> None:
        self.config = config
        self.kernels: dict[str, Kernel] = {}
        self.last_client_activity: float | None = None
        """Unix time of the last kernel request or client message (None before any)."""
        self._starting = 0
        self._mkm: AsyncMultiKernelManager | None = None
        self._runtime_dir: str | None = None
        self._culler: asyncio.Task[None] | None = None
        self.spare: SpareKernel | None = None
        if config.spare:
            from kernel_image.spare_kernel import SpareKernel

            self.spare = SpareKernel(self, config.spare_timeout)

    # -- activity -----------------------------------------------------------------------------

    def note_activity(self) -> None:
        """A client asked something of a kernel."""
        self.last_client_activity = time.time()

    @property
    def last_activity(self) -> float | None:
        """Now while any kernel is busy; else the last client request (None before any)."""
        if any(kernel.busy for kernel in self.kernels.values()):
            return time.time()
        return self.last_client_activity

    # -- starting -----------------------------------------------------------------------------

    def _manager(self) -> AsyncMultiKernelManager:
        if self._mkm is None:
            from kernel_image.kernels_backend import make_manager

            # Connection files (the kernels' keys) and IPython's files live in a private folder.
            self._runtime_dir = tempfile.mkdtemp(prefix="agent-kernels-")
            self._mkm = make_manager(self._runtime_dir, self.config.shutdown_wait, log)
        return self._mkm

    def cwd_for(self, path: str | None) -> str:
        """A kernel's working folder: ``path`` if it is a folder, else the nearest folder above
        it (a notebook's own folder), inside the root, as jupyter_server's ``cwd_for_path``."""
        parts = files.split(path or "")
        for end in range(len(parts), -1, -1):
            try:
                return files.existing_directory(self.config.root, "/".join(parts[:end]))
            except (OSError, files.OutsideRootError):
                continue
        return self.config.root

    def _env(self, session_name: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"AGENT_TOKEN", "PYTHONPATH"}}
        # IPython's history and profile stay out of the workspace (they would be synced).
        assert self._runtime_dir is not None  # noqa: S101  (made by _manager)
        env.setdefault("IPYTHONDIR", str(Path(self._runtime_dir) / "ipython"))
        if session_name:
            env.update(self._session_env(session_name))
        return env

    def _session_env(self, session_name: str) -> dict[str, str]:
        """``JPY_SESSION_NAME``: the session's path in the root (``PathError`` if outside)."""
        return {"JPY_SESSION_NAME": str(Path(self.config.root, *files.split(session_name)))}

    async def start(
        self, name: str | None, path: str | None = None, session_name: str | None = None
    ) -> Kernel:
        """Start a kernel in ``path``'s folder; raises ``KernelsError`` subclasses."""
        name = name or PYTHON3
        if name != PYTHON3:
            raise NoSuchKernelSpecError(name)
        if len(self.kernels) + self._starting >= self.config.max_kernels:
            raise MaxKernelsReachedError(self.config.max_kernels)
        cwd = self.cwd_for(path)
        if session_name:
            files.split(session_name)  # a PathError before anything starts
        self.note_activity()
        self._starting += 1
        try:
            session_env = self._session_env(session_name) if session_name else {}
            kernel = await self.spare.take(cwd, session_env) if self.spare else None
            if kernel is None:
                kernel = await self.launch(name, cwd, session_name)
        except Exception as e:
            log.exception("kernels | could not start a %s kernel", name)
            raise KernelStartError(str(e) or type(e).__name__) from e
        finally:
            self._starting -= 1
        self.kernels[kernel.id] = kernel
        log.info("kernel %s | started in %s", kernel.id, cwd)
        return kernel

    async def launch(self, name: str, cwd: str, session_name: str | None) -> Kernel:
        """Start a kernel process and begin watching it, without listing it."""
        from kernel_image.kernel import Kernel

        mkm = self._manager()
        kernel_id = await mkm.start_kernel(kernel_name=name, cwd=cwd, env=self._env(session_name))
        kernel = Kernel(
            self, kernel_id, name, cast("AsyncKernelManager", mkm.get_kernel(kernel_id))
        )
        kernel.start()
        return kernel

    async def stop_unlisted(self, kernel: Kernel) -> None:
        """Stop a kernel that was never listed (a spare)."""
        kernel.closing = True
        try:
            await self._manager().shutdown_kernel(kernel.id, now=True)
        except Exception:
            log.exception("kernel %s | shutdown failed", kernel.id)
        kernel.close("The kernel was shut down.")

    # -- finding ------------------------------------------------------------------------------

    def get(self, kernel_id: str) -> Kernel:
        """A running kernel; ``NoSuchKernelError`` otherwise."""
        kernel = self.kernels.get(kernel_id)
        if kernel is None or kernel.closing:
            raise NoSuchKernelError(kernel_id)
        return kernel

    def models(self) -> list[KernelModel]:
        """Every running kernel's model, in the order they started."""
        return [k.model() for k in self.kernels.values() if not k.closing]

    # -- actions ------------------------------------------------------------------------------

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt (SIGINT to the kernel's process group)."""
        kernel = self.get(kernel_id)
        self.note_activity()
        await kernel.km.interrupt_kernel()
        log.info("kernel %s | interrupted", kernel_id)

    def rename_session(self, kernel_id: str, session_name: str) -> Kernel:
        """The kernel's session was renamed: its next restarts (asked for or automatic) get the
        new ``JPY_SESSION_NAME``, as jupyter_server's ``update_session`` arranges."""
        kernel = self.get(kernel_id)
        kernel.km.update_env(env=self._session_env(session_name))
        log.info("kernel %s | session renamed", kernel_id)
        return kernel

    async def restart(self, kernel_id: str) -> Kernel:
        """Restart on the same ports (clients stay connected); return once it answers."""
        kernel = self.get(kernel_id)
        self.note_activity()
        async with kernel.lock:
            self.get(kernel_id)
            kernel.execution_state = "restarting"
            try:
                await self._manager().restart_kernel(kernel_id)
            finally:
                kernel.execution_state = "starting"
                kernel.become_ready()
        await kernel.wait_ready()
        log.info("kernel %s | restarted", kernel_id)
        return kernel

    async def shutdown_kernel(self, kernel_id: str, *, now: bool = False) -> None:
        """Ask the kernel to exit (SIGTERM, then SIGKILL, if it does not) and forget it."""
        kernel = self.get(kernel_id)
        self.note_activity()
        async with kernel.lock:
            if kernel.closing:
                return
            kernel.closing = True
            try:
                await self._manager().shutdown_kernel(kernel_id, now=now)
            except Exception:
                log.exception("kernel %s | shutdown failed", kernel_id)
                with contextlib.suppress(Exception):
                    self._manager().remove_kernel(kernel_id)
            finally:
                self.kernels.pop(kernel_id, None)
                kernel.close("The kernel was shut down.")
        log.info("kernel %s | shut down", kernel_id)

    async def forget_dead(self, kernel: Kernel) -> None:
        """Remove a kernel that died for good (as jupyter_server does)."""
        with contextlib.suppress(NoSuchKernelError):
            await self.shutdown_kernel(kernel.id, now=True)

    # -- culling ------------------------------------------------------------------------------

    def start_culling(self) -> None:
        """Cull idle kernels in the background (unless ``idle_timeout`` is 0)."""
        if self.config.idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.create_task(self._cull_forever())

    async def _cull_forever(self) -> None:
        interval = max(0.5, min(60.0, self.config.idle_timeout / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cull_once()
            except Exception:
                log.exception("kernels | culling failed")

    async def cull_once(self) -> int:
        """Shut down kernels idle (not busy, no client) for ``idle_timeout``; how many."""
        culled = 0
        now = time.time()
        for kernel in list(self.kernels.values()):
            idle_for = now - kernel.last_activity
            if kernel.busy or kernel.clients or idle_for <= self.config.idle_timeout:
                continue
            log.info("kernel %s | culled after %.0fs idle", kernel.id, idle_for)
            with contextlib.suppress(NoSuchKernelError):
                await self.shutdown_kernel(kernel.id)
                culled += 1
        return culled

    # -- the end ------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Shut every kernel down (at the agent's exit) and remove the private folder."""
        if self._culler is not None:
            self._culler.cancel()
        if self.spare is not None:
            await self.spare.discard("the agent is stopping")
        if self.kernels:
            log.info("kernels | shutting down %d kernel(s)", len(self.kernels))
        await asyncio.gather(
            *(self.shutdown_kernel(kernel_id) for kernel_id in list(self.kernels)),
            return_exceptions=True,
        )
        if self._mkm is not None:
            self._mkm.context.destroy(linger=0)
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
