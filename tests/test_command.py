"""The ``platform-server`` command: start-up on an embedded PostgreSQL, and ``create-user``."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from extensions.sandboxes.spawners.local import LocalSpawner
from tests.client import Client
from tests.waiting import until

COMMAND = [sys.executable, "-m", "platform_server"]


def create_user(database_url: str, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [*COMMAND, "create-user", *args, f"--PlatformApp.db_url={database_url}"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_create_admin_from_stdin(database_url: str, base_url: str) -> None:
    result = create_user(database_url, "--admin", "Root", password="admin password")
    assert result.returncode == 0, result.stderr
    assert "Created administrator root" in result.stdout

    admin = Client(base_url)
    login = await admin.post(
        "/api/accounts/login", {"username": "root", "password": "admin password"}
    )
    assert login.status == 200
    assert login.json["is_admin"] is True
    assert (await admin.get("/api/admin/users")).status == 200


def test_create_user_refuses_bad_input(database_url: str) -> None:
    short = create_user(database_url, "bob", password="short")
    assert short.returncode != 0
    assert "password must be at least 8 characters" in short.stderr
    bad_name = create_user(database_url, "no spaces allowed", password="long enough")
    assert bad_name.returncode != 0
    assert "username must be" in bad_name.stderr
    assert create_user(database_url, "bob", password="long enough").returncode == 0
    taken = create_user(database_url, "BOB", password="long enough")
    assert taken.returncode != 0
    assert "taken" in taken.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Browserless:
    """urllib with a cookie jar, for talking to a server in another process."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        xsrf = next((c.value for c in self.jar if c.name == "_xsrf"), None)
        if xsrf:
            request.add_header("X-XSRFToken", xsrf)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with self.opener.open(request, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def lower_open_files_limit() -> None:
    """In the child: a soft limit of 256 open descriptors, the hard one unchanged."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def open_files_limits(pid: int) -> list[int]:
    """The soft and hard limits on open descriptors of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return [int(n) for n in line.split()[3:5]]
    msg = "no open files line"
    raise AssertionError(msg)


@pytest.mark.slow
async def test_command_starts_on_embedded_postgres_and_stops_it(tmp_path: Path) -> None:
    """What `make run` does on a fresh machine: no DATABASE_URL, PostgreSQL embedded."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    server = subprocess.Popen(  # noqa: ASYNC220  (a server to test; polled, never awaited)
        [*COMMAND, f"--port={port}", f"--PlatformApp.data_dir={data_dir}", "--ip=127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lower_open_files_limit,
    )
    try:
        http = Browserless(f"http://127.0.0.1:{port}")

        def healthy() -> bool:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                return http.call("GET", "/api/health")[0] == 200
            except OSError:
                return False

        await until(healthy, "the platform answers", interval=0.1)
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        # Started with a soft limit of 256 open descriptors, it raised it to its hard limit:
        # each open terminal holds several, and 1024 would stop it at a few hundred.
        assert open_files_limits(server.pid) == [resource.getrlimit(resource.RLIMIT_NOFILE)[1]] * 2

        user = {"username": "dana", "password": "long enough"}
        assert http.call("POST", "/api/accounts/register", user)[0] == 201
        assert http.call("POST", "/api/accounts/login", user)[0] == 200
        status, token = http.call("POST", "/api/accounts/tokens", {"name": "laptop"})
        assert status == 201
        api = Browserless(http.base)
        auth = {"Authorization": f"token {token['token']}"}
        status, me = api.call("GET", "/api/accounts/me", headers=auth)
        assert (status, me["username"]) == (200, "dana")
        assert http.call("DELETE", f"/api/accounts/tokens/{token['id']}")[0] == 204
        assert api.call("GET", "/api/accounts/me", headers=auth)[0] == 401
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        # Its warm pool's sandboxes outlive it, by design; not this test.
        await stop_sandboxes(data_dir)
    assert server.returncode is not None
    assert "password" not in output.lower().replace("password_hash", "")
    assert token["token"] not in output
    # The embedded server stopped with the platform.
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), output


async def stop_sandboxes(data_dir: Path) -> None:
    spawner = LocalSpawner(data_dir=str(data_dir))
    for handle in await spawner.find_running():
        await spawner.stop(handle)
