"""A kernel started ahead of time (``--spare-kernel``), so that the workspace's first
``POST /api/kernels`` answers with an idle kernel at once instead of after a Python start.

It is started when the agent starts (in a warm-pool sandbox, long before anyone asks), in the
root, with the agent's environment, and kept out of every list until taken. Taking it moves it
to the kernel's folder and session: a silent ``execute_request`` changes its working folder and
``JPY_SESSION_NAME`` (and ``__session__``, which ipykernel sets from it at start), and its
manager's launch arguments are updated so that a restart starts a fresh process in the same
place. Only the first kernel is served this way; it is shut down if nobody took it
``expire_after`` seconds after the workspace's files were loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from typing import TYPE_CHECKING

from kernel_image.kernel_clients import DELIMITER
from kernel_image.kernels_spec import PYTHON3
from kernel_image.kernels_wire import make_parts

if TYPE_CHECKING:
    from kernel_image.kernel import Kernel
    from kernel_image.kernels import Kernels

log = logging.getLogger("kernel_image.kernels")

SETUP_TIMEOUT = 10.0


def setup_code(cwd: str, session_env: dict[str, str]) -> str:
    """What the spare runs, silently, when it is taken."""
    lines = ["import os as _agent_os", f"_agent_os.chdir({cwd!r})"]
    if session_env:
        lines.append(f"_agent_os.environ.update({session_env!r})")
        name = session_env.get("JPY_SESSION_NAME")
        lines.append(f"get_ipython().user_ns['__session__'] = {name!r}")
    lines.append("del _agent_os")
    return "\n".join(lines)


async def run_silently(kernel: Kernel, code: str) -> bool:
    """Execute ``code`` without output, history or a new execution count; whether it worked."""
    from kernel_image.kernels_backend import close_socket, connect

    shell = connect(kernel.km, "shell")
    try:
        content = {"code": code, "silent": True, "store_history": False, "allow_stdin": False}
        parts = make_parts("execute_request", content, kernel.agent_session)
        await shell.send_multipart([DELIMITER, kernel.km.session.sign(parts), *parts])
        msg_id = json.loads(parts[0])["msg_id"]
        deadline = time.monotonic() + SETUP_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if not await shell.poll(max(1, int(left * 1000))):
                break
            reply = await shell.recv_multipart()
            index = reply.index(DELIMITER)
            if json.loads(reply[index + 3]).get("msg_id") == msg_id:
                return bool(json.loads(reply[index + 5]).get("status") == "ok")
        return False
    finally:
        close_socket(shell)


class SpareKernel:
    """The one spare kernel of the agent."""

    def __init__(self, kernels: Kernels, expire_after: float) -> None:
        self.kernels = kernels
        self.expire_after = expire_after
        self._task: asyncio.Task[Kernel | None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def prepare(self) -> None:
        """Start it in the background."""
        self._task = asyncio.create_task(self._start())

    async def _start(self) -> Kernel | None:
        try:
            # jupyter_client takes a while to import: not on the loop, which is busy answering
            # the platform while the sandbox starts.
            await asyncio.to_thread(importlib.import_module, "kernel_image.kernels_backend")
            kernel = await self.kernels.launch(PYTHON3, self.kernels.config.root, None)
        except Exception:
            log.exception("kernels | the spare kernel could not be started")
            return None
        if not await kernel.wait_ready():
            await self.kernels.stop_unlisted(kernel)
            return None
        log.info("kernel %s | spare, ready", kernel.id)
        return kernel

    async def take(self, cwd: str, session_env: dict[str, str]) -> Kernel | None:
        """The spare, moved to ``cwd`` and the session; None if there is none (any more)."""
        task, self._task = self._task, None
        if task is None:
            return None
        if self._expiry is not None:
            self._expiry.cancel()
        kernel = await task
        if kernel is None:
            return None
        if not await kernel.km.is_alive() or not await run_silently(
            kernel, setup_code(cwd, session_env)
        ):
            log.warning("kernel %s | the spare could not be used; starting another", kernel.id)
            await self.kernels.stop_unlisted(kernel)
            return None
        kernel.km.update_env(env=session_env)
        # A restart launches with these (jupyter_client keeps no public setter for the folder).
        if kernel.km._launch_args is not None:
            kernel.km._launch_args["cwd"] = cwd  # type: ignore[assignment]
        return kernel

    def expire_later(self) -> None:
        """The workspace's files were loaded: shut the spare down if unused by then."""
        if self._task is not None and self.expire_after > 0 and self._expiry is None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(
                self.expire_after, lambda: asyncio.ensure_future(self.discard("unused"))
            )

    async def discard(self, why: str) -> None:
        """Shut it down, if it is still spare."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            kernel = await task
            if kernel is not None:
                log.info("kernel %s | spare shut down (%s)", kernel.id, why)
                await self.kernels.stop_unlisted(kernel)
