"""Capacity: how many sandboxes, each with an open terminal, this machine holds while keystroke
echo p99 stays under 50 ms; against stock jupyter_server with as many terminado terminals.

Sandboxes are opened in steps (a new workspace and terminal each); at every step, keystrokes
are typed round-robin over all open terminals, on ours and then on stock at the same count. The
run stops at the first step whose p99 misses the goal, or at ``BENCH_CAPACITY_MAX`` (default
100) sandboxes. Every sandbox is stopped at the end, also after a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
    stock_server,
)

STEPS = (10, 25, 50, 75, 100)
GOAL_P99_MS = 50.0
KEYSTROKES = 200
"""Keystrokes per step and server, spread round-robin over the open terminals."""

Opener = Callable[[], Awaitable[WebSocketClientConnection]]


@dataclass(frozen=True)
class Step:
    """Echo p99 (ms) of ours and stock with ``count`` open terminals."""

    count: int
    ours_p99: float
    stock_p99: float


def step_counts(maximum: int) -> list[int]:
    """The terminal counts to measure, up to and including ``maximum``."""
    return [count for count in STEPS if count < maximum] + [maximum]


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


async def measure_steps(maximum: int, ours: Opener, stock: Opener) -> list[Step]:
    """Echo p99 of ours and stock at each count, until ours misses the goal or the maximum."""
    steps: list[Step] = []
    terminals: dict[str, list[WebSocketClientConnection]] = {"ours": [], "stock": []}
    for count in step_counts(maximum):
        await open_more(terminals["ours"], count, ours)
        await open_more(terminals["stock"], count, stock)
        ours_p99 = p99(await echo_round_trips(terminals["ours"], KEYSTROKES))
        stock_p99 = p99(await echo_round_trips(terminals["stock"], KEYSTROKES))
        print(f"{count} terminals: echo p99 {ours_p99:.1f} ms, stock {stock_p99:.1f} ms")
        steps.append(Step(count, ours_p99, stock_p99))
        if ours_p99 >= GOAL_P99_MS:
            break
    return steps


async def measure(tmp: Path, maximum: int) -> tuple[list[Step], float, float]:
    """The steps, then KiB per idle sandbox (ours) and per idle terminal (stock)."""
    data_dir = tmp / "data"
    options = ("--Spawner.warm_pool_size=0", *PLATFORM_LIMITS)
    with embedded_postgres(tmp / "pgdata") as conninfo, stock_server(tmp / "stock") as stock_run:
        stock, stock_process = stock_run
        stock_idle = rss_kib(tree(stock_process.pid))
        async with platform(data_dir, conninfo, *options) as (_, port):
            user = await platform_target(port, "capacity")
            steps = await measure_steps(maximum, in_new_sandbox(user), stock.open_at_prompt)
            sandboxes = [tree(init) for init in await sandbox_pids(data_dir)]
            per_sandbox = sum(map(rss_kib, sandboxes)) / len(sandboxes)
        stock_growth = rss_kib(tree(stock_process.pid)) - stock_idle
    return steps, per_sandbox, stock_growth / steps[-1].count


def results(steps: list[Step], per_sandbox: float, per_terminal: float) -> list[Result]:
    """Capacity (ours: sandboxes; stock: terminals), the p99 of both at our capacity (at the
    first step if there is none), and the memory of each idle sandbox (stock: terminal)."""
    ours = capacity(steps, lambda step: step.ours_p99)
    at_ours = next((step for step in steps if step.count == ours), steps[0])
    return [
        Result(
            "terminals.capacity.sandboxes",
            "count",
            ours,
            capacity(steps, lambda step: step.stock_p99),
        ),
        Result("terminals.capacity.echo.p99", "ms", at_ours.ours_p99, at_ours.stock_p99),
        Result("terminals.capacity.idle_memory_each", "KiB", per_sandbox, per_terminal),
    ]


async def main_async() -> list[Result]:
    """Measure ours and the baseline in the same run."""
    maximum = int(os.environ.get("BENCH_CAPACITY_MAX", "100"))
    with temp_dir() as tmp:
        return results(*await measure(tmp, maximum))


def main() -> None:
    """Run, print the table, update results.json."""
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
