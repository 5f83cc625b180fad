"""Contents API: our PostgreSQL-backed workspaces against stock jupyter_server on local disk.

Both servers run here, at the same time, as subprocesses of the same Python; every case is
timed over the same HTTP API with a keep-alive connection, alternating between the two servers
round by round, and reported as p50/p95 with the ratio ours/stock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.common import (
    HTTP,
    Result,
    embedded_postgres,
    free_port,
    p50,
    p95,
    platform_args,
    report,
    server,
    stock_args,
    temp_dir,
)

SIZES = {"1KB": 1024, "1MB": 1024**2, "10MB": 10 * 1024**2}
ROUNDS = {"1KB": 50, "1MB": 20, "10MB": 8}
LISTINGS = (1000, 10000)
UPLOAD_MB = 100
CHUNK = 1024 * 1024  # JupyterLab's upload chunk size


def text(size: int) -> str:
    """``size`` bytes of printable text."""
    return base64.b64encode(os.urandom(size))[:size].decode()


def upload(http: HTTP, prefix: str, path: str, data: bytes) -> None:
    """Upload ``data`` in chunks exactly as JupyterLab's file browser does."""
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    for number, chunk in enumerate(chunks, start=1):
        http.json(
            "PUT",
            f"{prefix}/api/contents/{path}",
            {
                "type": "file",
                "format": "base64",
                "content": base64.b64encode(chunk).decode(),
                "chunk": -1 if number == len(chunks) else number,
            },
            expect=None,
        )


def put_version(http: HTTP, path: str, content: str, versions: Iterator[int]) -> None:
    """Save ``content`` changed in its first bytes: every round writes new bytes, as an
    editor does."""
    body = {"type": "file", "format": "text", "content": f"{next(versions):06}" + content[6:]}
    http.json("PUT", path, body)


@dataclass(frozen=True)
class Target:
    """One server under test: a connection and where its Jupyter API lives."""

    http: HTTP
    prefix: str


def case_actions(target: Target) -> Iterator[tuple[str, int, Callable[[], object]]]:
    """``(case, rounds, action)`` of every case against one server, after its set-up."""
    http, prefix = target.http, target.prefix
    for label, size in SIZES.items():
        content = text(size)
        path = f"{prefix}/api/contents/file_{label}.txt"
        http.json("PUT", path, {"type": "file", "format": "text", "content": content}, expect=201)
        put = functools.partial(put_version, http, path, content, itertools.count())
        yield f"put_{label}", ROUNDS[label], put
        get = functools.partial(http.json, "GET", path + "?type=file&format=text&content=1")
        yield f"get_{label}", ROUNDS[label], get
    for count in LISTINGS:
        listing = functools.partial(http.json, "GET", f"{prefix}/api/contents/dir{count}?content=1")
        yield f"list_{count}", 10, listing
    data = os.urandom(UPLOAD_MB * 1024 * 1024)
    yield f"upload_{UPLOAD_MB}MB_chunked", 3, lambda: upload(http, prefix, "upload.bin", data)


def interleaved(ours: Target, stock: Target) -> tuple[dict[str, list[float]], ...]:
    """Time every case on both servers, alternating round by round, so that a change in the
    machine's load during the run weighs on both alike."""
    samples: tuple[dict[str, list[float]], dict[str, list[float]]] = ({}, {})
    for mine, theirs in zip(case_actions(ours), case_actions(stock), strict=True):
        case, rounds, _ = mine
        actions = (mine[2], theirs[2])
        for action in actions:
            action()  # warm-up
        for round_ in range(rounds):
            for side in (round_ % 2, 1 - round_ % 2):
                start = time.perf_counter()
                actions[side]()
                samples[side].setdefault(case, []).append((time.perf_counter() - start) * 1000)
    return samples


def fill_stock(root: Path) -> None:
    """The listing directories, on disk."""
    for count in LISTINGS:
        folder = root / f"dir{count}"
        folder.mkdir()
        for i in range(count):
            (folder / f"file{i:05}.txt").write_text("x")


def fill_ours(conninfo: str, workspace: str) -> None:
    """The listing directories, in PostgreSQL (as if saved through the API)."""
    digest = hashlib.sha256(b"x").digest()
    with psycopg.connect(conninfo) as conn:
        for count in LISTINGS:
            conn.execute(
                """INSERT INTO workspace_items (workspace_id, path, parent, name, type)
                   VALUES (%s, %s, '', %s, 'directory')""",
                [workspace, f"dir{count}", f"dir{count}"],
            )
            conn.execute(
                """WITH files AS (
                       INSERT INTO workspace_items (workspace_id, path, parent, name, type,
                                                    content_id, size, sha256, mimetype)
                       SELECT %s, %s || '/' || n, %s, n, 'file', nextval('content_ids'), 1, %s,
                              'text/plain'
                       FROM (SELECT 'file' || lpad(i::text, 5, '0') || '.txt' AS n
                             FROM generate_series(0, %s - 1) i) names
                       RETURNING content_id)
                   INSERT INTO content_parts (content_id, seq, data, workspace_id)
                   SELECT content_id, 1, 'x', %s FROM files""",
                [workspace, f"dir{count}", f"dir{count}", digest, count, workspace],
            )


def stock_server(tmp: Path) -> tuple[list[str], int, str]:
    """Stock jupyter_server with its default (large-file) contents manager, on local disk."""
    root = tmp / "stock"
    root.mkdir()
    fill_stock(root)
    port, token = free_port(), secrets.token_hex(16)
    args = stock_args(
        port, root, token, "--ServerApp.jpserver_extensions={'jupyter_server_terminals': False}"
    )
    return args, port, token


def run(tmp: Path) -> tuple[dict[str, list[float]], ...]:
    """Both servers at once: the platform on its own PostgreSQL server, and stock Jupyter."""
    stock_command, stock_port, stock_token = stock_server(tmp)
    port = free_port()
    # No sandboxes: files need none, and pool sandboxes would outlive the server.
    options = "--Spawner.warm_pool_size=0"
    with embedded_postgres(tmp / "pgdata") as conninfo:
        args = platform_args(port, tmp / "data", conninfo, options)
        with server(args, port, "/api/health"), server(stock_command, stock_port, "/api/status"):
            http = HTTP(port, {})
            user = {"username": "bench", "password": secrets.token_hex(12)}
            http.json("POST", "/api/accounts/register", user, expect=201)
            token = login_token(port, user)
            api = HTTP(port, {"Authorization": f"token {token}"})
            workspace = api.json("POST", "/api/workspaces", {"name": "bench"}, expect=201)["uuid"]
            fill_ours(conninfo, workspace)
            stock = HTTP(stock_port, {"Authorization": f"token {stock_token}"})
            return interleaved(Target(api, f"/w/{workspace}"), Target(stock, ""))


def login_token(port: int, user: dict[str, str]) -> str:
    """Log in with a password and make an API token."""
    http = HTTP(port, {})
    http.conn.request(
        "POST",
        "/api/accounts/login",
        body=json.dumps(user),
        headers={"Content-Type": "application/json"},
    )
    response = http.conn.getresponse()
    response.read()
    cookies = {}
    for header in response.headers.get_all("Set-Cookie") or []:
        name, _, rest = header.partition("=")
        cookies[name] = rest.split(";")[0]
    cookie_header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    browser = HTTP(port, {"Cookie": cookie_header, "X-XSRFToken": cookies["_xsrf"]})
    token: str = browser.json("POST", "/api/accounts/tokens", {"name": "bench"}, expect=201)[
        "token"
    ]
    return token


def summarise(ours: dict[str, list[float]], stock: dict[str, list[float]]) -> list[Result]:
    """p50 and p95 of every case, ours against stock."""
    stats: dict[str, Callable[[list[float]], float]] = {"p50": p50, "p95": p95}
    return [
        Result(f"contents.{case}.{stat}", "ms", fn(ours[case]), fn(stock[case]))
        for case in ours
        for stat, fn in stats.items()
    ]


def main() -> None:
    """Run both servers, print the table, update results.json."""
    with temp_dir() as tmp:
        ours, stock = run(tmp)
    report(summarise(ours, stock))


if __name__ == "__main__":
    main()
