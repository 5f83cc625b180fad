"""A real PostgreSQL for tests: $TEST_DATABASE_URL, or one embedded server per test run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.missing import skip_or_fail

TEMPLATE = "platform_test_template"


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointed at another database of the same server."""
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    return make_conninfo(**params)


@contextmanager
def postgres_server(tmp_dir: Path) -> Iterator[str]:
    """Yield an admin conninfo of a PostgreSQL server that lives as long as the block."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    import pgserver

    server = pgserver.get_server(tmp_dir / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()


def create_database(admin_url: str, *, template: str | None = None) -> str:
    """Create a uniquely named database; return its conninfo."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(query)
    return database_url(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by ``create_database``, closing its connections."""
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


DEBIAN_POSTGRES = Path("/usr/lib/postgresql")


@contextmanager
def debian_postgres() -> Iterator[str]:
    """Yield an admin conninfo of a throwaway cluster of Debian's PostgreSQL (with contrib's
    extensions, such as pg_trgm, which the embedded server lacks), on a Unix socket only. As
    root, the cluster runs as Debian's ``postgres`` user (PostgreSQL refuses root)."""
    initdbs = sorted(DEBIAN_POSTGRES.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not initdbs:
        skip_or_fail(
            "Debian's PostgreSQL is not installed (the trigram index needs its pg_trgm): "
            "`sudo apt-get install postgresql` (scripts/system-deps installs it as root)"
        )
    bindir = initdbs[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses='' -k {folder} -p 5432"
        pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-s"]
        # The server's output to a file: a pipe would stay open as long as the server runs.
        start = [*pg_ctl, "-o", options, "-l", str(folder / "log"), "-w", "start"]
        subprocess.run(start, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield make_conninfo(host=str(folder), port=5432, user="postgres", dbname="postgres")
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
