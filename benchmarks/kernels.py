"""Kernels: ours (platform + agent in a sandbox) against stock jupyter_server, same ipykernel.

Both servers run here, in this run. Cases: kernel start to its first ``idle`` status (a new
kernel in a running sandbox, and in a workspace whose sandbox must start first), and the
round trip of executing ``1+1`` (request sent to ``execute_reply`` and ``idle`` received) over
the v1 binary WebSocket protocol JupyterLab uses, and over the legacy JSON one.

Ours runs twice: with the sandboxes' default CPU limit (half a core, enforced by a cgroup where
the host allows it: a tight execute loop then gets throttled now and then, which shows in p99),
and without it (``no_cpu_limit``), which leaves the platform's own cost.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
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
    server,
    stock_args,
    temp_dir,
)
from benchmarks.contents import login_token

V1 = "v1.kernel.websocket.jupyter.org"
START_ROUNDS = 8
EXECUTE_ROUNDS = 500
OPEN_TO_CONSOLE = 3.0
"""Seconds between a workspace opening and its first kernel start (a user's pause): the
sandbox's spare kernel (LocalSpawner.spare_kernel) starts meanwhile."""


class Channel:
    """A kernel WebSocket in either format, just enough to time requests."""

    def __init__(self, conn: WebSocketClientConnection, protocol: str | None) -> None:
        self.conn = conn
        self.protocol = protocol
        self.session = uuid.uuid4().hex

    async def send(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a shell request; return its msg_id."""
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "bench",
            "session": self.session,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.4",
        }
        if self.protocol == V1:
            parts = [json.dumps(p).encode() for p in (header, {}, {}, content)]
            await self.conn.write_message(serialize_msg_to_ws_v1(parts, "shell"), binary=True)
        else:
            message = {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": "shell",
                "buffers": [],
            }
            await self.conn.write_message(json.dumps(message))
        return str(header["msg_id"])

    async def read(self) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(channel, header, parent_header, content) of the next message."""
        frame = await self.conn.read_message()
        if frame is None:
            msg = "kernel socket closed"
            raise RuntimeError(msg)
        if self.protocol == V1:
            assert isinstance(frame, bytes)  # noqa: S101
            channel, parts = deserialize_msg_from_ws_v1(frame)
            header, parent, _, content = (json.loads(p) for p in parts[:4])
            return channel, header, parent, content
        message = json.loads(frame)
        return message["channel"], message["header"], message["parent_header"], message["content"]

    async def until_idle(self, msg_id: str | None, *, reply: bool) -> None:
        """Read until ``idle`` (of ``msg_id``, or any) and, if ``reply``, the shell reply."""
        replied, idle = not reply, False
        while not (replied and idle):
            channel, header, parent, content = await self.read()
            if msg_id is not None and parent.get("msg_id") != msg_id:
                continue
            if channel == "shell":
                replied = True
            elif header["msg_type"] == "status" and content["execution_state"] == "idle":
                idle = True


class Target:
    """One server under test: where a workspace's (or the root's) Jupyter API is."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call; its JSON answer."""
        response = await AsyncHTTPClient().fetch(
            f"{self.base}{path}",
            method=method,
            body=None if body is None and method in {"GET", "DELETE"} else json.dumps(body or {}),
            headers=self.headers,
            request_timeout=120,
        )
        return json.loads(response.body) if response.body else None

    async def connect(self, prefix: str, kernel_id: str, protocol: str | None) -> Channel:
        """Open the kernel's channels in ``protocol``."""
        ws = self.base.replace("http", "ws", 1)
        url = f"{ws}{prefix}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        conn = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {self.token}"}),
            subprotocols=[protocol] if protocol else None,
        )
        return Channel(conn, protocol)


async def start_to_idle(target: Target, prefix: str) -> tuple[float, str]:
    """ms from POST /api/kernels to the first idle status; and the kernel's id."""
    started = time.perf_counter()
    kernel = await target.call("POST", f"{prefix}/api/kernels", {"name": "python3"})
    channel = await target.connect(prefix, kernel["id"], V1)
    await channel.send("kernel_info_request", {})
    await channel.until_idle(None, reply=False)
    elapsed = (time.perf_counter() - started) * 1000
    channel.conn.close()
    return elapsed, kernel["id"]


async def start_rounds(target: Target, prefix: str) -> list[float]:
    """START_ROUNDS kernel starts, each shut down after."""
    samples = []
    for _ in range(START_ROUNDS):
        elapsed, kernel_id = await start_to_idle(target, prefix)
        samples.append(elapsed)
        await target.call("DELETE", f"{prefix}/api/kernels/{kernel_id}")
    return samples


async def execute_rounds(target: Target, prefix: str, protocol: str | None) -> list[float]:
    """ms per ``1+1``: execute_request sent → execute_reply and idle received."""
    kernel = await target.call("POST", f"{prefix}/api/kernels", {"name": "python3"})
    channel = await target.connect(prefix, kernel["id"], protocol)
    await channel.send("kernel_info_request", {})
    await channel.until_idle(None, reply=False)
    for _ in range(20):  # warm-up
        await channel.until_idle(await channel.send("execute_request", {"code": "1+1"}), reply=True)
    samples = []
    for _ in range(EXECUTE_ROUNDS):
        start = time.perf_counter()
        msg_id = await channel.send("execute_request", {"code": "1+1"})
        await channel.until_idle(msg_id, reply=True)
        samples.append((time.perf_counter() - start) * 1000)
    channel.conn.close()
    await target.call("DELETE", f"{prefix}/api/kernels/{kernel['id']}")
    return samples


async def stock(tmp: Path) -> dict[str, Any]:
    """Stock jupyter_server with its python3 kernelspec (ipykernel), token auth."""
    port, token = free_port(), secrets.token_hex(16)
    root = tmp / "stock"
    root.mkdir()
    args = stock_args(port, root, token)
    with server(args, port, "/api/status"):
        target = Target(f"http://127.0.0.1:{port}", token)
        return {
            "start": await start_rounds(target, ""),
            "execute_v1": await execute_rounds(target, "", V1),
            "execute_json": await execute_rounds(target, "", None),
        }


async def ours(tmp: Path, cpu_limit: float | None = None) -> dict[str, Any]:
    """The platform with the local (bubblewrap) spawner, no warm pool; sandboxes get their
    default CPU limit (half a core) unless ``cpu_limit`` says otherwise (0: none)."""
    name = "default" if cpu_limit is None else f"cpu{cpu_limit:g}"
    options = ["--Spawner.warm_pool_size=0", "--Workspaces.max_workspaces_per_user=1000"]
    if cpu_limit is not None:
        options.append(f"--LocalSpawner.cpu_limit={cpu_limit}")
    with embedded_postgres(tmp / f"pgdata-{name}") as conninfo:
        async with platform(tmp / f"data-{name}", conninfo, *options) as (_, port):
            user = {"username": "bench", "password": secrets.token_hex(12)}
            HTTP(port, {}).json("POST", "/api/accounts/register", user, expect=201)
            target = Target(f"http://127.0.0.1:{port}", login_token(port, user))
            cold, first = [], []
            for _ in range(START_ROUNDS):
                ws = (await target.call("POST", "/api/workspaces", {"name": "bench"}))["uuid"]
                cold.append((await start_to_idle(target, f"/w/{ws}"))[0])
                await target.call("DELETE", f"/api/workspaces/{ws}/sandbox")
            for _ in range(START_ROUNDS):
                # A user opens a workspace, then its console a moment later.
                ws = (await target.call("POST", "/api/workspaces", {"name": "bench"}))["uuid"]
                await target.call("POST", f"/api/workspaces/{ws}/sandbox")
                await asyncio.sleep(OPEN_TO_CONSOLE)
                first.append((await start_to_idle(target, f"/w/{ws}"))[0])
                await target.call("DELETE", f"/api/workspaces/{ws}/sandbox")
            ws = (await target.call("POST", "/api/workspaces", {"name": "bench"}))["uuid"]
            await target.call("POST", f"/api/workspaces/{ws}/sandbox")
            prefix = f"/w/{ws}"
            return {
                "cold": cold,
                "first": first,
                "start": await start_rounds(target, prefix),
                "execute_v1": await execute_rounds(target, prefix, V1),
                "execute_json": await execute_rounds(target, prefix, None),
            }


async def main_async() -> list[Result]:
    """Measure the baseline, then ours, in the same run."""
    with temp_dir() as tmp:
        baseline = await stock(tmp)
        mine = await ours(tmp)
        # The same without the sandbox's CPU limit: what is left is the platform's own cost.
        free = await ours(tmp, cpu_limit=0)
    # (name, our samples, baseline samples, statistic)
    cases: list[tuple[str, list[float], list[float], Callable[[list[float]], float]]] = [
        ("start_to_idle.p50", mine["start"], baseline["start"], p50),
        ("start_to_idle_cold_sandbox.p50", mine["cold"], baseline["start"], p50),
        ("first_kernel_of_open_workspace.p50", mine["first"], baseline["start"], p50),
        ("execute_v1.p50", mine["execute_v1"], baseline["execute_v1"], p50),
        ("execute_v1.p99", mine["execute_v1"], baseline["execute_v1"], p99),
        ("execute_json.p50", mine["execute_json"], baseline["execute_json"], p50),
        ("execute_json.p99", mine["execute_json"], baseline["execute_json"], p99),
        ("execute_v1.mean", mine["execute_v1"], baseline["execute_v1"], statistics.mean),
        ("no_cpu_limit.start_to_idle.p50", free["start"], baseline["start"], p50),
        ("no_cpu_limit.execute_v1.p50", free["execute_v1"], baseline["execute_v1"], p50),
        ("no_cpu_limit.execute_v1.p99", free["execute_v1"], baseline["execute_v1"], p99),
    ]
    return [
        Result(f"kernels.{name}", "ms", stat(ours_), stat(theirs))
        for name, ours_, theirs, stat in cases
    ]


def main() -> None:
    """Run, print the table, update results.json."""
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
