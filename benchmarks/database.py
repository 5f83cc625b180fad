"""PostgreSQL load per operation: what one save, one read and one file event cost the database.

The figures that size PostgreSQL for a deployment (docs/scaling.md): write-ahead log bytes,
transactions and rows written per operation, read from PostgreSQL's own counters
(``pg_current_wal_lsn`` and ``pg_stat_database``) around a batch of operations on a platform
with no other traffic. The baseline, measured in the same run, is the payload: the bytes the
client sent (so the ratio is the write amplification); transactions and rows are printed.
What the platform writes by itself (its background rounds) over a quiet interval as long is
subtracted.
"""

from __future__ import annotations

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
    platform_args,
    report,
    server,
    temp_dir,
)
from benchmarks.contents import login_token, text

OPERATIONS = {"put_1KB": 500, "put_1MB": 50, "get_1KB": 500}
STATS_FLUSH_SECONDS = 11.0
"""PostgreSQL's backends publish their counters at most every second while busy and within 10 s
of going idle (PGSTAT_IDLE_INTERVAL): the run waits this long before reading them."""


@dataclass(frozen=True)
class Counters:
    """The database's cumulative counters at one moment."""

    wal_bytes: int
    transactions: int
    rows_written: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.wal_bytes - other.wal_bytes,
            self.transactions - other.transactions,
            self.rows_written - other.rows_written,
        )


def counters(conninfo: str) -> Counters:
    """WAL position, committed transactions and rows inserted/updated/deleted so far."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,"
            " xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    if row is None:
        msg = "pg_stat_database has no row for this database"
        raise RuntimeError(msg)
    return Counters(int(row[0]), int(row[1]), int(row[2]))


def settled_counters(conninfo: str) -> Counters:
    """The counters once every backend has published what it did."""
    time.sleep(STATS_FLUSH_SECONDS)  # PostgreSQL's publication delay, not synchronisation
    return counters(conninfo)


def operations(api: HTTP, prefix: str) -> Iterator[tuple[str, int, Callable[[], None]]]:
    """Each case: its name, the payload bytes of one operation, one operation."""
    small, large = text(1024), text(1024**2)
    versions = iter(range(10**6))

    def put(path: str, content: str) -> Callable[[], None]:
        def save() -> None:
            changed = f"{next(versions):06}" + content[6:]
            body = {"type": "file", "format": "text", "content": changed}
            api.json("PUT", f"{prefix}/api/contents/{path}", body, expect=None)

        return save

    def get() -> None:
        api.json("GET", f"{prefix}/api/contents/small.txt?content=1")

    yield "put_1KB", len(small), put("small.txt", small)
    yield "put_1MB", len(large), put("large.txt", large)
    yield "get_1KB", len(small), get


def measure(tmp: Path) -> list[Result]:
    """Each case on a quiet platform: its counters' growth per operation."""
    port = free_port()
    with embedded_postgres(tmp / "pgdata") as conninfo:
        args = platform_args(port, tmp / "data", conninfo, "--Spawner.warm_pool_size=0")
        with server(args, port, "/api/health"):
            user = {"username": "bench", "password": secrets.token_hex(12)}
            HTTP(port, {}).json("POST", "/api/accounts/register", user, expect=201)
            api = HTTP(port, {"Authorization": f"token {login_token(port, user)}"})
            workspace = api.json("POST", "/api/workspaces", {"name": "db"}, expect=201)["uuid"]
            found = []
            for name, payload, operation in operations(api, f"/w/{workspace}"):
                operation()  # the file exists before the counted batch
                count = OPERATIONS[name]
                before = settled_counters(conninfo)
                start = time.perf_counter()
                for _ in range(count):
                    operation()
                busy = time.perf_counter() - start
                after = settled_counters(conninfo)
                # What the platform writes by itself meanwhile (its background rounds), over
                # as long a quiet time, is not the operations'.
                time.sleep(busy)  # a quiet interval as long as the batch, not synchronisation
                used = (after - before) - (settled_counters(conninfo) - after)
                print(
                    f"{name}: per operation {used.wal_bytes / count:.0f} WAL bytes, "
                    f"{used.transactions / count:.2f} transactions, "
                    f"{used.rows_written / count:.2f} rows written"
                )
                found.append(
                    Result(f"database.{name}.wal_bytes", "B", used.wal_bytes / count, payload)
                )
            return found


def main() -> None:
    """Run, print the table, update results.json."""
    with temp_dir() as tmp:
        report(measure(tmp))


if __name__ == "__main__":
    main()
