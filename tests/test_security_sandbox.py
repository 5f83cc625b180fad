"""What code in a local sandbox can reach: the agent token, host files, the host's /etc, memory.

The attacks run from inside real sandboxes, as a user would (a terminal of the platform).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from extensions.sandboxes.spawners import bwrap
from extensions.sandboxes.spawners.base import SandboxHandle, SpawnerError
from extensions.sandboxes.spawners.local import LocalSpawner
from extensions.sandboxes.spawners.sizes import parse_bytes
from platform_server.app import PlatformApp
from platform_server.db.embedded import EmbeddedPostgres
from tests.client import Client
from tests.test_local_spawner import pid_namespace, pid_namespace_members
from tests.test_terminals import (
    close_terminals,  # noqa: F401  (fixture: closes the terminals opened here)
    open_terminal,
    workspace_with_token,
)
from tests.waiting import until

MARK = b"INJECTED-BY-USER-CODE\n"
REPO = Path(__file__).resolve().parents[1]

# Run inside the sandbox by the user: for every other process, whether its environment or
# command line holds the agent token (given only as its SHA-256, so that this process does not
# hold it), what pidfd_getfd(2) gets of its descriptors 0-10 (written to if a file or pipe), and
# whether PTRACE_ATTACH works.
PROBE = r"""
import ctypes, errno, hashlib, json, os, re, select, stat, sys

TOKEN_SHA = sys.argv[1]
MARK = b"INJECTED-BY-USER-CODE\n"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PIDFD_OPEN, PIDFD_GETFD, PTRACE_ATTACH, PTRACE_DETACH, WALL = 434, 438, 16, 17, 0x40000000


def error():
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def has_token(data):
    for run in re.findall(rb"[0-9a-f]{64,}", data):
        for i in range(len(run) - 63):
            if hashlib.sha256(run[i : i + 64]).hexdigest() == TOKEN_SHA:
                return True
    return False


def grab(pidfd, n):
    fd = libc.syscall(PIDFD_GETFD, pidfd, n, 0)
    if fd < 0:
        return error()
    info = os.fstat(fd)
    got = {"dev": info.st_dev, "ino": info.st_ino, "link": os.readlink(f"/proc/self/fd/{fd}")}
    if stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode):
        if select.select([], [fd], [], 0)[1]:
            try:
                os.write(fd, MARK)
                got["write"] = "written"
            except OSError as e:
                got["write"] = errno.errorcode[e.errno]
    os.close(fd)
    return got


found = {}
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    if pid == os.getpid():
        continue
    seen = {}
    try:
        seen["cmd"] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        continue  # gone
    for name in ("environ", "cmdline"):
        try:
            seen[name] = has_token(open(f"/proc/{pid}/{name}", "rb").read())
        except OSError as e:
            seen[name] = errno.errorcode[e.errno]
    pidfd = libc.syscall(PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        seen["fds"] = error()
    else:
        seen["fds"] = {n: grab(pidfd, n) for n in range(11)}
        os.close(pidfd)
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
        os.waitpid(pid, WALL)
        libc.ptrace(PTRACE_DETACH, pid, None, None)
        seen["ptrace"] = "attached"
    else:
        seen["ptrace"] = error()
    found[pid] = seen
print("RESULT:" + json.dumps(found))
"""


def is_agent(cmd: str) -> bool:
    """Whether a command line is the agent's (bwrap's init shows the agent's command too)."""
    return not cmd.startswith("bwrap ") and "-m kernel_image " in cmd


def spawner_of(app: PlatformApp) -> LocalSpawner:
    spawner = app.web_app.settings["sandboxes"].spawner
    assert isinstance(spawner, LocalSpawner)
    return spawner


async def only_sandbox(app: PlatformApp) -> tuple[SandboxHandle, str]:
    """The one running sandbox, and its agent's token."""
    (handle,) = await spawner_of(app).find_running()
    token = app.web_app.settings["sandboxes"].agent_token(uuid.UUID(handle.sandbox_id))
    return handle, str(token)


async def probe_every_process(
    make_user: Any, base_url: str, app: PlatformApp
) -> tuple[dict[str, Any], SandboxHandle, str, Path]:
    """Start a sandbox with a terminal and a kernel, run ``PROBE`` in the terminal; its
    findings, the sandbox, its token and its log on the host."""
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    saved = await api.request(
        "PUT",
        f"/w/{ws}/api/contents/probe.py",
        {"type": "file", "format": "text", "content": PROBE},
    )
    assert saved.status == 201, saved.body
    _, terminal = await open_terminal(base_url, ws, token)
    assert (await api.post(f"/w/{ws}/api/kernels", {"name": "python3"})).status == 201
    handle, agent_token = await only_sandbox(app)
    log = spawner_of(app).sandbox_dir(handle.sandbox_id) / "sandbox.log"
    sha = hashlib.sha256(agent_token.encode()).hexdigest()
    shown = await terminal.run(f"python probe.py {sha}", "PROBED")
    match = re.search(r"RESULT:(\{.*\})\r?\n", shown)
    assert match, shown
    found: dict[str, Any] = json.loads(match[1])
    return found, handle, agent_token, log


# --- the agent token ---------------------------------------------------------------------------


async def test_user_code_finds_the_agent_token_in_no_process_environment(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    found, handle, token, _ = await probe_every_process(make_user, base_url, jp_serverapp)
    commands = [seen["cmd"] for seen in found.values()]
    assert found["1"]["cmd"].startswith("bwrap ")
    assert len([cmd for cmd in commands if is_agent(cmd)]) == 1, commands
    assert any("ipykernel" in cmd for cmd in commands), commands
    for pid, seen in found.items():
        # Readable (bwrap's init, the shell, the kernel) and without it, or unreadable (the
        # agent, non-dumpable).
        assert seen["environ"] in {False, "EACCES"}, (pid, seen)
        assert seen["cmdline"] is False, (pid, seen)
    # Seen from the host, no process of the sandbox holds it in its environment at all.
    members = pid_namespace_members(pid_namespace(handle.state["pid"]))
    assert len(members) >= 4
    for pid in members:
        for name in ("environ", "cmdline"):
            with open(f"/proc/{pid}/{name}", "rb") as f:  # noqa: ASYNC230, PTH123
                assert token.encode() not in f.read(), (pid, name)


# --- host file descriptors ---------------------------------------------------------------------


async def test_user_code_cannot_take_the_host_log_from_any_process(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    found, _, _, log = await probe_every_process(make_user, base_url, jp_serverapp)
    host_log = log.stat()
    taken = {
        (pid, n): got
        for pid, seen in found.items()
        if isinstance(seen["fds"], dict)
        for n, got in seen["fds"].items()
        if isinstance(got, dict)
    }
    assert taken  # the shell's and the kernel's, at least: the probe works
    for where, got in taken.items():
        assert (got["dev"], got["ino"]) != (host_log.st_dev, host_log.st_ino), where
    # bwrap's init (ptrace-able, the user's uid) holds only /dev/null and pipes without reader.
    init_fds = found["1"]["fds"]
    assert {got["link"].split("[")[0] for got in init_fds.values() if isinstance(got, dict)} <= {
        "/dev/null",
        "pipe:",
        "anon_inode:",
    }, init_fds
    # The agent cannot be traced, nor its descriptors taken.
    [agent] = [seen for seen in found.values() if is_agent(seen["cmd"])]
    assert agent["ptrace"] == "EPERM"
    assert set(agent["fds"].values()) == {"EPERM"}
    # The operator's log is untouched by all that, and has the agent's own lines.
    text = log.read_bytes()
    assert MARK not in text
    assert b"listening on fd:" in text
    assert log.stat().st_mode & 0o777 == 0o600


def open_fds(pid: int) -> dict[str, str]:
    """A process's descriptors and what they are (those closed while listed left out)."""
    fds = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds[fd.name] = str(fd.readlink())
        except FileNotFoundError:
            continue
    return fds


async def test_agent_log_stops_at_its_size_limit_and_its_stdio_is_dev_null(
    tmp_path: Path,
) -> None:
    """User code cannot fill the host's disk through the agent's log, nor inherit it."""
    log = tmp_path / "agent.log"
    log.write_bytes(b"x" * 1000)
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    token_read, token_write = os.pipe()
    os.write(token_write, b"a-token-only-the-agent-reads-0123456789")
    os.close(token_write)
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TOKEN"}
    env["PYTHONPATH"] = str(REPO)
    agent_socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(  # noqa: ASYNC220  (an agent to test; polled, never awaited)
        [sys.executable, "-m", "kernel_image", "--socket", str(agent_socket), "--root",
         str(tmp_path), "--token-fd", str(token_read), "--log-fd", str(log_fd),
         "--log-max-bytes", "1000"],
        pass_fds=[token_read, log_fd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    token_pipe = f"pipe:[{os.fstat(token_read).st_ino}]"
    os.close(token_read)
    os.close(log_fd)
    try:
        # Its first line ("listening on", once it handles SIGTERM) finds the log full.
        def listening() -> bool:
            assert agent.poll() is None
            return log.stat().st_size != 1000

        await until(listening, "the agent writes its first line", interval=0.02)
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(agent_socket))
        fds = open_fds(agent.pid)
        assert [fds[n] for n in "012"] == ["/dev/null"] * 3
        assert token_pipe not in fds.values()  # read, then closed
        flags = Path(f"/proc/{agent.pid}/fdinfo/{log_fd}").read_text().split()[3]  # noqa: ASYNC240
        assert int(flags, 8) & os.O_CLOEXEC  # kernels and terminals do not inherit it
    finally:
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert (out, err) == (b"", b"")
    # It logged (listening, stopping), but the log was full: one notice, then nothing.
    notice = b"[agent] log size limit reached: further lines are dropped\n"
    assert log.read_bytes() == b"x" * 1000 + notice


# --- memory and /workspace ---------------------------------------------------------------------


def test_a_workspace_bigger_than_memory_is_refused_before_it_can_oom_kill_the_sandbox(
    tmp_path: Path,
) -> None:
    defaults = LocalSpawner(data_dir=str(tmp_path))
    defaults.check_sizes()
    assert parse_bytes(defaults.disk_limit) < parse_bytes(defaults.memory_limit)
    for sizes in [
        {"memory_limit": "512M", "disk_limit": "1G"},
        {"memory_limit": "1G", "disk_limit": "512M", "tmp_limit": "200M"},
        {"memory_limit": "1G", "disk_limit": "0"},
    ]:
        spawner = LocalSpawner(data_dir=str(tmp_path), **sizes)
        with pytest.raises(SpawnerError, match=r"disk_limit .* must be at most memory_limit"):
            spawner.check_sizes()
    LocalSpawner(data_dir=str(tmp_path), memory_limit="0", disk_limit="0").check_sizes()


async def test_filling_the_workspace_fails_with_enospc_and_the_sandbox_lives_on(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    disk = parse_bytes(spawner_of(jp_serverapp).disk_limit)
    shown = await terminal.run(
        f"head -c {disk + (1 << 20)} /dev/zero > /workspace/big; echo status=$?; rm big", "FILLED"
    )
    assert "No space left on device" in shown
    assert "status=1" in shown
    # The terminal's shell, the agent and the sandbox are still there.
    assert "alive-42" in await terminal.run("echo alive-$((6*7))", "ALIVE")
    api = Client(base_url, token=token)
    assert (await api.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "running"
    _, another = await open_terminal(base_url, ws, token)
    assert "again-42" in await another.run("echo again-$((6*7))", "AGAIN")


# --- /etc and the root filesystem --------------------------------------------------------------


def test_etc_layout_binds_only_allowed_entries(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (tmp_path / "usr" / "share" / "zoneinfo").mkdir(parents=True)
    (tmp_path / "usr" / "share" / "zoneinfo" / "UTC").touch()
    (etc / "ssl" / "certs").mkdir(parents=True)
    (etc / "python3.11").mkdir()
    for name in ["hostname", "machine-id", "shadow", "pip.conf", "resolv.conf", "ld.so.cache"]:
        (etc / name).touch()
    (etc / "localtime").symlink_to(tmp_path / "usr" / "share" / "zoneinfo" / "UTC")
    (etc / "dangling").symlink_to("nowhere")
    layout = bwrap.system_layout(tmp_path)
    assert layout.binds == ("/usr", "/etc/ld.so.cache", "/etc/python3.11", "/etc/ssl")
    assert layout.symlinks == ((str(tmp_path / "usr/share/zoneinfo/UTC"), "/etc/localtime"),)
    with_network = bwrap.system_layout(tmp_path, network=True)
    assert "/etc/resolv.conf" in with_network.binds

    options = bwrap.BwrapOptions(system=layout, info_fd=5, block_fd=6)
    args = bwrap.build_args(options)
    joined = " ".join(args)
    assert "--ro-bind /etc /etc" not in joined
    assert joined.index("--perms 0755 --dir /etc") < joined.index("--ro-bind /etc/ssl")
    # Last of the mounts: the root tmpfs, where /etc, /opt and /var are, becomes read-only.
    assert joined.index("--tmpfs /workspace") < joined.index("--remount-ro /")


ETC_SEEN = {
    *bwrap.ETC_ALLOWED,
    "passwd",
    "group",
    "hosts",
}


async def test_sandbox_etc_holds_only_what_programs_need(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    listed = await terminal.run("echo E''TC: $(ls -A /etc) :E''TC", "LISTED")
    match = re.search(r"ETC: (.*) :ETC\r?\n", listed)
    assert match, listed
    entries = match[1].split()
    assert "passwd" in entries
    assert "ssl" in entries
    assert [e for e in entries if not any(re.fullmatch(_glob(p), e) for p in ETC_SEEN)] == []
    for i, path in enumerate(["/etc/hostname", "/etc/machine-id", "/etc/shadow", "/etc/pip.conf"]):
        shown = await terminal.run(f"cat {path}", f"CAT{i}")
        assert "No such file or directory" in shown, shown
    assert "127.0.1.1\tsandbox" in await terminal.run("cat /etc/hosts", "HOSTS")
    # Programs still work: bash, coreutils through /etc/alternatives, Python with TLS
    # certificates, numpy and matplotlib, pip, time zone data.
    works = (
        'python -c \'import ssl, numpy, matplotlib; matplotlib.use("Agg"); '
        'import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.savefig("/tmp/p.png"); '
        'n = ssl.create_default_context().cert_store_stats()["x509_ca"]; print("certs", n > 0)\''
        " && pip --version && bash -lc 'echo login-$((1+1))' && awk 'BEGIN{print \"awk-ok\"}'"
        " && date +zone-%Z && getent passwd user"
    )
    shown = await terminal.run(works, "WORKS")
    for expected in ["certs True", "pip ", "login-2", "awk-ok", "zone-", "user:x:1000:1000"]:
        assert expected in shown, (expected, shown)
    # Nothing can be written outside the size-limited tmpfs folders.
    shown = await terminal.run("touch /etc/x /opt/x /var/x /x", "TOUCHED")
    assert shown.count("Read-only file system") == 4, shown


def _glob(pattern: str) -> str:
    return re.escape(pattern).replace(r"\*", ".*")


# --- modes of the platform's files -------------------------------------------------------------


async def test_platform_files_are_private_to_the_platform(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    await open_terminal(base_url, ws, token)
    handle, _ = await only_sandbox(jp_serverapp)
    spawner = spawner_of(jp_serverapp)
    folder = spawner.sandbox_dir(handle.sandbox_id)
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in [
            Path(jp_serverapp.data_dir),
            spawner.sandboxes_dir,
            folder,
            folder / "state.json",
            folder / "sandbox.log",
            folder / "agent.sock",
        ]
    }
    assert modes == {
        Path(jp_serverapp.data_dir).name: 0o700,
        spawner.sandboxes_dir.name: 0o700,
        folder.name: 0o700,
        "state.json": 0o600,
        "sandbox.log": 0o600,
        "agent.sock": 0o600,
    }


@pytest.mark.slow
def test_embedded_postgres_leaves_the_data_folder_closed_to_other_users(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database = EmbeddedPostgres(data_dir)
    database.start()
    try:
        mode = stat.S_IMODE(data_dir.stat().st_mode)
        if os.geteuid() == 0:
            # PostgreSQL runs as pgserver's own user, whose group alone may enter.
            import grp

            assert (mode, grp.getgrgid(data_dir.stat().st_gid).gr_name) == (0o710, "pgserver")
        else:
            assert mode == 0o700
    finally:
        database.stop()
