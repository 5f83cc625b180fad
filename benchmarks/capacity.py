"""Capacity: how many sandboxes, each with an open terminal, this machine holds while keystroke
echo p99 stays under 50 ms; against stock jupyter_server with as many terminado terminals.

Sandboxes are opened in steps (a new workspace and terminal each: 10, 25, 50, then every 100);
at every step, keystrokes are typed round-robin over all open terminals, on ours and then on
stock at the same count. The run stops at the first step whose p99 misses the goal, when the
next step would leave the machine less than ``MEMORY_RESERVE_KIB`` available, or at
``BENCH_CAPACITY_MAX`` (default 1000) sandboxes. Every sandbox is stopped at the end, also after
a failure.

At the first step with 100 terminals, 100 of them are also typed in steadily for a while (a
person typing: ``TYPING_HZ`` keystrokes a second each) to measure the CPU that 100 active
terminals cost the platform server, and everything (platform and sandboxes), against stock's
server (which runs its shells' PTYs in its own process) and stock's whole tree.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tornado.websocket import WebSocketClientConnection

from benchmarks.common import (
    Result,
    embedded_postgres,
    p99,
    platform,
    report,
    rss_kib,
    sandbox_pids,
    temp_dir,
    tree,
)
from benchmarks.terminals import (
    PLATFORM_LIMITS,
    Target,
    echo_round_trips,
    in_new_workspace,
    platform_target,
    read_until,
    stdin,
    stock_server,
)

FIRST_STEPS = (10, 25, 50)
STEP = 100
"""After the first steps, terminals are added a hundred at a time."""
GOAL_P99_MS = 50.0
KEYSTROKES = 200
"""Keystrokes per step and server, spread round-robin over the open terminals."""
MEMORY_RESERVE_KIB = 2 << 20
"""Memory (2 GiB) the run leaves available: it stops before a step would take it."""
ACTIVE_TERMINALS = 100
TYPING_HZ = 5.0
"""Keystrokes per second of each active terminal: a person typing."""
ACTIVE_SECONDS = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
INOTIFY_MARGIN = 16
"""inotify instances left for the rest of the machine (the platform, PostgreSQL, ...)."""

Opener = Callable[[], Awaitable[WebSocketClientConnection]]


@dataclass(frozen=True)
class Step:
    """Echo p99 (ms) of ours and stock with ``count`` open terminals."""

    count: int
    ours_p99: float
    stock_p99: float


@dataclass
class ActiveCpu:
    """Cores used while ``ACTIVE_TERMINALS`` terminals were typed in, per server: its main
    process (``server``) and every process it runs (``total``: for ours, the sandboxes too)."""

    server: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """What one capacity run found."""

    steps: list[Step]
    stopped_by: str
    cpu: ActiveCpu
    per_sandbox: float = 0.0
    per_terminal: float = 0.0
    server_per_terminal: dict[str, float] = field(default_factory=dict)
    """KiB each open terminal adds to the server process itself (ours: the platform)."""


def step_counts(maximum: int) -> list[int]:
    """The terminal counts to measure, up to and including ``maximum``."""
    counts = [count for count in FIRST_STEPS if count < maximum]
    counts += list(range(STEP, maximum, STEP))
    return [*counts, maximum]


def inotify_limit() -> int:
    """``fs.inotify.max_user_instances``: every sandbox takes one of those allowed to the user
    starting them (this one), so a machine holds at most that many, less what else holds one."""
    return int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())


def available_kib() -> int:
    """The machine's available memory (MemAvailable), in KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    msg = "no MemAvailable in /proc/meminfo"
    raise RuntimeError(msg)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds these processes have used (0 for one that has exited)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


async def type_steadily(conn: WebSocketClientConnection, until: float) -> None:
    """Type one key every 1/``TYPING_HZ`` s into ``conn``, each read back, until ``until``."""
    loop = asyncio.get_running_loop()
    tick = loop.time()
    i = 0
    while tick < until:
        char = "abcdefghij"[i % 10]
        await conn.write_message(stdin(char))
        await read_until(conn, lambda s, c=char: c in s)
        i += 1
        tick += 1 / TYPING_HZ
        await asyncio.sleep(max(0.0, tick - loop.time()))  # pacing, not synchronisation


async def active_cores(
    terminals: list[WebSocketClientConnection], watched: dict[str, list[int]]
) -> dict[str, float]:
    """Cores each watched set of processes used while ``terminals`` were typed in steadily."""
    before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    start = time.perf_counter()
    until = asyncio.get_running_loop().time() + ACTIVE_SECONDS
    await asyncio.gather(*(type_steadily(conn, until) for conn in terminals))
    elapsed = time.perf_counter() - start
    return {name: (cpu_seconds(pids) - before[name]) / elapsed for name, pids in watched.items()}


async def open_more(terminals: list[WebSocketClientConnection], count: int, opener: Opener) -> None:
    """Open terminals until there are ``count``."""
    while len(terminals) < count:
        terminals.append(await opener())


def in_new_sandbox(user: Target) -> Opener:
    """Opens a terminal in a new workspace of ``user``, so in a sandbox of its own."""

    async def opener() -> WebSocketClientConnection:
        return await (await in_new_workspace(user)).open_at_prompt()

    return opener


def capacity(steps: list[Step], p99_of: Callable[[Step], float]) -> int:
    """The most terminals at which ``p99_of(step)`` met the goal (0 if it never did)."""
    return max((step.count for step in steps if p99_of(step) < GOAL_P99_MS), default=0)


@dataclass(frozen=True)
class Side:
    """One server under test: how to open a terminal in it and which processes are its own."""

    open_terminal: Opener
    server_pid: int
    processes: Callable[[], Awaitable[list[int]]]
    """Every process serving its terminals (ours: the platform and the sandboxes)."""


async def measure_steps(maximum: int, sides: dict[str, Side]) -> Run:
    """Echo p99 of ours and stock at each count, until ours misses the goal, memory would run
    short, or the maximum; the CPU of active terminals at the first step of 100 or more."""
    run = Run(steps=[], stopped_by="the maximum", cpu=ActiveCpu())
    terminals: dict[str, list[WebSocketClientConnection]] = {name: [] for name in sides}
    per_pair = 0.0  # KiB that one more sandbox and one more stock terminal took last step
    for count in step_counts(maximum):
        before, opened = available_kib(), len(terminals["ours"])
        if before - (count - opened) * per_pair < MEMORY_RESERVE_KIB:
            run.stopped_by = "memory"
            break
        for name, side in sides.items():
            await open_more(terminals[name], count, side.open_terminal)
        per_pair = (before - available_kib()) / (count - opened)
        p99s = {
            name: p99(await echo_round_trips(open_now, KEYSTROKES))
            for name, open_now in terminals.items()
        }
        print(f"{count} terminals: echo p99 {p99s['ours']:.1f} ms, stock {p99s['stock']:.1f} ms")
        run.steps.append(Step(count, p99s["ours"], p99s["stock"]))
        if count >= ACTIVE_TERMINALS and not run.cpu.server:
            await measure_active(run.cpu, sides, terminals)
        if p99s["ours"] >= GOAL_P99_MS:
            run.stopped_by = "the goal"
            break
    return run


async def measure_active(
    cpu: ActiveCpu, sides: dict[str, Side], terminals: dict[str, list[WebSocketClientConnection]]
) -> None:
    """The cores ``ACTIVE_TERMINALS`` terminals take while typed in, on each side in turn."""
    for name, side in sides.items():
        watched = {"server": [side.server_pid], "total": await side.processes()}
        cores = await active_cores(terminals[name][:ACTIVE_TERMINALS], watched)
        cpu.server[name], cpu.total[name] = cores["server"], cores["total"]
        print(
            f"{ACTIVE_TERMINALS} active terminals, {name}: {cores['server']:.2f} cores in "
            f"its server, {cores['total']:.2f} in all"
        )


async def measure(tmp: Path, maximum: int) -> Run:
    """The run, with KiB per idle sandbox (ours) and per idle terminal (stock)."""
    data_dir = tmp / "data"
    options = ("--Spawner.warm_pool_size=0", *PLATFORM_LIMITS)
    with embedded_postgres(tmp / "pgdata") as conninfo, stock_server(tmp / "stock") as stock_run:
        stock, stock_process = stock_run
        stock_idle = rss_kib(tree(stock_process.pid))
        stock_server_idle = rss_kib([stock_process.pid])
        async with platform(data_dir, conninfo, *options) as (process, port):
            user = await platform_target(port, "capacity")
            platform_idle = rss_kib([process.pid])

            async def ours_processes() -> list[int]:
                inits = await sandbox_pids(data_dir)
                return [process.pid] + [pid for init in inits for pid in tree(init)]

            async def stock_processes() -> list[int]:
                return tree(stock_process.pid)

            run = await measure_steps(
                maximum,
                {
                    "ours": Side(in_new_sandbox(user), process.pid, ours_processes),
                    "stock": Side(stock.open_at_prompt, stock_process.pid, stock_processes),
                },
            )
            sandboxes = [tree(init) for init in await sandbox_pids(data_dir)]
            run.per_sandbox = sum(map(rss_kib, sandboxes)) / len(sandboxes)
            count = run.steps[-1].count
            run.server_per_terminal = {
                "ours": (rss_kib([process.pid]) - platform_idle) / count,
                "stock": (rss_kib([stock_process.pid]) - stock_server_idle) / count,
            }
        stock_growth = rss_kib(tree(stock_process.pid)) - stock_idle
    run.per_terminal = stock_growth / run.steps[-1].count
    print(f"stopped by {run.stopped_by} at {run.steps[-1].count} terminals")
    return run


def results(run: Run) -> list[Result]:
    """Capacity (ours: sandboxes; stock: terminals), the p99 of both at our capacity (at the
    first step if there is none), the memory of each idle sandbox (stock: terminal), and the
    cores per 100 active terminals."""
    steps = run.steps
    ours = capacity(steps, lambda step: step.ours_p99)
    at_ours = next((step for step in steps if step.count == ours), steps[0])
    found = [
        Result(
            "terminals.capacity.sandboxes",
            "count",
            ours,
            capacity(steps, lambda step: step.stock_p99),
        ),
        Result("terminals.capacity.echo.p99", "ms", at_ours.ours_p99, at_ours.stock_p99),
        Result("terminals.capacity.idle_memory_each", "KiB", run.per_sandbox, run.per_terminal),
        Result(
            "terminals.capacity.server_memory_per_terminal",
            "KiB",
            run.server_per_terminal["ours"],
            run.server_per_terminal["stock"],
        ),
    ]
    if run.cpu.server:
        found += [
            Result(
                "terminals.capacity.server_cores_per_100_active",
                "cores",
                run.cpu.server["ours"],
                run.cpu.server["stock"],
            ),
            Result(
                "terminals.capacity.all_cores_per_100_active",
                "cores",
                run.cpu.total["ours"],
                run.cpu.total["stock"],
            ),
        ]
    return found


async def main_async() -> list[Result]:
    """Measure ours and the baseline in the same run."""
    maximum = int(os.environ.get("BENCH_CAPACITY_MAX", "1000"))
    room = inotify_limit() - INOTIFY_MARGIN
    if maximum > room:
        print(
            f"fs.inotify.max_user_instances is {inotify_limit()}: measuring up to {room} "
            "sandboxes (sysctl -w fs.inotify.max_user_instances=1024 lets more start)"
        )
        maximum = room
    with temp_dir() as tmp:
        return results(await measure(tmp, maximum))


def main() -> None:
    """Run, print the table, update results.json."""
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
