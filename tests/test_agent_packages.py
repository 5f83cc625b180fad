"""The agent's side of packages, run for real: the workspace venv, the loopback index relayed
over ``WS /api/packages`` (the test plays the platform), and environment reports."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.test_agent import TOKEN, Agent, start, wait_listening
from tests.test_packages import build_wheel

ID = struct.Struct(">I")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def index_port() -> int:
    return free_port()


@pytest.fixture
def agent(tmp_path: Path, index_port: int) -> Iterator[Agent]:
    """An agent with the workspace venv and the loopback index."""
    where = ["--port", "0", "--workspace-env", f"--package-index-port={index_port}"]
    proc, root, log = start(tmp_path, *where)
    running = Agent(proc, root, log, wait_listening(proc, log))
    yield running
    running.close()
    assert "Traceback" not in log.read_text(), log.read_text()


async def index(port: int, method: str, path: str) -> HTTPResponse:
    """A request to the loopback index, as pip makes it."""
    request = HTTPRequest(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        body=b"x" if method in ("POST", "PUT", "PATCH") else None,
        allow_nonstandard_methods=True,
        request_timeout=30,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def platform(agent: Agent, token: str | None = TOKEN) -> WebSocketClientConnection:
    request = HTTPRequest(f"ws://{agent.host}/api/packages", headers=agent.headers(token))
    return await websocket_connect(request)


async def run(*args: str) -> tuple[int, str]:
    """Run a program without blocking the loop the agent's clients use; its status and output."""
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def answer(
    conn: WebSocketClientConnection,
    request_id: int,
    head: tuple[int, str, dict[str, str]],
    *chunks: bytes,
    end: str | None = "end",
) -> None:
    """Answer a relayed request as the platform does: the head (status, reason, headers), the
    body's chunks, then ``end`` (or ``abort``, or nothing)."""
    status, reason, headers = head
    response = {"type": "response", "id": request_id, "status": status, "reason": reason}
    await conn.write_message(json.dumps({**response, "headers": headers}))
    for chunk in chunks:
        await conn.write_message(ID.pack(request_id) + chunk, binary=True)
    if end is not None:
        await conn.write_message(json.dumps({"type": end, "id": request_id}))


async def next_frame(conn: WebSocketClientConnection, kind: str) -> dict[str, Any]:
    """The next JSON frame of ``kind`` (others are skipped)."""
    while True:
        raw = await asyncio.wait_for(conn.read_message(), 30)
        assert raw is not None, "the package channel closed"
        frame = json.loads(raw)
        if frame.get("type") == kind:
            return dict(frame)


async def test_the_venv_sees_the_base_packages_and_pip_points_at_the_relay(
    agent: Agent, index_port: int
) -> None:
    python = agent.root / ".venv" / "bin" / "python"
    status, out = await run(str(python), "-c", "import sys, tornado; print(sys.prefix)")
    assert status == 0, out
    assert out.strip() == str(agent.root / ".venv")
    conf = (agent.root / ".venv" / "pip.conf").read_text()
    assert f"index-url = http://127.0.0.1:{index_port}/index/" in conf


async def test_without_a_platform_the_index_says_so_and_refuses_writes(
    agent: Agent, index_port: int
) -> None:
    unreachable = await index(index_port, "GET", "/index/requests/")
    assert unreachable.code == 503
    assert "no connection to the platform" in (unreachable.reason or "")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        refused = await index(index_port, method, "/index/requests/")
        assert refused.code == 405, method
        assert refused.headers["Allow"] == "GET, HEAD"
    assert (await index(index_port, "GET", "/cache/list")).code == 404


async def test_the_channel_needs_the_token(agent: Agent) -> None:
    with pytest.raises(Exception, match="401"):
        await platform(agent, token="wrong-token-0123456789")


async def test_requests_are_relayed_to_the_platform_and_answered_in_order(
    agent: Agent, index_port: int
) -> None:
    conn = await platform(agent)
    pending = asyncio.ensure_future(index(index_port, "GET", "/index/tinypkg/?format=x"))
    request = await next_frame(conn, "request")
    assert request["method"] == "GET"
    assert request["path"] == "/index/tinypkg/?format=x"
    head = (200, "OK", {"Content-Type": "text/html"})
    await answer(conn, request["id"], head, b"<html>", b"</html>")
    page = await pending
    assert page.code == 200
    assert page.body == b"<html></html>"
    assert page.headers["Content-Type"] == "text/html"

    # The platform's refusal reaches pip with its reason phrase.
    pending = asyncio.ensure_future(index(index_port, "GET", "/index/x/x-1.whl"))
    request = await next_frame(conn, "request")
    reason = "Package 'x' is not allowed by this platform's package policy"
    await answer(conn, request["id"], (403, reason, {}))
    refused = await pending
    assert refused.code == 403
    assert refused.reason == reason
    conn.close()


async def test_a_platform_gone_mid_answer_cuts_the_download_off(
    agent: Agent, index_port: int
) -> None:
    conn = await platform(agent)
    pending = asyncio.ensure_future(index(index_port, "GET", "/index/big/big-1.whl"))
    request = await next_frame(conn, "request")
    await answer(conn, request["id"], (200, "OK", {"Content-Length": "1000"}), b"x" * 10, end=None)
    conn.close()
    with pytest.raises(HTTPClientError, match="Connection closed"):
        await pending


async def test_installs_and_uninstalls_are_reported_until_acknowledged(
    agent: Agent, tmp_path: Path
) -> None:
    conn = await platform(agent)
    filename, data = build_wheel("tinypkg", "1.0", "42")
    wheel = tmp_path / filename
    wheel.write_bytes(data)
    pip = agent.root / ".venv" / "bin" / "pip"
    status, out = await run(str(pip), "install", "--no-index", "--quiet", str(wheel))
    assert status == 0, out
    report = await next_frame(conn, "environment")
    assert [(d["name"], d["version"]) for d in report["installed"]] == [("tinypkg", "1.0")]
    assert report["installed"][0]["source"].startswith("file://")
    assert report["removed"] == []

    # Not acknowledged: the next connection gets it again; acknowledged, never more.
    conn.close()
    conn = await platform(agent)
    again = await next_frame(conn, "environment")
    assert again["seq"] == report["seq"]
    await conn.write_message(json.dumps({"type": "ack", "seq": again["seq"]}))

    status, out = await run(str(pip), "uninstall", "--yes", "--quiet", "tinypkg")
    assert status == 0, out
    report = await next_frame(conn, "environment")
    assert report["installed"] == []
    assert report["removed"] == ["tinypkg"]
    await conn.write_message(json.dumps({"type": "ack", "seq": report["seq"]}))
    conn.close()
    conn = await platform(agent)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.read_message(), 1.5)
    conn.close()


async def test_install_without_the_venv_is_a_404(tmp_path: Path) -> None:
    proc, root, log = start(tmp_path, "--port", "0")
    plain = Agent(proc, root, log, wait_listening(proc, log))
    try:
        missing = await plain.fetch("POST", "/api/packages/install", json_body={"packages": []})
        assert missing.code == 404
        assert "--workspace-env" in json.loads(missing.body)["message"]
    finally:
        plain.close()


async def test_an_aborted_answer_cuts_the_download_off_and_the_channel_goes_on(
    agent: Agent, index_port: int
) -> None:
    conn = await platform(agent)
    pending = asyncio.ensure_future(index(index_port, "GET", "/index/big/big-1.whl"))
    request = await next_frame(conn, "request")
    head = (200, "OK", {"Content-Length": "1000"})
    await answer(conn, request["id"], head, b"x" * 10, end="abort")
    with pytest.raises(HTTPClientError, match="Connection closed"):
        await pending
    # The same channel answers the next request.
    pending = asyncio.ensure_future(index(index_port, "GET", "/index/small/"))
    request = await next_frame(conn, "request")
    await answer(conn, request["id"], (200, "OK", {}), b"ok")
    assert (await pending).body == b"ok"
    conn.close()


def inotify_instances(pid: int) -> int:
    """How many inotify instances process ``pid`` holds."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        links = [str(fd.readlink()) for fd in fds.iterdir()]
    except PermissionError:
        pytest.skip("the agent forbids inspection: reading its descriptors needs root")
    return links.count("anon_inode:inotify")


async def test_files_and_packages_are_watched_with_one_inotify_instance(
    agent: Agent, tmp_path: Path
) -> None:
    """Linux caps inotify instances per user (128 by default) and every sandbox on a machine
    counts against one user's cap: an agent with two would halve the sandboxes a machine holds."""
    conn = await platform(agent)
    (agent.root / "watched").mkdir()
    filename, data = build_wheel("tinypkg", "1.0", "42")
    (tmp_path / filename).write_bytes(data)
    pip = agent.root / ".venv" / "bin" / "pip"
    status, out = await run(str(pip), "install", "--no-index", "--quiet", str(tmp_path / filename))
    assert status == 0, out
    report = await next_frame(conn, "environment")
    assert [d["name"] for d in report["installed"]] == ["tinypkg"]
    assert inotify_instances(agent.proc.pid) == 1
    conn.close()
