"""pip install in sandboxes without a network: real pip and uv in real sandboxes, through the
agent's loopback relay and the platform's embedded package cache (proxpi), from an upstream
index this module serves itself, with a wheel it builds (no internet needed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.websocket import websocket_connect

from platform_server.app import PlatformApp
from tests.client import Client
from tests.kernel_client import KernelSocket
from tests.test_agent_kernels import close_sockets  # noqa: F401 (fixture: kernel sockets)
from tests.test_sandbox_lifecycle import fill_warm_pool
from tests.test_terminals import (  # noqa: F401 (close_terminals: a fixture)
    Terminal,
    close_terminals,
    open_terminal,
    workspace_with_token,
)
from tests.waiting import until

DENIED = "forbidden-pkg"


def build_wheel(name: str, version: str, value: str) -> tuple[str, bytes]:
    """A pure-Python wheel of project ``name`` whose module has ``VALUE = value``."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VALUE = {value!r}\n".encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue()


@dataclass
class Upstream:
    """A PEP 503 simple index with a few wheels, counting the requests it gets."""

    url: str = ""
    wheels: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def add(self, name: str, version: str, value: str) -> None:
        filename, data = build_wheel(name, version, value)
        self.wheels.setdefault(name, {})[filename] = data

    def file_requests(self, filename: str) -> int:
        return sum(1 for path in self.requests if path.endswith(filename))


class ProjectPage(web.RequestHandler):
    def get(self, project: str) -> None:
        upstream: Upstream = self.settings["upstream"]
        upstream.requests.append(self.request.path)
        files = upstream.wheels.get(project)
        if files is None:
            raise web.HTTPError(404)
        links = "".join(
            f'<a href="/files/{name}#sha256={hashlib.sha256(data).hexdigest()}">{name}</a>\n'
            for name, data in files.items()
        )
        self.finish(f"<!DOCTYPE html><html><body>{links}</body></html>")


class FileDownload(web.RequestHandler):
    def get(self, filename: str) -> None:
        upstream: Upstream = self.settings["upstream"]
        upstream.requests.append(self.request.path)
        for files in upstream.wheels.values():
            if filename in files:
                self.set_header("Content-Type", "application/octet-stream")
                self.finish(files[filename])
                return
        raise web.HTTPError(404)


class ProjectList(web.RequestHandler):
    def get(self) -> None:
        upstream: Upstream = self.settings["upstream"]
        links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in upstream.wheels)
        self.finish(f"<!DOCTYPE html><html><body>{links}</body></html>")


@pytest.fixture
def upstream(jp_asyncio_loop: Any) -> Iterator[Upstream]:
    upstream = Upstream()
    for name, value in (("tinypkg", "42"), ("otherpkg", "7"), (DENIED, "no")):
        upstream.add(name, "1.0", value)
    app = web.Application(
        [
            (r"/simple/", ProjectList),
            (r"/simple/([^/]+)/", ProjectPage),
            (r"/files/([^/]+)", FileDownload),
        ],
        upstream=upstream,
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    upstream.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/simple/"
    yield upstream
    server.stop()


@pytest.fixture
def jp_server_config(
    upstream: Upstream, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """The module's upstream and deny list, and a test's ``package_index`` marker's traits."""
    marker = request.node.get_closest_marker("package_index")
    return {
        "PackageIndex": {
            "upstream_url": upstream.url,
            "cache_dir": str(tmp_path / "package-cache"),
            "deny": [DENIED],
            **(marker.kwargs if marker else {}),
        }
    }


async def recorded(api: Client, ws: str) -> list[dict[str, Any]]:
    response = await api.get(f"/api/workspaces/{ws}/packages")
    assert response.status == 200, response.body
    return list(response.json)


async def restart_sandbox(
    base_url: str, api: Client, ws: str, token: str
) -> tuple[Terminal, list[str]]:
    """Stop the workspace's sandbox, and open a terminal in a new one; the start's progress
    messages, as the workspace's event stream told them."""
    assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/events?token={token}"
    events = await websocket_connect(url)
    _, terminal = await open_terminal(base_url, ws, token)
    messages = []
    while (raw := await asyncio.wait_for(events.read_message(), 30)) is not None:
        event = json.loads(raw)
        if event.get("type") == "sandbox":
            messages.append(str(event.get("message")))
            if event.get("state") == "running":
                break
    events.close()
    return terminal, messages


def downloads() -> float:
    return REGISTRY.get_sample_value("platform_package_downloads_total") or 0.0


async def test_pip_install_works_is_recorded_and_comes_back_in_a_new_sandbox(
    make_user: Any, base_url: str, upstream: Upstream, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    _, terminal = await open_terminal(base_url, ws, token)
    before = downloads()

    out = await terminal.run("pip install tinypkg", "INSTALLED")
    assert "Successfully installed tinypkg-1.0" in out, out
    out = await terminal.run('python -c "import tinypkg; print(tinypkg.VALUE * 2)"', "IMPORTED")
    assert "4242" in out, out
    assert upstream.file_requests("tinypkg-1.0-py3-none-any.whl") == 1
    assert downloads() == before + 1

    # A kernel of the workspace imports it too.
    kernel = (await api.post(f"/w/{ws}/api/kernels", {"name": "python3"})).json
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/kernels/{kernel['id']}/channels"
    socket = await KernelSocket.open(f"{url}?token={token}")
    reply = await socket.execute("import tinypkg; print(tinypkg.VALUE)")
    assert reply.stdout.strip() == "42", reply
    socket.close()

    async def listed() -> list[dict[str, Any]] | None:
        packages = await recorded(api, ws)
        return packages or None

    packages = await until(listed, "the install is recorded")
    assert packages == [{"name": "tinypkg", "version": "1.0", "source": None}]

    # The trail names the workspace, its owner and the file.
    db = jp_serverapp.web_app.settings["sandboxes"].db
    async with db.connection() as conn:
        cur = await conn.execute(
            """SELECT project, version, filename, bytes FROM package_downloads
               WHERE workspace_id = %s""",
            [ws],
        )
        trail = await cur.fetchall()
    assert [(r["project"], r["version"], r["filename"]) for r in trail] == [
        ("tinypkg", "1.0", "tinypkg-1.0-py3-none-any.whl")
    ]

    # A new sandbox has it again, installed before the workspace opened.
    terminal, progress = await restart_sandbox(base_url, api, ws, token)
    assert "Installing your packages: tinypkg 1.0" in progress, progress
    out = await terminal.run('python -c "import tinypkg; print(tinypkg.VALUE)"', "AGAIN")
    assert "42" in out, out
    assert "Error" not in out, out

    # Uninstalling is remembered too.
    out = await terminal.run("pip uninstall -y tinypkg", "REMOVED")
    assert "Successfully uninstalled tinypkg-1.0" in out, out
    await until(lambda: _empty(api, ws), "the uninstall is recorded")
    terminal, progress = await restart_sandbox(base_url, api, ws, token)
    assert not any("packages" in message for message in progress), progress
    out = await terminal.run('python -c "import tinypkg"', "GONE")
    assert "ModuleNotFoundError" in out, out


async def _empty(api: Client, ws: str) -> bool:
    return not await recorded(api, ws)


async def test_second_install_comes_from_the_cache_and_workspaces_are_apart(
    make_user: Any, base_url: str, upstream: Upstream
) -> None:
    _, first_ws, first_token = await workspace_with_token(make_user)
    _, first = await open_terminal(base_url, first_ws, first_token)
    out = await first.run("pip install otherpkg", "FIRST")
    assert "Successfully installed otherpkg-1.0" in out, out

    _, second_ws, second_token = await workspace_with_token(lambda: make_user("bob"))
    _, second = await open_terminal(base_url, second_ws, second_token)
    out = await second.run('python -c "import otherpkg"', "APART")
    assert "ModuleNotFoundError" in out, out
    out = await second.run("uv pip install --color never otherpkg", "SECOND")
    assert "+ otherpkg==1.0" in out, out
    out = await second.run('python -c "import otherpkg; print(otherpkg.VALUE)"', "USED")
    assert "7" in out, out
    assert "Error" not in out, out
    assert upstream.file_requests("otherpkg-1.0-py3-none-any.whl") == 1


PROBE = """
import urllib.error, urllib.request
def status(method, url):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return type(e).__name__
index = "http://127.0.0.1:3141"
for method in ("POST", "PUT", "DELETE", "PATCH"):
    print(method, status(method, index + "/index/tinypkg/"))
print("GET-simple", status("GET", index + "/index/tinypkg/"))
print("DELETE-cache", status("DELETE", index + "/cache/list"))
print("GET-cache", status("GET", index + "/cache/list"))
print("GET-health", status("GET", index + "/health"))
print("GET-outside", status("GET", "https://example.com/"))
print("GET-pypi", status("GET", "https://pypi.org/simple/"))
"""


async def test_the_index_is_read_only_and_nothing_else_is_reachable(
    make_user: Any, base_url: str
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    saved = await api.request(
        "PUT",
        f"/w/{ws}/api/contents/probe.py",
        {"type": "file", "format": "text", "content": PROBE},
    )
    assert saved.status in (200, 201), saved.body
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run_until("python probe.py", "GET-pypi")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert f"{method} 405" in out, out
    assert "GET-simple 200" in out, out
    assert "DELETE-cache 404" in out, out
    assert "GET-cache 404" in out, out
    assert "GET-health 404" in out, out
    # No route out: the outside is unreachable (URLError), not refused by someone.
    assert "GET-outside URLError" in out, out
    assert "GET-pypi URLError" in out, out


async def test_a_denied_project_is_refused_with_the_reason_pip_shows(
    make_user: Any, base_url: str, upstream: Upstream
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run(f"pip install {DENIED}", "REFUSED")
    assert "not allowed by this platform's package policy" in out, out
    assert "Successfully installed" not in out, out
    assert upstream.file_requests("forbidden_pkg-1.0-py3-none-any.whl") == 0


@pytest.mark.package_index(max_file_size=500)
async def test_a_file_over_the_size_limit_is_refused_with_the_reason(
    make_user: Any, base_url: str
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run("pip install tinypkg", "TOOBIG")
    assert "is larger than this platform's limit" in out, out
    assert "Successfully installed" not in out, out


@pytest.mark.package_index(bytes_per_day=1500)
async def test_a_workspace_over_its_daily_bytes_is_refused_until_later(
    make_user: Any, base_url: str
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run("pip install tinypkg", "FIRST")
    assert "Successfully installed tinypkg-1.0" in out, out
    out = await terminal.run("pip install otherpkg", "SECOND")
    assert "MB of packages for the last 24 hours" in out, out
    assert "Successfully installed" not in out, out


@pytest.mark.package_index(requests_per_second=0.01)
async def test_too_many_requests_are_refused_with_429(make_user: Any, base_url: str) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run(
        "for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code} ' "
        "http://127.0.0.1:3141/index/tinypkg/; done",
        "RATED",
    )
    assert "429" in out, out


async def test_packages_that_cannot_come_back_are_said_and_stay_recorded(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    db = jp_serverapp.web_app.settings["sandboxes"].db
    async with db.transaction() as conn:
        await conn.execute(
            """INSERT INTO workspace_packages (workspace_id, name, display_name, version)
               VALUES (%s, 'vanished', 'vanished', '9.9'), (%s, 'tinypkg', 'tinypkg', '1.0')""",
            [ws, ws],
        )
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/events?token={token}"
    events = await websocket_connect(url)
    _, terminal = await open_terminal(base_url, ws, token)

    async def notice() -> str | None:
        event = json.loads(await asyncio.wait_for(events.read_message(), 30) or "{}")
        return str(event["message"]) if event.get("type") == "packages" else None

    message = await until(notice, "a notice about the packages", interval=0)
    events.close()
    assert "vanished" in message, message
    assert "next sandbox tries again" in message, message
    assert "tinypkg" not in message, message
    out = await terminal.run('python -c "import tinypkg; print(tinypkg.VALUE)"', "KEPT")
    assert "42" in out, out
    names = [p["name"] for p in await recorded(api, ws)]
    assert names == ["tinypkg", "vanished"]

    assert (await api.delete(f"/api/workspaces/{ws}/packages/vanished")).status == 204
    assert [p["name"] for p in await recorded(api, ws)] == ["tinypkg"]
    missing = await api.delete(f"/api/workspaces/{ws}/packages/vanished")
    assert missing.status == 404, missing.body
    other = await make_user("mallory")
    assert (await other.get(f"/api/workspaces/{ws}/packages")).status == 404


async def test_a_sandbox_from_the_warm_pool_gets_the_packages_too(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run("pip install tinypkg", "INSTALLED")
    assert "Successfully installed tinypkg-1.0" in out, out
    await until(lambda: recorded(api, ws), "the install is recorded")
    assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204

    pooled = await fill_warm_pool(jp_serverapp.web_app.settings["sandboxes"])
    _, terminal = await open_terminal(base_url, ws, token)
    state = (await api.get(f"/api/workspaces/{ws}/sandbox")).json
    assert state["state"] == "running"
    out = await terminal.run('python -c "import tinypkg; print(tinypkg.VALUE)"', "POOLED")
    assert "42" in out, out
    sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    row = await sandboxes.current(uuid.UUID(ws))
    assert str(row["id"]) == pooled


class TestDeepDataFolder:
    @pytest.fixture
    def jp_server_config(self, upstream: Upstream, tmp_path: Path) -> dict[str, Any]:
        """A cache folder whose socket path would pass the 107 bytes Unix sockets allow."""
        deep = tmp_path / ("deep-folder-" * 10) / "package-cache"
        return {"PackageIndex": {"upstream_url": upstream.url, "cache_dir": str(deep)}}

    async def test_the_cache_works_from_a_folder_deeper_than_a_socket_path(
        self, make_user: Any, base_url: str
    ) -> None:
        _, ws, token = await workspace_with_token(make_user)
        _, terminal = await open_terminal(base_url, ws, token)
        out = await terminal.run("pip install tinypkg", "DEEP")
        assert "Successfully installed tinypkg-1.0" in out, out
