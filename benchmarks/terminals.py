"""Terminals: ours (platform + agent in a sandbox) against stock jupyter_server + terminado.

Both servers run here, at the same time, in this run. Cases: open-to-prompt (cold sandbox start
and warm-pool claim, against opening a stock terminal), keystroke echo round trip, output
throughput, the memory of an idle sandbox, and a slow reader: a flood read at 1 MB/s while the
servers' memory is sampled, then Ctrl-C and the time until the prompt is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from benchmarks.common import (
    HTTP,
    Result,
    embedded_postgres,
    free_port,
    p50,
    p99,
    platform,
    report,
    rss_kib,
    server,
    stock_args,
    temp_dir,
    tree,
)
from benchmarks.contents import login_token

OPEN_ROUNDS = 8
KEYSTROKES = 1000
ECHO_ROUNDS = 10
"""Rounds the keystrokes are typed in, alternating between the servers, so that other load on
the machine falls on both alike."""
THROUGHPUT_BYTES = 100_000_000
FLOOD = (
    "yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    f" | head -c {THROUGHPUT_BYTES}; echo; echo EN''D\r"
)
"""A command printing 100 MB, then END (quoted so that the echoed command does not match)."""
SLOW_READ_RATE = 1_000_000
"""Bytes per second the slow reader takes."""
SLOW_READ_SECONDS = 12.0
MEMORY_SAMPLE_SECONDS = 0.1
PLATFORM_LIMITS = (
    "--Workspaces.max_workspaces_per_user=1000",
    "--Terminals.max_terminals_per_user=1000",
    "--LocalSpawner.spare_kernel=False",
)
"""Every case opens a new terminal, the cold-open case a new workspace each round. Sandboxes
start no spare kernel: these cases measure terminals (docs/performance.md has the spare's
cost)."""


@dataclass(frozen=True)
class Target:
    """One server under test: where it is, its API token, the workspace prefix (ours)."""

    base: str
    token: str
    prefix: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """Token authentication."""
        return {"Authorization": f"token {self.token}"}

    async def open_terminal(self, prefix: str | None = None) -> WebSocketClientConnection:
        """POST a terminal and connect to it; returns once the socket is open."""
        prefix = self.prefix if prefix is None else prefix
        response = await AsyncHTTPClient().fetch(
            f"{self.base}{prefix}/api/terminals",
            method="POST",
            body=b"{}",
            headers={**self.headers, "Content-Type": "application/json"},
        )
        name = json.loads(response.body)["name"]
        ws = self.base.replace("http", "ws", 1)
        return await websocket_connect(
            HTTPRequest(f"{ws}{prefix}/terminals/websocket/{name}?token={self.token}"),
            max_message_size=1 << 26,
        )

    async def open_at_prompt(self, prefix: str | None = None) -> WebSocketClientConnection:
        """A new terminal whose first prompt has been read."""
        conn = await self.open_terminal(prefix)
        await read_until(conn, at_prompt)
        return conn


def stdin(text: str) -> str:
    """The terminado message that types ``text``."""
    return json.dumps(["stdin", text])


async def read_stdout(conn: WebSocketClientConnection) -> str:
    """The text of the next message ("" for one that is not output)."""
    message = await conn.read_message()
    if message is None:
        msg = "terminal closed"
        raise RuntimeError(msg)
    frame = json.loads(message)
    return str(frame[1]) if frame[0] == "stdout" else ""


async def read_until(
    conn: WebSocketClientConnection, done: Callable[[str], bool], seen: str = ""
) -> int:
    """Read stdout until ``done(text read so far)``; return the characters read."""
    total = 0
    while not done(seen):
        text = await read_stdout(conn)
        total += len(text)
        seen = (seen + text)[-4096:]
    return total


def at_prompt(text: str) -> bool:
    """Whether a shell prompt (a user's ``$`` or root's ``#``) has been printed."""
    return text.rstrip().endswith(("$", "#"))


async def time_open(target: Target, prefix: str) -> float:
    """ms from the POST to the first prompt byte."""
    start = time.perf_counter()
    conn = await target.open_terminal(prefix)
    await read_until(conn, lambda s: len(s) > 0)  # the first byte of the prompt
    elapsed = (time.perf_counter() - start) * 1000
    conn.close()
    return elapsed


async def echo_round_trips(terminals: list[WebSocketClientConnection], count: int) -> list[float]:
    """ms per keystroke, from sending it to seeing it echoed; keystroke i goes to terminal
    i modulo their number."""
    samples = []
    for i in range(count):
        conn, char = terminals[i % len(terminals)], "abcdefghij"[i % 10]
        start = time.perf_counter()
        await conn.write_message(stdin(char))
        await read_until(conn, lambda s, c=char: c in s)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def interleaved_echo(targets: dict[str, Target]) -> dict[str, list[float]]:
    """Echo round trips on one terminal per target, ECHO_ROUNDS rounds taking turns."""
    terminals = {name: await target.open_at_prompt() for name, target in targets.items()}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(ECHO_ROUNDS):
        for name, conn in terminals.items():
            samples[name] += await echo_round_trips([conn], KEYSTROKES // ECHO_ROUNDS)
    for conn in terminals.values():
        conn.close()
    return samples


async def throughput(target: Target) -> float:
    """MB/s of terminal output (a program printing 100 MB)."""
    conn = await target.open_at_prompt()
    start = time.perf_counter()
    await conn.write_message(stdin(FLOOD))
    read = await read_until(conn, lambda s: "END" in s)
    elapsed = time.perf_counter() - start
    conn.close()
    return read / elapsed / 1e6


@contextlib.asynccontextmanager
async def peak_growth_kib(pids: dict[str, int]) -> AsyncIterator[dict[str, int]]:
    """Sample each process's resident memory until the block ends; the yielded dict then
    holds each one's peak growth over its memory at the start, in KiB."""
    start = {name: rss_kib([pid]) for name, pid in pids.items()}
    growth = dict.fromkeys(pids, 0)

    def sample() -> None:
        for name, pid in pids.items():
            growth[name] = max(growth[name], rss_kib([pid]) - start[name])

    async def keep_sampling() -> None:
        while True:
            sample()
            await asyncio.sleep(MEMORY_SAMPLE_SECONDS)

    sampler = asyncio.create_task(keep_sampling())
    try:
        yield growth
    finally:
        sampler.cancel()
        sample()


async def read_slowly(conn: WebSocketClientConnection, rate: float, seconds: float) -> None:
    """Read output at about ``rate`` characters (bytes: the flood is ASCII) per second, for
    ``seconds``."""
    start = time.perf_counter()
    taken = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        taken += len(await read_stdout(conn))
        await asyncio.sleep(max(0.0, taken / rate - elapsed))


@dataclass(frozen=True)
class SlowReader:
    """What a flood read slowly did: peak memory growth per process, and Ctrl-C's delay."""

    growth_kib: dict[str, int]
    interrupt_ms: float


async def slow_reader(target: Target, watched: dict[str, int]) -> SlowReader:
    """Flood a terminal and read it at SLOW_READ_RATE for SLOW_READ_SECONDS while sampling the
    memory of the ``watched`` processes; then Ctrl-C and time until the prompt is back."""
    conn = await target.open_at_prompt()
    async with peak_growth_kib(watched) as growth:
        await conn.write_message(stdin(FLOOD))
        await read_slowly(conn, SLOW_READ_RATE, SLOW_READ_SECONDS)
        start = time.perf_counter()
        await conn.write_message(stdin("\x03"))
        await read_until(conn, at_prompt)
        interrupt_ms = (time.perf_counter() - start) * 1000
    conn.close()
    return SlowReader(growth, interrupt_ms)


@contextlib.contextmanager
def stock_server(root: Path) -> Iterator[tuple[Target, subprocess.Popen[bytes]]]:
    """Stock jupyter_server with jupyter_server_terminals (terminado), files in ``root``."""
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    args = stock_args(port, root, token)
    with server(args, port, "/api/status") as process:
        yield Target(f"http://127.0.0.1:{port}", token), process


async def platform_target(port: int, username: str) -> Target:
    """A registered user's token on the platform at ``port``."""
    user = {"username": username, "password": secrets.token_hex(12)}
    HTTP(port, {}).json("POST", "/api/accounts/register", user, expect=201)
    return Target(f"http://127.0.0.1:{port}", login_token(port, user))


async def new_workspace(target: Target) -> str:
    """A new workspace's uuid."""
    response = await AsyncHTTPClient().fetch(
        f"{target.base}/api/workspaces",
        method="POST",
        body=json.dumps({"name": "bench"}),
        headers={**target.headers, "Content-Type": "application/json"},
    )
    uuid: str = json.loads(response.body)["uuid"]
    return uuid


async def in_new_workspace(target: Target) -> Target:
    """The same user, addressing a new workspace of theirs."""
    return Target(target.base, target.token, f"/w/{await new_workspace(target)}")


async def sandbox_init(conninfo: str, target: Target) -> int:
    """The init process (pid 1 of its namespace) of the sandbox of the target's workspace."""
    workspace = target.prefix.removeprefix("/w/")
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute(
            "SELECT spawner_state->>'pid' FROM sandboxes WHERE workspace_id = %s", [workspace]
        )
        row = await cur.fetchone()
    if row is None or row[0] is None:
        msg = f"workspace {workspace} has no sandbox"
        raise RuntimeError(msg)
    return int(row[0])


def agent_of(init: int) -> int:
    """The agent process among a sandbox's processes."""
    for pid in tree(init):
        if b"kernel_image" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    msg = f"no agent in the sandbox of init {init}"
    raise RuntimeError(msg)


async def wait_for_pool(conninfo: str, size: int) -> None:
    """Wait until the warm pool holds ``size`` started sandboxes again (between rounds)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            cur = await conn.execute(
                """SELECT count(*) FROM sandboxes
                   WHERE workspace_id IS NULL AND state = 'running'"""
            )
            row = await cur.fetchone()
        if row is not None and row[0] >= size:
            return
        await asyncio.sleep(0.2)
    msg = "the warm pool did not refill within 60 s"
    raise RuntimeError(msg)


async def open_rounds(ours: Target, stock: Target) -> dict[str, list[float]]:
    """Open-to-prompt, taking turns: a stock terminal, then a new workspace's (cold start)."""
    opens: dict[str, list[float]] = {"stock": [], "ours": []}
    for _ in range(OPEN_ROUNDS):
        opens["stock"].append(await time_open(stock, ""))
        opens["ours"].append(await time_open(ours, f"/w/{await new_workspace(ours)}"))
    return opens


async def warm_opens(target: Target, conninfo: str, pool: int) -> list[float]:
    """Open-to-prompt of new workspaces that claim a warm-pool sandbox."""
    opens = []
    for _ in range(OPEN_ROUNDS):
        ws = await new_workspace(target)
        await wait_for_pool(conninfo, pool)
        opens.append(await time_open(target, f"/w/{ws}"))
    # A sandbox still starting when the platform stops would be left running: let the pool
    # refill first.
    await wait_for_pool(conninfo, pool)
    return opens


async def idle_memory(
    ours: Target, conninfo: str, stock: Target, stock_pid: int
) -> tuple[int, int]:
    """KiB of an idle sandbox with one terminal (every process in it), and what one more
    terminal costs stock (its server's and its shells' growth)."""
    workspace = await in_new_workspace(ours)
    conn = await workspace.open_at_prompt()
    sandbox = rss_kib(tree(await sandbox_init(conninfo, workspace)))
    conn.close()
    before = rss_kib(tree(stock_pid))
    conn = await stock.open_at_prompt()
    terminal = rss_kib(tree(stock_pid)) - before
    conn.close()
    return sandbox, terminal


async def measure(tmp: Path) -> dict[str, Any]:
    """Every case, ours against stock; the warm-pool platform runs after the other."""
    with embedded_postgres(tmp / "pgdata") as conninfo, stock_server(tmp / "stock") as stock_run:
        stock, stock_process = stock_run
        found: dict[str, Any] = {}
        async with platform(
            tmp / "cold", conninfo, "--Spawner.warm_pool_size=0", *PLATFORM_LIMITS
        ) as (process, port):
            user = await platform_target(port, "bench")
            found["open"] = await open_rounds(user, stock)
            ours = await in_new_workspace(user)
            found["echo"] = await interleaved_echo({"ours": ours, "stock": stock})
            found["throughput"] = {"ours": await throughput(ours), "stock": await throughput(stock)}
            found["memory"] = await idle_memory(user, conninfo, stock, stock_process.pid)
            agent = agent_of(await sandbox_init(conninfo, ours))
            found["slow"] = {
                "ours": await slow_reader(ours, {"server": process.pid, "agent": agent}),
                "stock": await slow_reader(stock, {"server": stock_process.pid}),
            }
        async with platform(
            tmp / "warm", conninfo, "--Spawner.warm_pool_size=2", *PLATFORM_LIMITS
        ) as (_, port):
            found["warm_open"] = await warm_opens(await platform_target(port, "warm"), conninfo, 2)
    return found


def results(found: dict[str, Any]) -> list[Result]:
    """The cases as results: ours against the baseline."""
    opens, echo, slow = found["open"], found["echo"], found["slow"]
    stock_growth = slow["stock"].growth_kib["server"] / 1024
    return [
        Result("terminals.open_cold.p50", "ms", p50(opens["ours"]), p50(opens["stock"])),
        Result("terminals.open_warm.p50", "ms", p50(found["warm_open"]), p50(opens["stock"])),
        Result("terminals.echo.p50", "ms", p50(echo["ours"]), p50(echo["stock"])),
        Result("terminals.echo.p99", "ms", p99(echo["ours"]), p99(echo["stock"])),
        Result(
            "terminals.echo.mean",
            "ms",
            statistics.mean(echo["ours"]),
            statistics.mean(echo["stock"]),
        ),
        Result(
            "terminals.throughput",
            "MB/s",
            found["throughput"]["ours"],
            found["throughput"]["stock"],
        ),
        Result("terminals.idle_memory", "KiB", *found["memory"]),
        # The platform's growth is the one with a goal (under 20 MiB); the agent takes the
        # role of stock's server, so both are compared with it.
        Result(
            "terminals.slow_reader.server_growth",
            "MiB",
            slow["ours"].growth_kib["server"] / 1024,
            stock_growth,
        ),
        Result(
            "terminals.slow_reader.agent_growth",
            "MiB",
            slow["ours"].growth_kib["agent"] / 1024,
            stock_growth,
        ),
        Result(
            "terminals.slow_reader.ctrl_c",
            "ms",
            slow["ours"].interrupt_ms,
            slow["stock"].interrupt_ms,
        ),
    ]


async def main_async() -> list[Result]:
    """Measure ours and the baseline in the same run."""
    with temp_dir() as tmp:
        return results(await measure(tmp))


def main() -> None:
    """Run, print the table, update results.json."""
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
