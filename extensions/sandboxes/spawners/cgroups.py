"""Sandbox resource limits: cgroups (v2 where delegated, else v1) and rlimits where neither works.

``probe`` finds, once, which of the memory, pids and cpu controllers the platform can use and
where; ``create``/``attach``/``remove`` manage one cgroup per sandbox (in every hierarchy that
holds a wanted controller), named after the sandbox, under ``<hierarchy root>/<parent name>``
so that it is not inside the platform's own cgroup and outlives the platform process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Limits:
    """A sandbox's limits; 0 means none."""

    memory: int  # bytes
    cpu: float  # cores
    pids: int  # tasks (processes and threads)

    def wanted(self) -> tuple[str, ...]:
        """The controllers these limits need."""
        values = {"memory": self.memory, "pids": self.pids, "cpu": self.cpu}
        return tuple(c for c in CONTROLLERS if values[c] > 0)


@dataclass(frozen=True)
class Hierarchy:
    """One cgroup hierarchy used for sandboxes: its version, where they go, what it limits."""

    version: int
    parent: Path
    controllers: frozenset[str]


@dataclass(frozen=True)
class CgroupPlan:
    """How this host enforces each wanted controller; ``unavailable`` maps the rest to why."""

    hierarchies: tuple[Hierarchy, ...]
    unavailable: dict[str, str]


@dataclass(frozen=True)
class Mount:
    """A mounted cgroup filesystem."""

    version: int
    path: Path
    controllers: frozenset[str]  # v1: from the mount options; v2: cgroup.controllers


def find_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup v1 and v2 mounts listed in a ``/proc/self/mountinfo`` text."""
    mounts = []
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, super_fields = fields.split(), tail.split()
        if len(parts) < 5 or len(super_fields) < 3:
            continue
        fstype, options = super_fields[0], frozenset(super_fields[2].split(","))
        path = Path(parts[4].replace("\\040", " "))
        if fstype == "cgroup2":
            mounts.append(Mount(2, path, _read_words(path / "cgroup.controllers")))
        elif fstype == "cgroup":
            mounts.append(Mount(1, path, options & frozenset(CONTROLLERS)))
    return mounts


def probe(parent_name: str, limits: Limits, mountinfo: Path = MOUNTINFO) -> CgroupPlan:
    """Find where each wanted controller can be used, proving it by making a test cgroup."""
    try:
        mounts = find_mounts(mountinfo.read_text())
    except OSError as e:
        mounts = []
        failure = f"cannot read {mountinfo}: {e.strerror}"
    else:
        failure = "no cgroup hierarchy with this controller is mounted"
    unavailable: dict[str, str] = {}
    chosen: dict[Path, tuple[Mount, set[str]]] = {}
    for controller in limits.wanted():
        reasons = []
        # v2 first: it is the only one on modern hosts; v1 where v2 does not have it.
        for mount in sorted(mounts, key=lambda m: -m.version):
            if controller not in mount.controllers:
                continue
            try:
                _prove(mount, parent_name, controller)
            except OSError as e:
                reasons.append(f"{mount.path}: {e.strerror or e}")
                continue
            chosen.setdefault(mount.path, (mount, set()))[1].add(controller)
            break
        else:
            unavailable[controller] = "; ".join(reasons) or failure
    hierarchies = tuple(
        Hierarchy(mount.version, mount.path / parent_name, frozenset(controllers))
        for mount, controllers in chosen.values()
    )
    return CgroupPlan(hierarchies, unavailable)


def _prove(mount: Mount, parent_name: str, controller: str) -> None:
    """Make ``<mount>/<parent>/probe-<pid>``, set a harmless limit, remove it; OSError if not."""
    parent = mount.path / parent_name
    if mount.version == 2:
        # Each level must hand the controller down to its children.
        _enable(mount.path, controller)
        parent.mkdir(exist_ok=True)
        _enable(parent, controller)
    else:
        parent.mkdir(exist_ok=True)
    probe_dir = parent / f"probe-{os.getpid()}"
    probe_dir.mkdir(exist_ok=True)
    try:
        generous = Limits(memory=1 << 40, cpu=64, pids=1 << 20)
        _write_limits(probe_dir, mount.version, frozenset([controller]), generous)
    finally:
        probe_dir.rmdir()


def _enable(cgroup: Path, controller: str) -> None:
    if controller not in _read_words(cgroup / "cgroup.subtree_control"):
        (cgroup / "cgroup.subtree_control").write_text(f"+{controller}")


def create(plan: CgroupPlan, name: str, limits: Limits) -> list[Path]:
    """Make the sandbox's cgroups with its limits; returns their folders."""
    made: list[Path] = []
    try:
        for hierarchy in plan.hierarchies:
            path = hierarchy.parent / name
            try:
                path.mkdir()
            except FileExistsError:
                # Left by a platform that crashed: reused only if empty (rmdir fails if not).
                path.rmdir()
                path.mkdir()
            made.append(path)
            _write_limits(path, hierarchy.version, hierarchy.controllers, limits)
    except OSError:
        remove(made, timeout=0)
        raise
    return made


def _write_limits(path: Path, version: int, controllers: frozenset[str], limits: Limits) -> None:
    if version == 2:
        if "memory" in controllers:
            (path / "memory.max").write_text(str(limits.memory))
            _write_optional(path / "memory.swap.max", "0")
        if "pids" in controllers:
            (path / "pids.max").write_text(str(limits.pids))
    else:
        if "memory" in controllers:
            (path / "memory.limit_in_bytes").write_text(str(limits.memory))
            # Without this the sandbox could use swap beyond its limit (absent if not
            # accounted).
            _write_optional(path / "memory.memsw.limit_in_bytes", str(limits.memory))
        if "pids" in controllers:
            (path / "pids.max").write_text(str(limits.pids))
    if "cpu" in controllers:
        _write_cpu(path, version, limits.cpu)


def _write_cpu(path: Path, version: int, cores: float) -> None:
    quota = max(1000, int(cores * CPU_PERIOD_US))
    if version == 2:
        (path / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
    else:
        (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(quota))


def limit_cpu(plan: CgroupPlan, name: str, cores: float) -> None:
    """Change the CPU limit of sandbox ``name``'s cgroup to ``cores`` (more than 0), where
    the plan limits CPU with cgroups."""
    for hierarchy in plan.hierarchies:
        if "cpu" in hierarchy.controllers:
            _write_cpu(hierarchy.parent / name, hierarchy.version, cores)


def _write_optional(path: Path, value: str) -> None:
    with contextlib.suppress(OSError):
        path.write_text(value)


def attach(paths: list[Path], pid: int) -> None:
    """Move process ``pid`` (and so everything it will start) into the cgroups."""
    for path in paths:
        (path / "cgroup.procs").write_text(str(pid))


def remove(paths: list[Path], timeout: float = 5.0) -> list[Path]:
    """Remove the cgroups, waiting up to ``timeout`` s for their last processes to go.

    Returns those that could not be removed (still busy); a missing one counts as removed.
    """
    deadline = time.monotonic() + timeout
    left = []
    for path in paths:
        while True:
            try:
                path.rmdir()
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                left.append(path)
            break
    return left


def sandbox_cgroups(paths: list[str], parent_name: str, name: str) -> list[Path]:
    """Those of ``paths`` that are sandbox ``name``'s cgroups (``/sys/fs/cgroup/.../<parent
    name>/<name>``), never anything else."""
    return [
        Path(p)
        for p in paths
        if Path(p).name == name
        and Path(p).parent.name == parent_name
        and Path(p).is_relative_to("/sys/fs/cgroup")
    ]


def fallback_rlimits(plan: CgroupPlan, limits: Limits) -> list[tuple[str, int]]:
    """rlimits (name, value) standing in for the controllers cgroups cannot enforce.

    Weaker: RLIMIT_AS limits each process's address space, not their sum; RLIMIT_NPROC counts
    the processes of the sandbox's user in its own user namespace. CPU has no stand-in (the
    sandbox is only niced, see ``rlimit_prefix``).
    """
    result = []
    if "memory" in plan.unavailable:
        result.append(("RLIMIT_AS", limits.memory))
    if "pids" in plan.unavailable:
        result.append(("RLIMIT_NPROC", limits.pids))
    return result


# Runs first inside the sandbox: lowering one's own limits needs no privilege, while the
# platform may lack CAP_SYS_RESOURCE to prlimit() a process of another user. OUTPUT makes a
# descriptor the command's stdout and stderr (bwrap's own go elsewhere).
_RLIMIT_WRAPPER = """\
import os, resource, sys
end = sys.argv.index("--")
for name, value in zip(sys.argv[1:end:2], sys.argv[2:end:2]):
    if name == "OUTPUT":
        os.dup2(int(value), 1)
        os.dup2(int(value), 2)
    elif name == "NICE":
        os.nice(int(value))
    else:
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))
try:
    os.execv(sys.argv[end + 1], sys.argv[end + 1:])
except OSError as e:
    sys.exit(f"cannot run {sys.argv[end + 1]}: {e.strerror}")
"""


def rlimit_prefix(
    python: str, rlimits: list[tuple[str, int]], nice: int = 0, output_fd: int | None = None
) -> list[str]:
    """A command prefix that sets ``rlimits`` (and a nice value, and ``output_fd`` as stdout
    and stderr) then execs the rest.

    Empty when there is nothing to set. ``python`` must exist inside the sandbox.
    """
    output = [("OUTPUT", output_fd)] if output_fd is not None else []
    settings = [*output, *rlimits, *([("NICE", nice)] if nice else [])]
    if not settings:
        return []
    flat = [str(x) for pair in settings for x in pair]
    return [python, "-I", "-S", "-c", _RLIMIT_WRAPPER, *flat, "--"]


def describe_plan(plan: CgroupPlan) -> str:
    """The plan's hierarchies in a few words, for the start-up log."""
    parts = [
        f"v{h.version} {'+'.join(sorted(h.controllers))} in {h.parent}" for h in plan.hierarchies
    ]
    return ", ".join(parts) or "none"


def describe_unenforced(plan: CgroupPlan) -> str:
    """A sentence for the start-up warning; empty when every limit is enforced by cgroups."""
    if not plan.unavailable:
        return ""
    stand_in = {
        "memory": "RLIMIT_AS per process instead",
        "pids": "RLIMIT_NPROC instead",
        "cpu": "only niced to 10",
    }
    parts = [
        f"{controller} ({why}; {stand_in[controller]})"
        for controller, why in sorted(plan.unavailable.items())
    ]
    return (
        "Sandbox limits not enforced by cgroups: "
        + ", ".join(parts)
        + ". Run the platform as root, or give it a delegated cgroup v2 subtree, to enforce them."
    )


def _read_words(path: Path) -> frozenset[str]:
    try:
        return frozenset(path.read_text().split())
    except OSError:
        return frozenset()
