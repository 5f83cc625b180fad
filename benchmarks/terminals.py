"""Terminals: ours (platform + agent in a sandbox) against stock jupyter_server + terminado.

Both servers run here, in this run. Cases: open-to-prompt (cold sandbox start and warm-pool
claim, against opening a stock terminal), keystroke echo round trip, output throughput, and
the memory of an idle sandbox.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from pgserver.postgres_server import get_server
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from benchmarks.common import HTTP, Result, free_port, p50, report, server, temp_dir
from benchmarks.contents import login_token
from extensions.sandboxes.spawners.local import LocalSpawner

OPEN_ROUNDS = 8
KEYSTROKES = 1000
THROUGHPUT_BYTES = 100_000_000


class Target:
    """One server under test: how to open a terminal and where its WebSocket is."""

    def __init__(self, base: str, headers: dict[str, str], token: str, prefix: str) -> None:
        self.base = base
        self.headers = headers
        self.token = token
        self.prefix = prefix

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


async def read_until(
    conn: WebSocketClientConnection, done: Callable[[str], bool], seen: str = ""
) -> int:
    """Read stdout until ``done(text read so far)``; return the characters read."""
    total = 0
    while not done(seen):
        message = await conn.read_message()
        if message is None:
            msg = "terminal closed"
            raise RuntimeError(msg)
        frame = json.loads(message)
        if frame[0] == "stdout":
            total += len(frame[1])
            seen = (seen + frame[1])[-4096:]
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


async def echo_round_trips(target: Target) -> list[float]:
    """ms per keystroke, from sending it to seeing it echoed."""
    conn = await target.open_terminal()
    await read_until(conn, at_prompt)
    samples = []
    for i in range(KEYSTROKES):
        char = "abcdefghij"[i % 10]
        start = time.perf_counter()
        await conn.write_message(json.dumps(["stdin", char]))
        await read_until(conn, lambda s, c=char: c in s)
        samples.append((time.perf_counter() - start) * 1000)
    await conn.write_message(json.dumps(["stdin", "\x15"]))  # clear the line
    conn.close()
    return samples


async def throughput(target: Target) -> float:
    """MB/s of terminal output (a program printing 100 MB)."""
    conn = await target.open_terminal()
    await read_until(conn, at_prompt)
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    command = f"yes {line} | head -c {THROUGHPUT_BYTES}; echo; echo EN''D\r"
    start = time.perf_counter()
    await conn.write_message(json.dumps(["stdin", command]))
    read = await read_until(conn, lambda s: "END" in s)
    elapsed = time.perf_counter() - start
    conn.close()
    return read / elapsed / 1e6


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes, in KiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += tree(int(child))
    return found


async def stock(tmp: Path) -> dict[str, Any]:
    """Stock jupyter_server + jupyter_server_terminals."""
    port, token = free_port(), secrets.token_hex(16)
    root = tmp / "stock"
    root.mkdir()
    args = [
        "jupyter_server",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--allow-root",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
    ]
    with server(args, port, "/api/status") as process:
        target = Target(f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}, token, "")
        opens = [await time_open(target, "") for _ in range(OPEN_ROUNDS)]
        before = rss_kib(tree(process.pid))
        conn = await target.open_terminal()
        await read_until(conn, at_prompt)
        memory = rss_kib(tree(process.pid)) - before
        conn.close()
        return {
            "open": opens,
            "echo": await echo_round_trips(target),
            "throughput": await throughput(target),
            "memory": memory,
        }


async def ours(tmp: Path) -> dict[str, Any]:
    """The platform with the local (bubblewrap) spawner, cold and warm."""
    pg = get_server(tmp / "pgdata", cleanup_mode="delete")
    conninfo: str = pg.get_uri("postgres")
    results: dict[str, Any] = {}
    try:
        for pool in (0, 2):
            port = free_port()
            args = [
                "platform_server",
                f"--port={port}",
                "--ip=127.0.0.1",
                f"--PlatformApp.db_url={conninfo}",
                f"--PlatformApp.data_dir={tmp / f'data{pool}'}",
                f"--Spawner.warm_pool_size={pool}",
                "--Workspaces.max_workspaces_per_user=1000",
                "--Terminals.max_terminals_per_user=1000",
                "--Accounts.bcrypt_cost=4",
            ]
            with server(args, port, "/api/health"):
                target = await platform_target(port, f"bench{pool}")
                opens = []
                for _ in range(OPEN_ROUNDS):
                    ws = await new_workspace(target)
                    if pool:
                        await wait_for_pool(conninfo, pool)
                    opens.append(await time_open(target, f"/w/{ws}"))
                results["warm_open" if pool else "cold_open"] = opens
                if not pool:
                    target.prefix = f"/w/{await new_workspace(target)}"
                    results["echo"] = await echo_round_trips(target)
                    results["throughput"] = await throughput(target)
                    results["memory"] = await sandbox_memory(tmp / f"data{pool}")
                await stop_all(tmp / f"data{pool}")
    finally:
        pg.cleanup()
    return results


async def platform_target(port: int, username: str) -> Target:
    """A registered user's token on the platform at ``port``."""
    base = f"http://127.0.0.1:{port}"
    user = {"username": username, "password": secrets.token_hex(12)}
    http = HTTP(port, {})
    http.json("POST", "/api/accounts/register", user, expect=201)
    token = login_token(port, user)
    return Target(base, {"Authorization": f"token {token}"}, token, "")


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


async def sandbox_memory(data_dir: Path) -> int:
    """KiB of one idle sandbox with an open terminal: every process in its PID namespace."""
    found = await LocalSpawner(data_dir=str(data_dir)).find_running()
    return rss_kib(tree(int(found[-1].state["pid"]))) if found else 0


async def stop_all(data_dir: Path) -> None:
    """Stop the sandboxes a platform run left (they outlive the platform by design)."""
    spawner = LocalSpawner(data_dir=str(data_dir))
    for handle in await spawner.find_running():
        await spawner.stop(handle)


def p99(samples: list[float]) -> float:
    """The 99th percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def main_async() -> list[Result]:
    """Measure the baseline, then ours, in the same run."""
    with temp_dir() as tmp:
        baseline = await stock(tmp)
        mine = await ours(tmp)
    return [
        Result("terminals.open_cold.p50", "ms", p50(mine["cold_open"]), p50(baseline["open"])),
        Result("terminals.open_warm.p50", "ms", p50(mine["warm_open"]), p50(baseline["open"])),
        Result("terminals.echo.p50", "ms", p50(mine["echo"]), p50(baseline["echo"])),
        Result("terminals.echo.p99", "ms", p99(mine["echo"]), p99(baseline["echo"])),
        Result("terminals.throughput", "MB/s", mine["throughput"], baseline["throughput"]),
        Result("terminals.idle_memory", "KiB", mine["memory"], baseline["memory"]),
        Result(
            "terminals.echo.mean",
            "ms",
            statistics.mean(mine["echo"]),
            statistics.mean(baseline["echo"]),
        ),
    ]


def main() -> None:
    """Run, print the table, update results.json."""
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
