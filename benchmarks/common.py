"""Shared pieces of the benchmarks: servers in subprocesses, timing, memory, the results file."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgserver.postgres_server import get_server

from extensions.sandboxes.spawners.local import LocalSpawner

RESULTS = Path(__file__).parent / "results.json"


@dataclass(frozen=True)
class Result:
    """One benchmark case: ours against the baseline, measured in the same run."""

    name: str
    unit: str
    ours: float
    baseline: float

    @property
    def ratio(self) -> float:
        """ours / baseline: below 1 is faster than the baseline."""
        return self.ours / self.baseline if self.baseline else float("inf")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HTTP:
    """A keep-alive HTTP/1.1 connection with JSON helpers."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.headers = headers
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Send a request; return status and body."""
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def json(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        """Send a request, check its status (any 2xx when ``expect`` is None), return JSON."""
        status, raw = self.call(method, path, body)
        if status != expect and not (expect is None and 200 <= status < 300):
            msg = f"{method} {path}: {status} {raw[:300]!r}"
            raise RuntimeError(msg)
        return json.loads(raw) if raw else None


def wait_for(port: int, path: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the server in ``process`` answers ``path`` (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"server exited with {process.returncode}"
            raise RuntimeError(msg)
        try:
            HTTP(port, {}).call("GET", path)
            return
        except OSError:
            time.sleep(0.1)
    msg = f"server on {port} did not start"
    raise RuntimeError(msg)


@contextlib.contextmanager
def server(args: list[str], port: int, ready_path: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command until the block ends."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # BENCH_LOG_DIR keeps every server's output (<module>-<port>.log), to see why a run failed.
    log_dir = os.environ.get("BENCH_LOG_DIR")
    output = subprocess.DEVNULL
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        output = os.open(Path(log_dir) / f"{args[0]}-{port}.log", os.O_WRONLY | os.O_CREAT, 0o600)
    process = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=output, stderr=output)
    if log_dir:
        os.close(output)
    try:
        wait_for(port, ready_path, process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def embedded_postgres(folder: Path) -> Iterator[str]:
    """A PostgreSQL server of its own (pgserver) in ``folder``; yields its URL."""
    pg = get_server(folder, cleanup_mode="delete")
    try:
        conninfo: str = pg.get_uri("postgres")
        yield conninfo
    finally:
        pg.cleanup()


@contextlib.asynccontextmanager
async def platform(
    data_dir: Path, conninfo: str, *options: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    """The platform server (local spawner, state in ``data_dir``); yields it and its port.

    Every sandbox it started is stopped at the end, also after a failure: sandboxes outlive
    the server by design.
    """
    port = free_port()
    try:
        with server(
            platform_args(port, data_dir, conninfo, *options), port, "/api/health"
        ) as process:
            yield process, port
    finally:
        await stop_all(data_dir)


def stock_args(port: int, root: Path, token: str, *options: str) -> list[str]:
    """The command line (after ``python -m``) of stock jupyter_server serving ``root``."""
    return [
        "jupyter_server",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--allow-root",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        *options,
    ]


def platform_args(port: int, data_dir: Path, conninfo: str, *options: str) -> list[str]:
    """The command line (after ``python -m``) of a platform server on ``port``."""
    return [
        "platform_server",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--PlatformApp.db_url={conninfo}",
        f"--PlatformApp.data_dir={data_dir}",
        "--Accounts.bcrypt_cost=4",
        # One benchmark user opens many workspaces at once: no per-user sandbox cap.
        "--Sandboxes.max_sandboxes_per_user=0",
        *options,
    ]


async def stop_all(data_dir: Path) -> None:
    """Stop every sandbox started with this data folder (they outlive the platform)."""
    spawner = LocalSpawner(data_dir=str(data_dir))
    handles = await spawner.find_running()
    stopped = await asyncio.gather(*map(spawner.stop, handles), return_exceptions=True)
    for outcome in stopped:
        if isinstance(outcome, BaseException):
            raise outcome


async def sandbox_pids(data_dir: Path) -> list[int]:
    """The init process of every sandbox started with this data folder."""
    handles = await LocalSpawner(data_dir=str(data_dir)).find_running()
    return [int(handle.state["pid"]) for handle in handles]


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-") as path:
        yield Path(path)


def p50(samples: list[float]) -> float:
    """The median."""
    return statistics.median(samples)


def p95(samples: list[float]) -> float:
    """The 95th percentile (the largest sample for small sets)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def p99(samples: list[float]) -> float:
    """The 99th percentile (nearest rank: the largest sample in sets of 50 or fewer)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes, in KiB (0 for one that has exited)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (those still running)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return []
    found = [pid]
    for child in children:
        found += tree(int(child))
    return found


def report(results: list[Result]) -> None:
    """Print a table and merge the results into ``benchmarks/results.json`` by name."""
    width = max(len(r.name) for r in results)
    print(f"{'case':<{width}}  {'unit':>6}  {'ours':>10}  {'baseline':>10}  {'ratio':>6}")
    for r in results:
        print(
            f"{r.name:<{width}}  {r.unit:>6}  {r.ours:>10.2f}  {r.baseline:>10.2f}  {r.ratio:>6.2f}"
        )
    merged = {}
    if RESULTS.exists():
        merged = {entry["name"]: entry for entry in json.loads(RESULTS.read_text())}
    for r in results:
        merged[r.name] = {**asdict(r), "ratio": round(r.ratio, 3)}
    RESULTS.write_text(
        json.dumps(sorted(merged.values(), key=lambda e: e["name"]), indent=2) + "\n"
    )
