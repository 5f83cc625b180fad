"""Starting one bwrap sandbox: its options, the trial run, and the launch up to its agent.

``launch`` starts bwrap, records the sandbox's init in ``state.json`` while bwrap waits
(``--block-fd``), puts the init in its cgroups, then lets it run; ``wait_for_agent`` waits
until the init runs the agent.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from extensions.sandboxes import python_env
from extensions.sandboxes.spawners import bwrap, cgroups, local_state, processes
from extensions.sandboxes.spawners.base import SpawnerError
from extensions.sandboxes.spawners.fds import Fds, nul_join, read_child_pid
from extensions.sandboxes.spawners.host_user import HostUser, user_kwargs
from extensions.sandboxes.spawners.local_state import LOG_NAME, LocalState

WORKSPACE = "/workspace"
AGENT_DIR = "/opt/agent"
SANDBOX_UID = 1000
SANDBOX_GID = 1000
EXITED = "The sandbox exited while it was being set up."
UNSHARE, BASH = "/usr/bin/unshare", "/bin/bash"

# The command bwrap runs, given the listening socket's, the token's and the log's fds.
Command = Callable[[int, int, int], list[str]]


@dataclass(frozen=True)
class SandboxSpec:
    """What bwrap needs to make a sandbox, from the spawner's settings."""

    binary: str
    host_user: HostUser
    ro_binds: tuple[bwrap.Bind, ...]
    allow_network: bool
    disk_size: int  # bytes of /workspace; 0: the kernel's default
    tmp_size: int  # bytes of /tmp and /dev/shm, each
    env: Mapping[str, str]
    log_limit: int  # bytes of the sandbox's log; 0: no limit
    limits: cgroups.Limits
    python: str  # the sandbox venv's interpreter (runs the rlimit wrapper)
    permission_hint: str  # added to failures that say "Permission denied"
    userns_limits: tuple[tuple[str, int], ...] = ()  # /proc/sys/user/<name> of its namespace

    def bwrap_command(self, bwrap_args: list[str]) -> tuple[str, list[str]]:
        """The executable and argv that run bwrap with ``bwrap_args``.

        With ``userns_limits``, bwrap runs in a user namespace of its own, whose per-namespace
        limits (``/proc/sys/user/``) are set first: Linux counts inotify instances and watches
        per user, and every sandbox runs as the same host user, so without its own limits one
        sandbox could take them all and no other could start. The sandbox's namespace, made by
        bwrap inside that one, is held to them (limits apply at every level up).
        argv[0] stays "bwrap": the sandbox's init is a fork of it, and its command line must
        not show the host's paths.
        """
        if not self.userns_limits:
            return self.binary, ["bwrap", *bwrap_args]
        writes = [f"echo {value} > /proc/sys/user/{name}" for name, value in self.userns_limits]
        script = " && ".join([*writes, 'exec -a bwrap "$0" "$@"'])
        argv = ["unshare", "--user", "--map-root-user", "--", BASH, "-c", script, self.binary]
        return UNSHARE, [*argv, *bwrap_args]

    def options(self, info_fd: int, block_fd: int, fds: Fds) -> bwrap.BwrapOptions:
        """The bwrap options; fds of generated files are added to ``fds``."""
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
            workspace_size=self.disk_size,
            tmp_size=self.tmp_size,
            etc_files=tuple(etc_files),
            ro_binds=self.ro_binds,
            uid=SANDBOX_UID,
            gid=SANDBOX_GID,
            allow_network=self.allow_network,
        )

    def why(self, folder: Path, output: int | None = None) -> str:
        """The end of a failed sandbox's log (bwrap's ``output`` copied in first), with a hint
        for permission problems."""
        if output is not None:
            local_state.copy_output(output, folder / LOG_NAME, self.log_limit)
        tail = local_state.log_tail(folder / LOG_NAME)
        return tail + (self.permission_hint if "Permission denied" in tail else "")


@dataclass
class Launch:
    """What starting bwrap produced."""

    process: subprocess.Popen[bytes]
    state: LocalState  # without the agent, which does not run yet; already in state.json
    command: list[str]  # what bwrap runs: the rlimit wrapper, which then execs the agent
    output: int  # the platform's end of bwrap's stdout and stderr, closed once the agent runs
    spec: SandboxSpec

    @property
    def pid(self) -> int:
        """The sandbox's init."""
        return self.state["pid"]


def agent_env(venv: Path) -> dict[str, str]:
    """The environment of bwrap, its init and the agent: no secret (the token is on a pipe,
    ``--token-fd``), since the init's ``/proc/1/environ`` is readable inside.

    The agent must not pass ``PYTHONPATH`` on to user processes.
    """
    env = str(venv.absolute())
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


def python_binds(venv: Path, agent_package: Path) -> list[bwrap.Bind]:
    """The venv, its base interpreter's prefix if outside /usr, and the agent package."""
    env = venv.absolute()
    agent = agent_package.absolute()
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


def permission_hint(sandbox_user: str, folders: tuple[str, ...]) -> str:
    """What to do when bwrap, as the sandbox user, cannot reach a folder to bind (it runs as
    that user only when the platform is root)."""
    if os.geteuid() != 0:
        return ""
    return (
        f" (bwrap runs as {sandbox_user}, which must be able to reach the bwrap binary,"
        f" {' and '.join(folders)}: their parent folders need o+x)"
    )


def wrapped_command(
    spec: SandboxSpec, plan: cgroups.CgroupPlan, agent: list[str], token_fd: int, log_fd: int
) -> list[str]:
    """The ``agent`` command, behind the rlimits that stand in for missing cgroups, with the
    log as stdout and stderr until the agent takes it over (``--log-fd``)."""
    rlimits = cgroups.fallback_rlimits(plan, spec.limits)
    # No file a sandbox writes, the log on the host included, outgrows its biggest tmpfs.
    biggest = max(spec.disk_size, spec.tmp_size)
    if biggest:
        rlimits.append(("RLIMIT_FSIZE", biggest))
    nice = 10 if "cpu" in plan.unavailable else 0
    prefix = cgroups.rlimit_prefix(spec.python, rlimits, nice, output_fd=log_fd)
    log_args = ["--log-fd", str(log_fd), "--log-max-bytes", str(spec.log_limit)]
    return [*prefix, *agent, "--token-fd", str(token_fd), *log_args]


def compile_agent(python: str, package: str) -> str | None:
    """Write the agent's bytecode next to its sources (files already up to date are left
    alone); None if it worked, else why not. Sandboxes bind the package read-only, so without
    it every agent compiles its modules at each start: slower, and 0.7 MiB more memory per
    sandbox for good."""
    command = [python, "-m", "compileall", "-q", package]
    try:
        done = subprocess.run(  # noqa: S603 (our interpreter, our folder)
            command, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not compile the agent: {e}"
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-500:]
        return (
            f"could not write the agent's bytecode in {package} (agents will compile it at "
            f"each start): {output}"
        )
    return None


def first_working(specs: list[SandboxSpec]) -> str:
    """The binary of the first of ``specs`` that makes a trial sandbox; ``SpawnerError`` with
    what every one of them answered if none does."""
    failures = []
    for spec in specs:
        error = try_bwrap(spec)
        if error is None:
            return spec.binary
        failures.append(f"{spec.binary}: {error}")
    raise SpawnerError(bwrap.no_sandbox_message(failures))


def try_bwrap(spec: SandboxSpec) -> str | None:
    """Run ``true`` in a sandbox shaped like the real ones; None if it worked, else why."""
    fds = Fds()
    try:
        info_fd, _ = fds.pipe(child_reads=False)
        block_fd = fds.data(b"x")
        args_fd = fds.data(nul_join(bwrap.build_args(spec.options(info_fd, block_fd, fds))))
        executable, argv = spec.bwrap_command(["--args", str(args_fd), "--", "true"])
        result = subprocess.run(  # noqa: S603 - our bwrap, our arguments
            argv,
            executable=executable,
            pass_fds=fds.passed,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
            **user_kwargs(spec.host_user),
        )
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        fds.close()
    if result.returncode != 0:
        return result.stderr.strip() or f"exit status {result.returncode}"
    return None


def launch(
    spec: SandboxSpec,
    command: Command,
    folder: Path,
    listener: socket.socket,
    token: str,
    cgroup_paths: list[Path],
    timeout: float,
    started: Callable[[subprocess.Popen[bytes]], None],
) -> Launch:
    """Start bwrap, record its sandbox init, put it in the cgroups, then let it run (in a
    thread). ``started`` is given bwrap's process as soon as it runs."""
    fds = Fds()
    try:
        info_fd, info = fds.pipe(child_reads=False)
        block_fd, block = fds.pipe(child_reads=True)
        args_fd = fds.data(nul_join(bwrap.build_args(spec.options(info_fd, block_fd, fds))))
        # The token reaches the agent only, on a pipe it reads once: bwrap's init (pid 1,
        # the user's uid, open to ptrace) closes every inherited descriptor but 0-2.
        token_fd = fds.data(token.encode())
        # The agent's log, for the agent only (it is non-dumpable, and its stdio and its
        # children's are /dev/null); the init never holds a host file.
        log_fd = os.open(folder / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fds.passed.append(log_fd)
        argv = command(listener.fileno(), token_fd, log_fd)
        # bwrap's own output (its errors while it sets up), read only during the start:
        # a pipe whose reader is gone afterwards, not a file of the host.
        output, output_fd = os.pipe()
        os.set_blocking(output, False)
        fds.kept.append(output)
        executable, bwrap_argv = spec.bwrap_command(["--args", str(args_fd), "--", *argv])
        try:
            process = subprocess.Popen(  # noqa: S603 - our bwrap, our arguments
                bwrap_argv,
                executable=executable,
                pass_fds=[*fds.passed, listener.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=output_fd,
                stderr=output_fd,
                env=dict(spec.env),
                cwd="/",
                start_new_session=True,
                **user_kwargs(spec.host_user),
            )
        finally:
            os.close(output_fd)
        fds.close_passed()
        started(process)
        state: LocalState | None = None
        try:
            state = _init_state(spec, process, info, folder, cgroup_paths, output, timeout)
            # Recorded while the init waits (--block-fd): from its first step on, the
            # sandbox can be found and killed, even if this process dies before its agent
            # is up.
            local_state.write_state(folder, state)
            try:
                cgroups.attach(cgroup_paths, state["pid"])
            except ProcessLookupError as e:
                raise SpawnerError(EXITED + spec.why(folder, output)) from e
            os.write(block, b"1")
        except BaseException:
            if state is not None:
                processes.kill_now(state["pid"], state["start_time"])
            processes.terminate(process)
            raise
        fds.kept.remove(output)  # the caller reads it until the agent runs
        return Launch(process, state, argv, output, spec)
    finally:
        fds.close()


def _init_state(
    spec: SandboxSpec,
    process: subprocess.Popen[bytes],
    info: int,
    folder: Path,
    cgroup_paths: list[Path],
    output: int,
    timeout: float,
) -> LocalState:
    """The state of the sandbox's init, whose pid bwrap reports on ``--info-fd``."""
    try:
        pid = read_child_pid(info, process, timeout)
    except SpawnerError as e:
        msg = f"{e}{spec.why(folder, output)}"
        raise SpawnerError(msg) from e
    start_time = processes.start_time_of(pid)
    if start_time is None:
        raise SpawnerError(EXITED + spec.why(folder, output))
    return {
        "pid": pid,
        "start_time": start_time,
        "uid": processes.process_uid(pid),
        "cgroups": [str(p) for p in cgroup_paths],
    }


async def wait_for_agent(launch: Launch, folder: Path, within: float) -> tuple[int, int]:
    """Wait (at most ``within`` seconds) until the sandbox's init runs the agent; its (pid,
    start time). Fails with bwrap's words."""
    deadline = time.monotonic() + within
    wrapper = nul_join(launch.command)
    while (agent := processes.exec_child(launch.pid, wrapper)) is None:
        if launch.process.poll() is not None or processes.start_time_of(launch.pid) is None:
            raise SpawnerError(EXITED + launch.spec.why(folder, launch.output))
        if time.monotonic() > deadline:
            msg = f"The sandbox did not start its command within {within} s."
            raise SpawnerError(msg + launch.spec.why(folder, launch.output))
        await asyncio.sleep(0.005)
    return agent
