"""The spawner contract: how a sandbox is started, found again, checked and stopped.

The platform reaches every sandbox only through its agent (HTTP + WebSocket with a secret
token). A spawner only knows how to start one and how to reach it; everything else (state in
PostgreSQL, loading files, terminals) is the same for every spawner.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets import Bool, Float, Integer, observe
from traitlets.config import LoggingConfigurable

# Called with (percent 0-100, message) while a sandbox starts.
Progress = Callable[[int, str], Awaitable[None] | None]
# Returns the ids of the sandboxes the platform knows (``Spawner.reap``).
KnownIds = Callable[[], Awaitable[Collection[str]]]


async def report_progress(progress: Progress, percent: int, message: str) -> None:
    """Call ``progress``, awaiting it if it is a coroutine function."""
    result = progress(percent, message)
    if inspect.isawaitable(result):
        await result


@dataclass(frozen=True)
class AgentEndpoint:
    """Where an agent listens: a Unix socket path (local) or a host and port (Kubernetes)."""

    unix_socket: str | None = None
    host: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if (self.unix_socket is None) == (self.host is None or self.port is None):
            msg = "An AgentEndpoint is either a Unix socket or a host and port."
            raise ValueError(msg)


@dataclass(frozen=True)
class SandboxHandle:
    """A running sandbox as its spawner knows it.

    ``state`` is JSON-serialisable and stored in the sandbox's database row, so any replica
    (or this one after a restart) can poll or stop the sandbox with it.
    """

    sandbox_id: str
    endpoint: AgentEndpoint
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentLifetime:
    """Limits an agent keeps by itself (seconds; 0 disables each), so that a sandbox ends even
    when no platform is left to stop it (see the agent's ``--idle-timeout``, ``--max-age`` and
    ``--unclaimed-timeout``)."""

    idle_timeout: float = 0.0
    max_age: float = 0.0
    unclaimed_timeout: float = 0.0

    def args(self) -> list[str]:
        """The agent's command-line options for these limits."""
        return [
            f"--idle-timeout={self.idle_timeout:g}",
            f"--max-age={self.max_age:g}",
            f"--unclaimed-timeout={self.unclaimed_timeout:g}",
        ]


@dataclass(frozen=True)
class AgentFeatures:
    """What agents do beyond the basics (none by default): make the workspace venv, serve the
    package index relay on a loopback port (0: none), start a spare kernel, bound language
    servers (None: the agent's defaults). See the agent's ``--workspace-env``,
    ``--package-index-port``, ``--spare-kernel`` and ``--lsp-*`` options."""

    workspace_env: bool = False
    index_port: int = 0
    spare_kernel: bool = False
    lsp_idle_timeout: float | None = None
    lsp_memory_limit: int | None = None

    def args(self) -> list[str]:
        """The agent's command-line options for these."""
        args = ["--workspace-env"] if self.workspace_env else []
        if self.index_port:
            args.append(f"--package-index-port={self.index_port}")
        if self.spare_kernel:
            args.append("--spare-kernel")
        if self.lsp_idle_timeout is not None:
            args.append(f"--lsp-idle-timeout={self.lsp_idle_timeout:g}")
        if self.lsp_memory_limit is not None:
            args.append(f"--lsp-memory-limit={self.lsp_memory_limit}")
        return args


class SpawnerError(Exception):
    """A sandbox could not be started; the message says why and what to do."""


class Spawner(LoggingConfigurable):
    """Starts, stops and finds sandboxes.

    Subclass and override ``start``, ``stop``, ``poll`` and ``find_running``. All must be
    coroutines. A spawner never runs user code outside a sandbox: if it cannot isolate, it
    raises ``SpawnerError``.
    """

    warm_pool_size = Integer(
        2, help="Sandboxes kept started and unassigned, so opening a workspace is instant."
    ).tag(config=True)

    launch_timeout = Float(
        10.0, help="Seconds the sandbox's process (or pod) may take to come up."
    ).tag(config=True)

    start_timeout = Float(
        None,
        allow_none=True,
        help="Deprecated: the former name of launch_timeout, still accepted for one release.",
    ).tag(config=True)

    @observe("start_timeout")
    def _renamed_start_timeout(self, change: Any) -> None:
        if change["new"] is None:
            return
        name = type(self).__name__
        self.log.warning(
            "%s.start_timeout is deprecated: use %s.launch_timeout (the same seconds).",
            name,
            name,
        )
        self.launch_timeout = change["new"]

    lifetime = AgentLifetime()
    """The limits every agent this spawner starts keeps by itself; set by ``Sandboxes`` from
    its culling settings. Pass ``lifetime.args()`` on the agent's command line."""

    spare_kernel = Bool(
        False,
        help="Start a kernel in every sandbox ahead of time, so that the workspace's first "
        "kernel is ready at once (it costs the memory of an idle kernel per sandbox until it "
        "is used, or shut down 10 minutes after the workspace opened unused).",
    ).tag(config=True)

    language_server_idle_timeout = Float(
        600.0,
        help="Seconds a sandbox's language server (the editor's IntelliSense) lives on after "
        "its last editor left. 0: until the sandbox stops.",
    ).tag(config=True)

    language_server_memory_limit = Integer(
        400 * 1024**2,
        help="Resident bytes a sandbox's language server (with what it starts) may use before "
        "it is killed and started again (the sandbox lives on). 0: no limit.",
    ).tag(config=True)

    features = AgentFeatures()
    """What the agents do beyond the basics; set by ``Sandboxes`` from ``PackageIndex`` and
    ``spare_kernel``. Pass ``features.args()`` on the agent's command line."""

    async def check(self) -> None:
        """Raise ``SpawnerError`` if this host cannot run sandboxes. Override in a subclass."""

    async def start(
        self,
        sandbox_id: str,
        token: str,
        progress: Progress,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> SandboxHandle:
        """Start a sandbox whose agent requires ``token``; return once it is listening.

        ``labels`` describe the sandbox (e.g. its workspace id) for the people operating the
        platform; a spawner may attach them to what it makes (Kubernetes: pod labels) or
        ignore them. Never secrets.

        Must be a coroutine. On failure, clean up what was started and raise ``SpawnerError``.
        """
        raise NotImplementedError

    async def hold_to_limits(self, handle: SandboxHandle) -> None:
        """Called once nobody waits for a started sandbox any more: when the agent of a
        workspace's sandbox first answers (before any terminal or kernel opens in it, so
        before any user code runs), and as soon as ``start`` returns for a warm-pool sandbox.
        Override in a subclass to end what a start may take beyond the sandbox's limits
        (``LocalSpawner``: ``start_cpu_limit``). Must be a coroutine; ``SpawnerError`` fails
        the start.
        """

    async def stop(self, handle: SandboxHandle, *, now: bool = False) -> None:
        """Stop the sandbox and everything in it; no error if it is already gone. With
        ``now``, kill it without the grace period its agent otherwise gets (it hangs).

        Must be a coroutine.
        """
        raise NotImplementedError

    async def poll(self, handle: SandboxHandle) -> bool:
        """Whether the sandbox is still running. Must be a coroutine."""
        raise NotImplementedError

    async def find_running(self) -> list[SandboxHandle]:
        """Every sandbox of this spawner still running (after a restart: to reattach or reap).

        Must be a coroutine.
        """
        raise NotImplementedError

    async def reap(self, known_ids: KnownIds) -> list[str]:
        """Stop every sandbox of this spawner that the platform does not know; return their
        ids. Called by ``Sandboxes.reconcile``, at start-up and after every cull round.

        ``known_ids`` is awaited only once the sandboxes are listed. The platform records a
        sandbox before it starts one, so everything listed is known by then, even a sandbox
        that another replica was starting while this one listed; asked before the listing, the
        platform would not know that one yet.

        Override in a subclass to also remove what ``find_running`` does not see, in the same
        order. Must be a coroutine.
        """
        running = await self.find_running()
        known = set(await known_ids())
        orphans = [handle for handle in running if handle.sandbox_id not in known]
        for handle in orphans:
            self.log.warning(
                "sandbox %s | not known to the platform: stopping it", handle.sandbox_id
            )
            await self.stop(handle)
        return [handle.sandbox_id for handle in orphans]

    async def close(self) -> None:
        """Release what the spawner holds (connections, threads); sandboxes keep running.

        Override in a subclass. Must be a coroutine.
        """
