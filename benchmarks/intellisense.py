"""IntelliSense and search: ours (pylsp in a sandbox, reached through the platform's WebSocket
bridge; search in PostgreSQL) against the same pylsp on this host over stdio, and ``grep``.

Cases, each measured on both sides in this run:

- completion after ``np.`` once warm (each round changes the file first, so no answer can come
  from a cache of the same text), p50 and p99;
- opening a workspace (its sandbox starts) to the first completion answered, against starting
  pylsp on this host to its first completion; each server's own jedi cache is empty, as in a new
  sandbox (which has the shared cache of its base environment, ``kernel_image/lsp_cache.py``;
  pylsp on the host has none);
- the growth of the server's resident memory (pylsp and every process it started) over an
  editing script of changes, completions and hovers in numpy and pandas code;
- a literal search that matches in a few of 10,000 files, against ``grep -rn`` on the same files
  written to disk.

Sandboxes get the default limits (half a core); there is no warm pool, so opening a workspace
starts its sandbox.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import psycopg

from benchmarks.common import (
    HTTP,
    Result,
    embedded_postgres,
    p50,
    p99,
    platform,
    report,
    rss_kib,
    sandbox_pids,
    temp_dir,
    tree,
)
from benchmarks.contents import login_token
from benchmarks.lsp import LspClient, StdioTransport, WebSocketTransport

FIRST_ROUNDS = 3
"""Servers started (sandboxes opened) for the first-completion case."""
WARM_ROUNDS = 50
SCRIPT_ROUNDS = 150
"""Rounds of the editing script: each a change, a completion and a hover."""
LOADED_AFTER = 12
"""Rounds after which the script has completed and hovered on everything it uses once."""
SEARCH_ROUNDS = 20
MANY_FILES = 10_000
NEEDLE = "rare_needle"
NEEDLE_EVERY = 2500
"""Every this many files holds NEEDLE: 4 of the 10,000."""
NUMPY = "import numpy as np\nnp."
SCRIPT_PRELUDE = "import numpy as np\nimport pandas as pd\n\n"


@dataclass
class Measured:
    """One side's samples (ms) and memory (KiB)."""

    first: list[float]
    warm: list[float]
    memory_before: int
    """Before the editing script (numpy inspected)."""
    memory_loaded: int
    """After LOADED_AFTER rounds of it (pandas inspected too)."""
    memory_after: int

    @property
    def growth_mib(self) -> float:
        """Resident memory gained over the editing script, in MiB."""
        return (self.memory_after - self.memory_before) / 1024


async def first_numpy_completion(client: LspClient) -> None:
    """initialize, open a file ending in ``np.``, complete there (numpy's names must come)."""
    await client.initialize()
    await client.edit("first.py", NUMPY)
    labels = await client.complete_at_end("first.py", NUMPY)
    if "array" not in labels:
        msg = f"no numpy completion: {labels[:20]}"
        raise RuntimeError(msg)


async def warm_rounds(client: LspClient) -> list[float]:
    """ms per completion after ``np.``, each after a small change of the file."""
    samples = []
    for i in range(WARM_ROUNDS):
        text = f"import numpy as np\nx = {i}\nnp."
        started = time.perf_counter()
        await client.edit("first.py", text)
        labels = await client.complete_at_end("first.py", text)
        samples.append((time.perf_counter() - started) * 1000)
        if "array" not in labels:
            msg = f"no numpy completion in round {i}"
            raise RuntimeError(msg)
    return samples


def script_step(i: int) -> tuple[str, str]:
    """Round ``i`` of the editing script: the file's text (ending where completion is asked)
    and the name to hover on."""
    body = (
        f"values = np.linspace(0, {i}, {i + 10})\n"
        f"frame = pd.DataFrame({{'v{i}': values, 'w': np.sqrt(values)}})\n"
        f"summary_{i} = frame.describe()\n"
    )
    ends = ("np.", "pd.", "frame.", "np.linalg.", f"summary_{i}.", "frame['w'].")
    hovers = ("linspace", "DataFrame", "describe", "sqrt")
    return SCRIPT_PRELUDE + body + ends[i % len(ends)], hovers[i % len(hovers)]


async def editing_script(client: LspClient, memory: Callable[[], Awaitable[int]]) -> int:
    """SCRIPT_ROUNDS changes, each followed by a completion at its end and a hover; the
    server's memory (KiB) after LOADED_AFTER rounds, once what they use has been inspected."""
    loaded = 0
    for i in range(1, SCRIPT_ROUNDS + 1):
        text, hover_on = script_step(i)
        await client.edit("analysis.py", text)
        await client.complete_at_end("analysis.py", text)
        await client.hover("analysis.py", text, hover_on)
        if i == LOADED_AFTER:
            loaded = await memory()
    return loaded


class Servers:
    """Where the servers under test run. Subclass and override ``start``, ``stop`` and
    ``memory``; one server runs at a time."""

    async def start(self) -> LspClient:
        """A new server (and whatever it needs), its client connected. Override this."""
        raise NotImplementedError

    async def stop(self, client: LspClient) -> None:
        """End the server of ``client`` (and whatever it needed). Override this."""
        raise NotImplementedError

    async def memory(self) -> int:
        """Resident memory of the running server and every process it started, in KiB.
        Override this."""
        raise NotImplementedError

    async def measure(self) -> Measured:
        """FIRST_ROUNDS starts to a first completion, each server stopped but the last, then
        the warm rounds and the editing script on that one."""
        first = []
        for _ in range(FIRST_ROUNDS):
            started = time.perf_counter()
            client = await self.start()
            await first_numpy_completion(client)
            first.append((time.perf_counter() - started) * 1000)
            if len(first) < FIRST_ROUNDS:
                await self.stop(client)
        warm = await warm_rounds(client)
        before = await self.memory()
        loaded = await editing_script(client, self.memory)
        after = await self.memory()
        await self.stop(client)
        return Measured(first, warm, before, loaded, after)


class HostServers(Servers):
    """The sandbox venv's pylsp on this host, over stdio, each with an empty jedi cache."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "host-workspace"
        self.root.mkdir()
        self.running: StdioTransport | None = None

    async def start(self) -> LspClient:
        cache = self.tmp / f"host-cache-{secrets.token_hex(4)}"
        self.running = await StdioTransport.start(self.root, cache)
        return LspClient(self.running, self.root.as_uri())

    async def stop(self, client: LspClient) -> None:
        await client.transport.close()
        self.running = None

    async def memory(self) -> int:
        return rss_kib(tree(self.running.process.pid)) if self.running else 0


class SandboxServers(Servers):
    """Each start opens a new workspace (its sandbox starts) and connects to its pylsp."""

    def __init__(self, port: int, data_dir: Path, token: str) -> None:
        self.port = port
        self.data_dir = data_dir
        self.token = token
        self.api = HTTP(port, {"Authorization": f"token {token}"})
        self.workspace = ""

    async def start(self) -> LspClient:
        body = {"name": "bench"}
        self.workspace = self.api.json("POST", "/api/workspaces", body, expect=201)["uuid"]
        self.api.json("POST", f"/api/workspaces/{self.workspace}/sandbox")
        socket = await WebSocketTransport.connect(self.port, self.workspace, self.token)
        return LspClient(socket, "file:///workspace")

    async def stop(self, client: LspClient) -> None:
        await client.transport.close()
        self.api.json("DELETE", f"/api/workspaces/{self.workspace}/sandbox", expect=None)

    async def memory(self) -> int:
        # Only one sandbox runs at a time: the others were stopped.
        [init] = await sandbox_pids(self.data_dir)
        pids = {pid for server in pylsp_pids(tree(init)) for pid in tree(server)}
        return rss_kib(sorted(pids))


def pylsp_pids(pids: list[int]) -> list[int]:
    """Those of ``pids`` that run pylsp."""
    found = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"pylsp" in argv:
            found.append(pid)
    return found


def store_files(conninfo: str, workspace: str) -> None:
    """MANY_FILES small Python files, written straight into PostgreSQL as saves write them
    (content parts, then items); every NEEDLE_EVERY-th holds NEEDLE."""
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            """CREATE TEMP TABLE many ON COMMIT DROP AS
               SELECT g, nextval('content_ids') AS content_id,
                      convert_to(format(E'def f%%s():\\n    return %%s\\n', g,
                          CASE WHEN g %% %s = 0 THEN %s ELSE g::text END), 'UTF8') AS data
               FROM generate_series(1, %s) g""",
            [NEEDLE_EVERY, f'"{NEEDLE}"', MANY_FILES],
        )
        conn.execute(
            """INSERT INTO content_parts (content_id, seq, data, workspace_id)
               SELECT content_id, 1, data, %s FROM many""",
            [workspace],
        )
        conn.execute(
            """INSERT INTO workspace_items
                   (workspace_id, path, parent, name, type, content_id, size, sha256, mimetype)
               SELECT %s, format('m%%s.py', g), '', format('m%%s.py', g), 'file', content_id,
                      octet_length(data), sha256(data), 'text/x-python'
               FROM many""",
            [workspace],
        )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # As autovacuum would, before anyone searches.
        conn.execute("VACUUM (ANALYZE) search_texts, workspace_items")


def write_files(folder: Path) -> None:
    """The same files on disk."""
    folder.mkdir()
    for g in range(1, MANY_FILES + 1):
        value = f'"{NEEDLE}"' if g % NEEDLE_EVERY == 0 else str(g)
        (folder / f"m{g}.py").write_text(f"def f{g}():\n    return {value}\n")


def timed(action: Callable[[], int]) -> list[float]:
    """ms per call of ``action`` (after one untimed call), which answers the files found:
    each call must find MANY_FILES // NEEDLE_EVERY."""
    action()
    samples = []
    for _ in range(SEARCH_ROUNDS):
        started = time.perf_counter()
        files = action()
        samples.append((time.perf_counter() - started) * 1000)
        if files != MANY_FILES // NEEDLE_EVERY:
            msg = f"found {files} files"
            raise RuntimeError(msg)
    return samples


def search_rounds(
    port: int, token: str, conninfo: str, tmp: Path
) -> tuple[list[float], list[float]]:
    """ms per search (case-sensitive, as grep is) through the API, and per ``grep -rn``."""
    api = HTTP(port, {"Authorization": f"token {token}"})
    workspace = api.json("POST", "/api/workspaces", {"name": "search"}, expect=201)["uuid"]
    store_files(conninfo, workspace)
    query = urlencode({"q": NEEDLE, "case": "true"})

    def ours() -> int:
        return len(api.json("GET", f"/w/{workspace}/api/search?{query}")["files"])

    folder = tmp / "files"
    write_files(folder)

    def grep() -> int:
        found = subprocess.run(
            ["grep", "-rn", NEEDLE, str(folder)], check=True, capture_output=True, text=True
        )
        return len(found.stdout.splitlines())

    return timed(ours), timed(grep)


async def main_async() -> list[Result]:
    """The host baseline first, then the platform, in the same run."""
    with temp_dir() as tmp:
        host = await HostServers(tmp).measure()
        with embedded_postgres(tmp / "pgdata") as conninfo:
            options = ["--Spawner.warm_pool_size=0", "--Workspaces.max_workspaces_per_user=1000"]
            async with platform(tmp / "data", conninfo, *options) as (_, port):
                user = {"username": "bench", "password": secrets.token_hex(12)}
                HTTP(port, {}).json("POST", "/api/accounts/register", user, expect=201)
                token = login_token(port, user)
                mine = await SandboxServers(port, tmp / "data", token).measure()
                search, grep = search_rounds(port, token, conninfo, tmp)
    for name, side in (("sandbox", mine), ("host", host)):
        print(
            f"{name}: server memory (MiB) {side.memory_before / 1024:.0f} before the editing "
            f"script, {side.memory_loaded / 1024:.0f} after {LOADED_AFTER} rounds, "
            f"{side.memory_after / 1024:.0f} at its end"
        )
    return [
        Result("intellisense.completion_warm.p50", "ms", p50(mine.warm), p50(host.warm)),
        Result("intellisense.completion_warm.p99", "ms", p99(mine.warm), p99(host.warm)),
        Result("intellisense.first_completion", "ms", p50(mine.first), p50(host.first)),
        Result("intellisense.server_memory_growth", "MiB", mine.growth_mib, host.growth_mib),
        Result("search.find_in_files_10000.p50", "ms", p50(search), p50(grep)),
    ]


def main() -> None:
    """Run, print the table, update results.json."""
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
