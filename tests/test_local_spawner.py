"""LocalSpawner with real bubblewrap sandboxes: isolation, limits, lifecycle, restart."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from extensions.sandboxes import python_env
from extensions.sandboxes.spawners import bwrap, cgroups, processes
from extensions.sandboxes.spawners.base import SandboxHandle, SpawnerError
from extensions.sandboxes.spawners.fds import read_child_pid
from extensions.sandboxes.spawners.local import LocalSpawner
from extensions.sandboxes.spawners.sizes import parse_bytes
from tests.missing import skip_or_fail
from tests.waiting import until

REPO = Path(__file__).resolve().parents[1]
STUB_AGENT = REPO / "tests" / "stub_agent" / "kernel_image"
# This run's own cgroup parent, so that runs at once on one machine do not see each other's.
CGROUP_PARENT = f"platform-sandboxes-test-{os.getpid()}"
SANDBOX_VENV = REPO / ".sandbox-venv"
TOKEN = "t0ken-for-the-local-spawner-tests"
DISK_LIMIT = 16 << 20
ROOT_ENTRIES = ["bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "sbin"]
ROOT_ENTRIES += ["tmp", "usr", "var", "workspace"]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare venv (no packages: fast) of the same kind as the sandbox venv."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    python_env.build(venv, packages=())
    # bwrap runs as the unprivileged sandbox user, which must reach what it binds.
    for folder in [venv, *venv.parents]:
        folder.chmod(folder.stat().st_mode | 0o011)
    return venv


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short data folder (socket paths are limited to 107 bytes)."""
    return tmp_path_factory.mktemp("d")


@pytest.fixture
def config(data_dir: Path, test_venv: Path) -> dict[str, Any]:
    """LocalSpawner traits for a stand-in agent with small limits."""
    return {
        "data_dir": str(data_dir),
        "python_env": str(test_venv),
        "agent_package": str(STUB_AGENT),
        "memory_limit": "256M",
        "disk_limit": str(DISK_LIMIT),
        "tmp_limit": "8M",
        "memory_reserve": "64M",
        "pids_limit": 64,
        "cpu_limit": 0.5,
        "cgroup_parent": CGROUP_PARENT,
    }


@pytest.fixture
def make_spawner(
    config: dict[str, Any], jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., LocalSpawner]]:
    """Make LocalSpawners (config overrides as keywords); every sandbox is stopped after."""
    made: list[LocalSpawner] = []
    cgroups_before = sandbox_cgroups()

    def make(cls: type[LocalSpawner] = LocalSpawner, **overrides: Any) -> LocalSpawner:
        spawner = cls(**{**config, **overrides})
        made.append(spawner)
        return spawner

    yield make

    async def stop_all() -> None:
        for spawner in made:
            for handle in await spawner.find_running():
                await spawner.stop(handle)

    jp_asyncio_loop.run_until_complete(stop_all())
    assert sandbox_cgroups() - cgroups_before == set()


def sandbox_cgroups() -> set[Path]:
    """The cgroups of this run's sandboxes (under its own parent: other runs' are not counted)."""
    root = Path("/sys/fs/cgroup")
    paths = [*root.glob(f"{CGROUP_PARENT}/*"), *root.glob(f"*/{CGROUP_PARENT}/*")]
    return {path for path in paths if path.is_dir()}


@pytest.fixture(scope="module", autouse=True)
def _remove_cgroup_parents() -> Iterator[None]:
    """This run's cgroup parents go when the module is done (they are empty by then)."""
    yield
    root = Path("/sys/fs/cgroup")
    for parent in [*root.glob(CGROUP_PARENT), *root.glob(f"*/{CGROUP_PARENT}")]:
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest.fixture
def spawner(make_spawner: Callable[..., LocalSpawner]) -> LocalSpawner:
    """A LocalSpawner with the test configuration."""
    return make_spawner()


# --- talking to the (stand-in) agent -----------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("sandbox", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _request(path: str, method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    connection = UnixHTTPConnection(path, timeout)
    try:
        data = None if body is None else json.dumps(body)
        connection.request(method, url, data, {"Authorization": f"token {TOKEN}"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())
    finally:
        connection.close()


async def health(handle: SandboxHandle, wait: float = 10) -> Any:
    """The agent's /api/health, waiting for it to start answering."""
    path = handle.endpoint.unix_socket
    assert path is not None

    async def answered() -> Any:
        try:
            return await asyncio.to_thread(_request, path, "GET", "/api/health", timeout=2)
        except OSError:
            return None

    return await until(answered, "the agent answers /api/health", within=wait, interval=0.02)


async def run(handle: SandboxHandle, *argv: str, seconds: float = 30) -> dict[str, Any]:
    """Run a command inside the sandbox (through the stand-in agent)."""
    await health(handle)
    assert handle.endpoint.unix_socket is not None
    result: dict[str, Any] = await asyncio.to_thread(
        _request,
        handle.endpoint.unix_socket,
        "POST",
        "/api/exec",
        {"argv": list(argv), "timeout": seconds},
        seconds + 10,
    )
    return result


async def python(handle: SandboxHandle, code: str, seconds: float = 30) -> Any:
    """Run Python code inside; it prints one JSON value, returned decoded."""
    result = await run(handle, "python", "-c", textwrap.dedent(code), seconds=seconds)
    assert result["returncode"] == 0, result
    return json.loads(result["stdout"])


async def start(spawner: LocalSpawner, name: str = "sbx") -> SandboxHandle:
    """Start a sandbox; ids are unique as cgroups are shared by every platform on the host."""
    sandbox_id = f"{name}-{uuid.uuid4().hex[:12]}"
    return await spawner.start(sandbox_id, TOKEN, lambda percent, message: None)


def list_dir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def leftovers(handle: SandboxHandle, data_dir: Path) -> list[Path]:
    """What of a stopped sandbox is still there: its folder, its cgroups."""
    paths = [data_dir / "sandboxes" / handle.sandbox_id, *map(Path, handle.state["cgroups"])]
    return [p for p in paths if p.exists()]


# --- the command line (pure) -------------------------------------------------------------------


def options(**overrides: Any) -> bwrap.BwrapOptions:
    values: dict[str, Any] = {
        "system": bwrap.SystemLayout(("/usr", "/etc"), (("usr/bin", "/bin"),)),
        "info_fd": 5,
        "block_fd": 6,
        "workspace_size": 1 << 30,
        "tmp_size": 1 << 20,
        "etc_files": (bwrap.DataFile(7, "/etc/passwd"), bwrap.DataFile(8, "/etc/shadow", 0)),
        "ro_binds": (bwrap.Bind("/h/env", "/opt/env"), bwrap.Bind("/h/a", "/opt/agent/x")),
    }
    return bwrap.BwrapOptions(**{**values, **overrides})


def test_command_line_isolates_and_orders_mounts() -> None:
    args = bwrap.build_args(options())
    joined = " ".join(args)
    for flag in [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--unshare-net",
        "--disable-userns",
        "--new-session",
        "--uid 1000 --gid 1000",
        "--cap-drop ALL",
        "--ro-bind /usr /usr",
        "--ro-bind /etc /etc",
        "--symlink usr/bin /bin",
        "--perms 0644 --ro-bind-data 7 /etc/passwd",
        "--perms 0000 --ro-bind-data 8 /etc/shadow",
        "--proc /proc",
        "--dev /dev",
        "--size 1048576 --tmpfs /tmp",
        "--ro-bind /h/env /opt/env",
        "--ro-bind /h/a /opt/agent/x",
        f"--size {1 << 30} --perms 0700 --tmpfs /workspace",
        "--chdir /workspace",
        "--info-fd 5 --block-fd 6",
    ]:
        assert flag in joined
    assert "--die-with-parent" not in args
    assert "--share-net" not in args
    # A later mount hides an earlier one: /etc before its overlays, /tmp before binds in it.
    assert joined.index("/etc /etc") < joined.index("/etc/shadow")
    assert joined.index("--tmpfs /tmp") < joined.index("/opt/env")
    assert joined.index("--tmpfs /tmp") < joined.index("--tmpfs /workspace")


def test_command_line_network_only_when_allowed() -> None:
    assert "--unshare-net" not in bwrap.build_args(options(allow_network=True))
    assert "--size" not in bwrap.build_args(options(workspace_size=0, tmp_size=0))


def test_system_layout_mirrors_merged_usr(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "etc" / "shadow").touch()
    layout = bwrap.system_layout(tmp_path)
    assert layout.binds == ("/usr",)
    assert layout.symlinks == (("usr/bin", "/bin"),)


def test_bwraps_report_is_read_on_a_descriptor_past_1024(tmp_path: Path) -> None:
    """A platform holding a few hundred sandboxes' sockets gets descriptors past select()'s
    limit; the sandbox after that must still start (it failed with "filedescriptor out of
    range in select()" at about 250 sandboxes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2048)), hard))
    read_end, write_end = os.pipe()
    high = 1500
    try:
        os.dup2(read_end, high)
        os.write(write_end, json.dumps({"child-pid": 4242}).encode())
        process = subprocess.Popen(["true"])
        assert read_child_pid(high, process, timeout=5) == 4242
        process.wait()
    finally:
        for fd in (read_end, write_end, high):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_parse_bytes() -> None:
    assert parse_bytes("512M") == 512 << 20
    assert parse_bytes("1G") == parse_bytes("1Gi") == 1 << 30
    assert parse_bytes("1024") == 1024
    assert parse_bytes("0") == 0
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_the_former_start_timeout_still_sets_the_launch_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert LocalSpawner().launch_timeout == 10.0
    spawner = LocalSpawner(config=Config({"LocalSpawner": {"start_timeout": 3.0}}))
    assert spawner.launch_timeout == 3.0
    assert "LocalSpawner.start_timeout is deprecated" in caplog.text


def test_bad_sizes_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(TraitError, match="not a size"):
        LocalSpawner(**{**config, "memory_limit": "a lot"})


def test_cgroup_mounts_are_parsed() -> None:
    mountinfo = (
        "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory\n"
        "36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "37 25 0:32 / /proc rw - proc proc rw\n"
    )
    mounts = cgroups.find_mounts(mountinfo)
    assert [(m.version, str(m.path), set(m.controllers)) for m in mounts] == [
        (1, "/sys/fs/cgroup/memory", {"memory"}),
        (1, "/sys/fs/cgroup/cpu,cpuacct", {"cpu"}),
    ]


# --- check -------------------------------------------------------------------------------------


async def test_check_makes_a_trivial_sandbox(spawner: LocalSpawner) -> None:
    await spawner.check()
    assert spawner._bwrap in bwrap.find_bwrap_candidates()


async def test_check_refuses_when_no_sandbox_can_be_made(
    make_spawner: Callable[..., LocalSpawner],
) -> None:
    spawner = make_spawner(bwrap_path="/bin/false")
    with pytest.raises(SpawnerError, match="unprivileged_userns_clone") as raised:
        await spawner.check()
    assert "never runs outside a sandbox" in str(raised.value)


# --- a sandbox ---------------------------------------------------------------------------------


async def test_agent_answers_health_over_its_unix_socket(
    spawner: LocalSpawner, data_dir: Path
) -> None:
    handle = await start(spawner)
    folder = data_dir / "sandboxes" / handle.sandbox_id
    assert handle.endpoint.unix_socket == str(folder / "agent.sock")
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert (await health(handle))["status"] == "ok"
    assert json.loads((folder / "state.json").read_text()) == handle.state
    assert await spawner.poll(handle)
    assert children(handle.state["pid"]) == [handle.state["agent_pid"]]


async def test_user_is_unprivileged_inside_and_outside(spawner: LocalSpawner) -> None:
    handle = await start(spawner)
    inside = await python(
        handle,
        """
        import json, os, pwd
        print(json.dumps({
            "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "groups": os.getgroups(), "name": pwd.getpwuid(os.getuid()).pw_name,
            "caps": [l.split()[1] for l in open("/proc/self/status") if l.startswith("Cap")],
            "home": os.environ["HOME"], "cwd": os.getcwd(),
        }))
        """,
    )
    assert inside["uid"] == inside["euid"] == inside["gid"] == 1000
    assert inside["groups"] in ([], [1000])  # none of the host's supplementary groups
    assert inside["name"] == "user"
    assert set(inside["caps"]) == {"0000000000000000"}
    assert inside["home"] == inside["cwd"] == "/workspace"
    # Seen from the host, every process of the sandbox runs as an unprivileged uid.
    expected = pwd.getpwnam(spawner.sandbox_user).pw_uid if os.geteuid() == 0 else os.getuid()
    assert expected != 0
    assert handle.state["uid"] == expected
    members = pid_namespace_members(pid_namespace(handle.state["pid"]))
    assert len(members) >= 2
    assert {host_uids(pid) for pid in members} == {(expected,) * 4}


def children(pid: int) -> list[int]:
    """Host pids of a process's children."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def host_uids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uids of a host process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(x) for x in line.split()[1:])
    raise AssertionError(pid)


async def test_secrets_in_etc_are_unreadable(spawner: LocalSpawner) -> None:
    handle = await start(spawner)
    result = await python(
        handle,
        """
        import json
        out = {}
        for path in ["/etc/shadow", "/etc/gshadow", "/etc/hostname", "/etc/passwd"]:
            try:
                open(path).read()
                out[path] = "read"
            except OSError as e:
                out[path] = e.errno
        print(json.dumps(out))
        """,
    )
    # Not there at all: only allowed entries of the host's /etc are bound.
    assert result["/etc/shadow"] == errno.ENOENT
    assert result["/etc/gshadow"] == errno.ENOENT
    assert result["/etc/hostname"] == errno.ENOENT
    assert result["/etc/passwd"] == "read"


async def test_host_paths_are_not_visible(spawner: LocalSpawner, data_dir: Path) -> None:
    # The embedded PostgreSQL's socket lives in the data folder.
    pg_dir = data_dir / "pgdata"
    pg_dir.mkdir()
    pg_socket = pg_dir / ".s.PGSQL.5432"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(pg_socket))
        server.listen()
        handle = await start(spawner)
        probe = [
            "/root",
            "/home",
            "/work",
            "/srv",
            "/var/lib",
            "/run",
            str(REPO),
            str(REPO / "setup.cfg"),
            str(STUB_AGENT),
            str(data_dir),
            str(pg_socket),
            str(Path(sys.prefix)),
        ]
        result = await python(
            handle,
            f"""
            import json, os, socket
            seen = {{p: os.path.exists(p) for p in {probe!r}}}
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({str(pg_socket)!r})
                seen["pg"] = True
            except OSError as e:
                seen["pg"] = e.errno
            seen["/"] = sorted(os.listdir("/"))
            seen["/opt/agent"] = sorted(os.listdir("/opt/agent/kernel_image"))
            print(json.dumps(seen))
            """,
        )
    assert result.pop("pg") == errno.ENOENT
    assert set(result.pop("/")) <= set(ROOT_ENTRIES)
    assert "__main__.py" in result.pop("/opt/agent")
    assert result == dict.fromkeys(probe, False)


async def test_workspace_is_writable_and_size_limited(spawner: LocalSpawner) -> None:
    handle = await start(spawner)
    result = await python(
        handle,
        f"""
        import json, os, site
        out = {{"mode": oct(os.stat("/workspace").st_mode & 0o777)}}
        with open("/workspace/small", "wb") as f:
            f.write(b"x" * 1024)
        out["small"] = os.path.getsize("/workspace/small")
        for folder in ["/workspace", "/tmp", "/usr", "/etc", "/opt/agent/kernel_image"]:
            try:
                with open(folder + "/big", "wb") as f:
                    for _ in range({DISK_LIMIT >> 20} + 2):
                        f.write(b"x" * (1 << 20))
                        f.flush()
                out[folder] = "no limit"
            except OSError as e:
                out[folder] = e.errno
        out["user_site"] = site.getusersitepackages()
        print(json.dumps(out))
        """,
    )
    assert result["mode"] == "0o700"
    assert result["small"] == 1024
    assert result["/workspace"] == errno.ENOSPC
    assert result["/tmp"] == errno.ENOSPC  # noqa: S108 - the sandbox's own /tmp
    assert result["/usr"] in {errno.EROFS, errno.EACCES}
    assert result["/etc"] in {errno.EROFS, errno.EACCES}
    assert result["/opt/agent/kernel_image"] in {errno.EROFS, errno.EACCES}
    assert result["user_site"].startswith("/workspace/")


NETWORK_PROBE = """
import json, socket
out = {{"interfaces": [name for _, name in socket.if_nameindex()]}}
for host, port in [("127.0.0.1", {port}), ("169.254.169.254", 80), ("1.1.1.1", 53)]:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        out[host] = "connected"
    except OSError as e:
        out[host] = e.errno
    finally:
        s.close()
print(json.dumps(out))
"""


async def test_no_network(spawner: LocalSpawner) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        handle = await start(spawner)
        result = await python(handle, NETWORK_PROBE.format(port=server.getsockname()[1]))
    assert result["interfaces"] == ["lo"]
    assert result["127.0.0.1"] == errno.ECONNREFUSED  # its own, empty loopback
    assert result["169.254.169.254"] == errno.ENETUNREACH
    assert result["1.1.1.1"] == errno.ENETUNREACH


async def test_network_when_allowed(make_spawner: Callable[..., LocalSpawner]) -> None:
    spawner = make_spawner(allow_network=True)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        handle = await start(spawner)
        result = await python(handle, NETWORK_PROBE.format(port=server.getsockname()[1]))
    assert result["127.0.0.1"] == "connected"


async def test_sandboxes_cannot_see_each_other(spawner: LocalSpawner) -> None:
    first = await start(spawner, "first")
    second = await start(spawner, "second")
    await run(first, "sh", "-c", "echo secret > /workspace/mine; echo secret > /tmp/mine")
    await run(first, "sh", "-c", "exec -a marker-of-first sleep 300 >/dev/null 2>&1 &")
    result = await python(
        second,
        """
        import json, os
        procs = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                procs[pid] = open(f"/proc/{pid}/cmdline").read().replace("\\0", " ")
            except OSError:
                pass
        print(json.dumps({
            "files": [os.path.exists(p) for p in ["/workspace/mine", "/tmp/mine"]],
            "procs": procs,
        }))
        """,
    )
    assert result["files"] == [False, False]
    procs = result["procs"]
    # Only its own: bwrap's init (pid 1), the agent, and this probe.
    assert procs["1"].startswith("bwrap --args ")
    assert len(procs) <= 5, procs
    assert not any("marker-of-first" in cmd for cmd in procs.values()), procs
    assert all(int(pid) < 100 for pid in procs)


def pid_namespace(pid: int) -> str | None:
    """The PID namespace of a host process (None if it is gone)."""
    try:
        return str(Path(f"/proc/{pid}/ns/pid").readlink())
    except OSError:
        return None


def pid_namespace_members(ns: str | None) -> list[int]:
    """Host pids of the running processes in a PID namespace. Zombies are left out: a sandbox's
    init that outlives its agent is reparented to the host's init, which reaps it in its time."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid_namespace(pid) == ns and running(pid)]


def running(pid: int) -> bool:
    """Whether a host process exists and has not exited (a zombie has)."""
    fields = processes.proc_stat(pid)
    return fields is not None and fields[0] not in {"Z", "X"}


async def test_stop_kills_everything_and_is_idempotent(
    spawner: LocalSpawner, data_dir: Path
) -> None:
    handle = await start(spawner)
    await run(handle, "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & sleep 300 >/dev/null 2>&1 &")
    ns = pid_namespace(handle.state["pid"])
    assert len(pid_namespace_members(ns)) >= 4  # init, agent, two sleeps
    await spawner.stop(handle)
    assert not await spawner.poll(handle)
    assert pid_namespace_members(ns) == []
    assert leftovers(handle, data_dir) == []
    await spawner.stop(handle)  # again: nothing left, no error
    assert await spawner.find_running() == []


async def test_stop_without_state_uses_the_folders(spawner: LocalSpawner) -> None:
    handle = await start(spawner)
    ns = pid_namespace(handle.state["pid"])
    await spawner.stop(SandboxHandle(handle.sandbox_id, handle.endpoint, {}))
    assert pid_namespace_members(ns) == []
    assert await spawner.find_running() == []


STUBBORN_AGENT = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
print("ready", flush=True)
while True:
    time.sleep(60)
"""


class StubbornSpawner(LocalSpawner):
    """Its sandboxes' command says when it gets SIGTERM, and goes on running."""

    def agent_command(self, fd: int) -> list[str]:
        return [str(Path(self.python_env) / "bin" / "python"), "-c", STUBBORN_AGENT]


def sandbox_log(spawner: LocalSpawner, handle: SandboxHandle) -> Path:
    """The sandbox's log (its command's stdout and stderr); stop removes it."""
    return spawner.sandbox_dir(handle.sandbox_id) / "sandbox.log"


async def test_stop_sends_sigterm_and_kills_after_the_grace_period(
    make_spawner: Callable[..., LocalSpawner], data_dir: Path
) -> None:
    spawner = make_spawner(StubbornSpawner, stop_grace_period=1.5)
    handle = await start(spawner)
    ns = pid_namespace(handle.state["pid"])
    # Read through a descriptor opened before the stop, which removes the file.
    with sandbox_log(spawner, handle).open() as log:
        said: list[str] = []

        def ready() -> bool:
            said.append(log.read())
            return "ready" in "".join(said)

        await until(ready, "the stubborn agent is ready", interval=0.02)
        began = time.monotonic()
        await spawner.stop(handle)
        took = time.monotonic() - began
        assert "SIGTERM ignored" in log.read()
    # The promise: the agent gets its whole stop_grace_period before SIGKILL (a lower bound
    # that holds however slow the machine; how soon after is for benchmarks, not tests).
    assert took >= 1.5
    assert pid_namespace_members(ns) == []
    assert leftovers(handle, data_dir) == []


async def test_stop_does_not_wait_for_an_agent_already_gone(
    make_spawner: Callable[..., LocalSpawner], data_dir: Path
) -> None:
    grace = 30
    spawner = make_spawner(stop_grace_period=grace)
    handle = await start(spawner)
    # A process left behind keeps the sandbox's init running once the agent has gone.
    await run(handle, "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &")
    os.kill(handle.state["agent_pid"], signal.SIGKILL)
    await until(
        lambda: handle.state["agent_pid"] not in children(handle.state["pid"]),
        "the killed agent is gone",
        within=2,
        interval=0.01,
    )
    assert await spawner.poll(handle)
    ns = pid_namespace(handle.state["pid"])
    # Nothing waits for the grace period: the stop ends well inside it.
    await asyncio.wait_for(spawner.stop(handle), grace / 2)
    assert pid_namespace_members(ns) == []
    assert leftovers(handle, data_dir) == []


STARTER = """
import asyncio, json, sys
from extensions.sandboxes.spawners.local import LocalSpawner

async def main():
    spawner = LocalSpawner(**json.loads(sys.argv[1]))
    handle = await spawner.start(sys.argv[3], sys.argv[2], lambda percent, message: None)
    print(json.dumps(handle.state))

asyncio.run(main())
"""


async def test_sandbox_outlives_the_process_that_started_it(
    config: dict[str, Any], make_spawner: Callable[..., LocalSpawner], data_dir: Path
) -> None:
    starter = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STARTER,
        json.dumps(config),
        TOKEN,
        sandbox_id := f"detached-{uuid.uuid4().hex[:12]}",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await starter.communicate()
    assert starter.returncode == 0
    state = json.loads(out)
    # A new platform process finds it again through its folder.
    spawner = make_spawner()
    [handle] = await spawner.find_running()
    assert handle.sandbox_id == sandbox_id
    assert handle.state == state
    assert (await health(handle))["status"] == "ok"
    await spawner.stop(handle)
    assert await spawner.find_running() == []
    assert not await spawner.poll(handle)
    assert leftovers(handle, data_dir) == []


async def test_find_running_removes_dead_sandboxes(spawner: LocalSpawner, data_dir: Path) -> None:
    handle = await start(spawner)
    os.kill(handle.state["pid"], 9)

    async def ended() -> bool:
        return not await spawner.poll(handle)

    await until(ended, "the killed sandbox ends", within=2, interval=0.01)
    assert await spawner.find_running() == []
    assert leftovers(handle, data_dir) == []


class BrokenSpawner(LocalSpawner):
    """Its sandboxes' command does not exist."""

    def agent_command(self, fd: int) -> list[str]:
        return ["/nonexistent/agent"]


async def test_failed_start_cleans_up(
    make_spawner: Callable[..., LocalSpawner], data_dir: Path
) -> None:
    spawner = make_spawner(BrokenSpawner)
    with pytest.raises(SpawnerError, match="cannot run /nonexistent/agent"):
        await start(spawner)
    assert list_dir(data_dir / "sandboxes") == []
    assert await spawner.find_running() == []


@pytest.mark.parametrize("after", [0.002, 0.005, 0.01])
async def test_a_start_given_up_by_its_caller_is_undone(
    spawner: LocalSpawner, data_dir: Path, after: float
) -> None:
    await spawner.check()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(start(spawner), after)
    assert list_dir(data_dir / "sandboxes") == []
    assert await spawner.find_running() == []


class PausingSpawner(LocalSpawner):
    """Sets ``reached`` when a start gets where a subclass pauses it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reached = threading.Event()


class SlowLaunchSpawner(PausingSpawner):
    """The thread that starts bwrap takes half a second more once it has started it."""

    def _launch(self, *args: Any) -> Any:
        launch = super()._launch(*args)
        self.reached.set()
        time.sleep(0.5)
        return launch


class StalledSpawner(PausingSpawner):
    """Its sandboxes start, but it never sees their agent come up."""

    async def _wait_for_agent(self, launch: Any, folder: Path) -> tuple[int, int]:
        self.reached.set()
        await asyncio.sleep(3600)
        raise AssertionError(folder)


def state_of(data_dir: Path, sandbox_id: str) -> dict[str, Any]:
    """A sandbox's state.json."""
    state: dict[str, Any] = json.loads(
        (data_dir / "sandboxes" / sandbox_id / "state.json").read_text()
    )
    return state


@pytest.mark.parametrize("fake", [SlowLaunchSpawner, StalledSpawner])
async def test_a_cancelled_start_is_undone_even_if_cancelled_again(
    make_spawner: Callable[..., LocalSpawner], data_dir: Path, fake: type[PausingSpawner]
) -> None:
    spawner = make_spawner(fake)
    assert isinstance(spawner, PausingSpawner)
    sandbox_id = f"sbx-{uuid.uuid4().hex[:12]}"
    starting = asyncio.create_task(spawner.start(sandbox_id, TOKEN, lambda *_: None))
    assert await asyncio.to_thread(spawner.reached.wait, 20)
    # Recorded before the agent runs: enough to find the sandbox and kill it.
    state = state_of(data_dir, sandbox_id)
    assert set(state) == {"pid", "start_time", "uid", "cgroups"}
    assert processes.alive(state["pid"], state["start_time"])
    ns = pid_namespace(state["pid"])
    # A timeout, then a shutdown: while the thread runs, and while the start is undone.
    for _ in range(3):
        starting.cancel()
        await asyncio.sleep(0.05)  # let the undo get under way before the next cancel
    await asyncio.wait([starting], timeout=30)
    assert starting.cancelled()
    assert pid_namespace_members(ns) == []
    assert list_dir(data_dir / "sandboxes") == []
    assert [p for p in map(Path, state["cgroups"]) if p.exists()] == []
    assert await spawner.find_running() == []


STALLED_STARTER = """
import asyncio, json, sys
from tests.test_local_spawner import StalledSpawner

async def main():
    spawner = StalledSpawner(**json.loads(sys.argv[1]))
    asyncio.ensure_future(spawner.start(sys.argv[3], sys.argv[2], lambda *_: None))
    await asyncio.to_thread(spawner.reached.wait)
    print("waiting for the agent", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_sandbox_whose_start_was_interrupted_is_found_and_stopped(
    config: dict[str, Any], make_spawner: Callable[..., LocalSpawner], data_dir: Path
) -> None:
    sandbox_id = f"detached-{uuid.uuid4().hex[:12]}"
    starter = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STALLED_STARTER,
        json.dumps(config),
        TOKEN,
        sandbox_id,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert starter.stdout is not None
    try:
        line = await asyncio.wait_for(starter.stdout.readline(), 30)
    finally:
        starter.kill()  # the platform process dies while the sandbox is starting
        await starter.wait()
    assert line == b"waiting for the agent\n"
    # Long after any start in progress would have recorded its state.
    folder = data_dir / "sandboxes" / sandbox_id
    an_hour_ago = time.time() - 3600
    os.utime(folder, (an_hour_ago, an_hour_ago))
    spawner = make_spawner()
    await spawner.check()
    [handle] = await spawner.find_running()
    assert handle.sandbox_id == sandbox_id
    assert "agent_pid" not in handle.state
    assert folder.is_dir()
    assert await spawner.poll(handle)
    ns = pid_namespace(handle.state["pid"])
    await spawner.stop(handle)
    assert pid_namespace_members(ns) == []
    assert leftovers(handle, data_dir) == []
    assert await spawner.find_running() == []


async def test_find_running_keeps_a_folder_without_state_whose_socket_is_in_use(
    spawner: LocalSpawner, data_dir: Path
) -> None:
    folder = data_dir / "sandboxes" / f"sbx-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    an_hour_ago = time.time() - 3600
    with socket.socket(socket.AF_UNIX) as held:
        held.bind(str(folder / "agent.sock"))
        held.listen()
        os.utime(folder, (an_hour_ago, an_hour_ago))
        assert await spawner.find_running() == []
        assert folder.is_dir()
    assert await spawner.find_running() == []
    assert not folder.exists()


def test_the_workspace_is_not_on_the_agents_import_path(
    spawner: LocalSpawner, tmp_path: Path
) -> None:
    # -m puts the working folder (the sandbox's /workspace) first on sys.path, unless -P.
    for where, said in [(tmp_path / "agent", "agent"), (tmp_path / "workspace", "user file")]:
        (where / "kernel_image").mkdir(parents=True)
        (where / "kernel_image" / "__main__.py").write_text(f"print({said!r})")
    result = subprocess.run(
        spawner.agent_command(3),
        cwd=tmp_path / "workspace",
        env={"PYTHONPATH": str(tmp_path / "agent")},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == "agent\n"


async def test_missing_python_env_is_a_clear_error(
    make_spawner: Callable[..., LocalSpawner], tmp_path: Path
) -> None:
    spawner = make_spawner(python_env=str(tmp_path / "nothing"))
    with pytest.raises(SpawnerError, match="python_env"):
        await start(spawner)


async def test_socket_path_too_long_is_a_clear_error(
    make_spawner: Callable[..., LocalSpawner], tmp_path: Path
) -> None:
    spawner = make_spawner(run_dir=str(tmp_path / ("x" * 80)))
    with pytest.raises(SpawnerError, match=r"shorter LocalSpawner\.run_dir"):
        await start(spawner, "0" * 23)


def test_long_data_dir_puts_sockets_in_a_short_stable_folder(
    make_spawner: Callable[..., LocalSpawner], tmp_path: Path
) -> None:
    long_dir = str(tmp_path / ("x" * 80))
    first = make_spawner(data_dir=long_dir).sandboxes_dir
    assert first == make_spawner(data_dir=long_dir).sandboxes_dir
    assert len(str(first / ("0" * 36) / "agent.sock")) <= 107
    assert make_spawner(data_dir="/srv/p").sandboxes_dir == Path("/srv/p/sandboxes")


# --- limits ------------------------------------------------------------------------------------


async def enforced(spawner: LocalSpawner, controller: str) -> None:
    """Skip (fail in CI) unless cgroups enforce ``controller`` here."""
    await spawner.check()
    assert spawner._plan is not None
    if controller in spawner._plan.unavailable:
        skip_or_fail(f"cgroups cannot limit {controller}: {spawner._plan.unavailable[controller]}")


def cgroup_limits(handle: SandboxHandle) -> dict[str, str]:
    """The limits in a sandbox's cgroups, by their cgroup v2 names; checks the init is in."""
    files: dict[str, str] = {}
    for path in map(Path, handle.state["cgroups"]):
        assert str(handle.state["pid"]) in (path / "cgroup.procs").read_text().split()
        for name in ["memory.max", "memory.limit_in_bytes", "pids.max", "cpu.max"]:
            if (path / name).exists():
                files[name] = (path / name).read_text().strip()
        if (path / "cpu.cfs_quota_us").exists():
            files["cpu.max"] = (
                f"{(path / 'cpu.cfs_quota_us').read_text().strip()} "
                f"{(path / 'cpu.cfs_period_us').read_text().strip()}"
            )
    return files


async def test_cgroups_carry_the_limits(spawner: LocalSpawner) -> None:
    for controller in ("memory", "pids", "cpu"):
        await enforced(spawner, controller)
    handle = await start(spawner)
    # The agent starts at start_cpu_limit (one core by default)...
    assert cgroup_limits(handle)["cpu.max"] == "100000 100000"
    # ...and is held to cpu_limit once it answers, before any terminal or kernel opens.
    await spawner.hold_to_limits(handle)
    files = cgroup_limits(handle)
    assert files.get("memory.max", files.get("memory.limit_in_bytes")) == str(256 << 20)
    assert files["pids.max"] == "64"
    assert files["cpu.max"] == "50000 100000"


async def test_a_start_cpu_limit_up_to_cpu_limit_is_cpu_limit_from_the_start(
    make_spawner: Callable[..., LocalSpawner],
) -> None:
    spawner = make_spawner(start_cpu_limit=0.25)
    await enforced(spawner, "cpu")
    handle = await start(spawner)
    assert cgroup_limits(handle)["cpu.max"] == "50000 100000"


FORK_BOMB = """
import errno, json, os, time
children, failure = [], None
for _ in range(1000):
    try:
        pid = os.fork()
    except OSError as e:
        failure = e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(children), "failure": failure}))
"""


async def test_fork_bomb_hits_the_pids_limit(spawner: LocalSpawner) -> None:
    await enforced(spawner, "pids")
    handle = await start(spawner)
    result = await python(handle, FORK_BOMB)
    assert result["failure"] == errno.EAGAIN
    assert 10 < result["forked"] < 64
    # The host is unharmed, and the sandbox recovers.
    assert await (await asyncio.create_subprocess_exec("true")).wait() == 0
    assert (await health(handle))["status"] == "ok"


INOTIFY_HOG = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
watcher = libc.inotify_init1(0)
watches = 0
while watches < 5000:
    os.makedirs(f"/tmp/w/{watches}")
    if libc.inotify_add_watch(watcher, f"/tmp/w/{watches}".encode(), 0x100) < 0:
        break
    watches += 1
watches_errno = ctypes.get_errno()
instances = 1
while instances < 5000 and libc.inotify_init1(0) >= 0:
    instances += 1
print(json.dumps({"instances": instances, "instances_errno": ctypes.get_errno(),
                  "watches": watches, "watches_errno": watches_errno}))
"""


async def test_one_sandbox_cannot_take_every_inotify_instance_or_watch(
    make_spawner: Callable[..., LocalSpawner],
) -> None:
    """Linux counts inotify instances and watches per host user, and every sandbox runs as
    the same one: without caps of its own, one sandbox could take them all and no other
    sandbox's agent could start."""
    spawner = make_spawner(inotify_instances=8, inotify_watches=10)
    handle = await start(spawner)
    result = await python(handle, INOTIFY_HOG)
    assert result == {
        "instances": 8,
        "instances_errno": errno.EMFILE,
        "watches": 10,
        "watches_errno": errno.ENOSPC,
    }
    # The caps are the sandbox's own: another sandbox gets its eight.
    other = await python(await start(spawner), INOTIFY_HOG)
    assert other["instances"] == 8


async def test_memory_hog_is_killed_inside_its_limit(spawner: LocalSpawner) -> None:
    await enforced(spawner, "memory")
    handle = await start(spawner)
    result = await run(handle, "python", "-c", "x = b'x' * (1024 << 20); print(len(x))")
    assert result["returncode"] == -9  # the OOM killer, inside the sandbox's cgroup
    assert result["stdout"] == ""
    assert (await health(handle))["status"] == "ok"


@pytest.fixture(scope="session")
def outside_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv of an interpreter outside /usr (this one, e.g. pyenv's), if there is one."""
    base = Path(getattr(sys, "_base_executable", sys.executable))
    if python_env.is_system_path(base):
        pytest.skip(
            "the platform runs on the system's Python (under /usr), which every sandbox sees "
            "already: there is no outside interpreter to bind"
        )
    prefix = Path(sys.base_prefix)
    if any(not p.stat().st_mode & 0o001 for p in [prefix, *prefix.parents]):
        pytest.skip(
            f"this Python's prefix {prefix} is not readable by other users, so no sandbox user "
            "could run it (install Python where others can read it to run this case)"
        )
    venv = tmp_path_factory.mktemp("venv") / "outside"
    python_env.build(venv, packages=(), base_python=base)
    for folder in [venv, *venv.parents]:
        folder.chmod(folder.stat().st_mode | 0o011)
    return venv


async def test_venv_of_an_interpreter_outside_usr_binds_its_prefix(
    make_spawner: Callable[..., LocalSpawner], outside_venv: Path
) -> None:
    spawner = make_spawner(python_env=str(outside_venv))
    handle = await start(spawner)
    result = await python(
        handle,
        """
        import json, os, sys
        print(json.dumps({"base": sys.base_prefix, "home": os.path.exists("/root/.bashrc")}))
        """,
    )
    assert result["base"] == sys.base_prefix
    assert result["home"] is False


# --- the real Python environment and agent -----------------------------------------------------


def real_env() -> Path:
    if not (SANDBOX_VENV / "bin" / "python").exists():
        skip_or_fail(f"{SANDBOX_VENV} is not built (python -m extensions.sandboxes.python_env)")
    return SANDBOX_VENV


async def test_sandbox_python_has_the_scientific_stack(
    make_spawner: Callable[..., LocalSpawner],
) -> None:
    spawner = make_spawner(python_env=str(real_env()), memory_limit="1G")
    handle = await start(spawner)
    result = await python(
        handle,
        """
        import json, os, site, sys
        import numpy, pandas, scipy
        print(json.dumps({
            "version": sys.version_info[:2] >= (3, 11),
            "sum": int(pandas.Series(numpy.arange(4)).sum() + scipy.special.comb(4, 2)),
            "user_site": site.ENABLE_USER_SITE and site.getusersitepackages(),
            "prefix": sys.prefix,
            "visible": sorted(os.listdir(os.path.dirname(sys.prefix))),
        }))
        """,
        seconds=60,
    )
    assert result["version"] is True
    assert result["sum"] == 12
    assert result["user_site"].startswith("/workspace/.local/")
    assert result["prefix"] == str(SANDBOX_VENV)
    # Of the folder holding the venv (the repo), only the venv is there.
    assert result["visible"] == [SANDBOX_VENV.name]


async def test_real_agent_answers_health(make_spawner: Callable[..., LocalSpawner]) -> None:
    spawner = make_spawner(
        python_env=str(real_env()), agent_package=str(REPO / "kernel_image"), memory_limit="1G"
    )
    handle = await start(spawner)
    answer = await health(handle, wait=20)
    assert answer["status"] == "ok"
