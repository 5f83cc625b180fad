"""A hung sandbox never fails what already succeeded: real sandboxes, their agent really stopped
(SIGSTOP), saves committed and answered, agent calls answered 504, the sandbox marked
unresponsive, then caught up when it answers again or replaced when it does not."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.spawners.local import LocalSpawner
from extensions.sandboxes.spawners.local_state import STATE_NAME
from platform_server.app import PlatformApp
from tests.client import Client, Response
from tests.test_sync import contents, until_get
from tests.test_terminals import (  # noqa: F401
    OPENED,
    Terminal,
    close_terminals,
    open_terminal,
    workspace_with_token,
)

# Short enough that a stopped agent is noticed within a few seconds; long enough that a busy
# test machine's agents answer.
REQUEST_TIMEOUT = 2.0


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {
        "Sandboxes": {
            "agent_request_timeout": REQUEST_TIMEOUT,
            "health_interval": 0.3,
            "health_misses": 2,
            "unresponsive_timeout": 0,  # the replacement test turns it on
        }
    }


STOPPED: list[int] = []


@pytest.fixture(autouse=True)
def resume_agents() -> Iterator[None]:
    """A test that fails while an agent is stopped leaves it resumable, then stoppable."""
    yield
    while STOPPED:
        with contextlib.suppress(ProcessLookupError):
            os.kill(STOPPED.pop(), signal.SIGCONT)


def sandboxes_of(app: PlatformApp) -> Sandboxes:
    sandboxes: Sandboxes = app.web_app.settings["sandboxes"]
    return sandboxes


async def stop_agent(app: PlatformApp) -> int:
    """SIGSTOP the agent of the only sandbox (its pid as the local spawner's state.json has
    it); return the pid."""
    spawner = sandboxes_of(app).spawner
    assert isinstance(spawner, LocalSpawner)
    (handle,) = await spawner.find_running()
    state = json.loads((spawner.sandbox_dir(handle.sandbox_id) / STATE_NAME).read_text())
    pid = int(state["agent_pid"])
    os.kill(pid, signal.SIGSTOP)
    STOPPED.append(pid)
    return pid


def resume_agent(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
    STOPPED.remove(pid)


def assert_unresponsive(response: Response) -> None:
    """The 504 JSON answer of an agent call to a hung sandbox."""
    assert response.status == 504, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json["reason"] == "sandbox_unresponsive"
    assert response.json["message"].startswith("The sandbox is not responding")


def sandbox_path(ws: str) -> str:
    return f"/api/workspaces/{ws}/sandbox"


async def test_a_stopped_agent_fails_no_save_and_catches_up_when_it_answers(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    name, terminal = await open_terminal(base_url, ws, token)
    await terminal.run("echo ready", "READY")
    pid = await stop_agent(jp_serverapp)

    saved = await api.request(
        "PUT", contents(ws, "notes.txt"), {"type": "file", "format": "text", "content": "hung"}
    )
    assert saved.status == 201, saved.body
    stored = await api.get(contents(ws, "notes.txt"))
    assert stored.status == 200
    assert stored.json["content"] == "hung"

    assert_unresponsive(await api.get(f"/w/{ws}/api/terminals"))
    assert_unresponsive(await api.post(f"/w/{ws}/api/terminals"))
    assert_unresponsive(await api.get(f"/w/{ws}/api/kernels"))

    model = await until_get(api, sandbox_path(ws), lambda r: r.json["state"] == "unresponsive")
    assert "not responding" in model.json["reason"]
    pending = await until_get(
        api, sandbox_path(ws), lambda r: [f["path"] for f in r.json["not_synced"]] == ["notes.txt"]
    )
    assert "not yet copied into the sandbox" in pending.json["not_synced"][0]["reason"]
    # Marked unresponsive: agent calls now fail at once, saves still succeed.
    assert_unresponsive(await api.get(f"/w/{ws}/api/terminals"))
    saved = await api.request(
        "PUT", contents(ws, "later.txt"), {"type": "file", "format": "text", "content": "later"}
    )
    assert saved.status == 201, saved.body

    ws_base = base_url.replace("http", "ws", 1) + f"/w/{ws}"
    for path in (f"/terminals/websocket/{name}", f"/api/kernels/{uuid.uuid4()}/channels"):
        socket = await websocket_connect(f"{ws_base}{path}?token={token}")
        OPENED.append(socket)
        assert await socket.read_message() is None
        assert socket.close_code == 1013, path
        assert "not responding" in (socket.close_reason or "")

    resume_agent(pid)
    await until_get(
        api,
        sandbox_path(ws),
        lambda r: r.json["state"] == "running" and r.json["not_synced"] == [],
    )
    again = await Terminal.open(base_url, f"/w/{ws}/terminals/websocket/{name}", token)
    shown = await again.run("cat notes.txt later.txt", "CAUGHT")
    assert "hung" in shown
    assert "later" in shown
    listed = await api.get(f"/w/{ws}/api/terminals")
    assert listed.status == 200
    # (The open that timed out may have been carried out once the agent ran again.)
    assert name in [t["name"] for t in listed.json]


async def test_a_sandbox_unresponsive_too_long_is_replaced(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    _, terminal = await open_terminal(base_url, ws, token)
    await terminal.run("echo ready", "READY")
    sandboxes = sandboxes_of(jp_serverapp)
    (old,) = await sandboxes.spawner.find_running()
    await stop_agent(jp_serverapp)
    sandboxes.unresponsive_timeout = 1.0

    saved = await api.request(
        "PUT", contents(ws, "kept.txt"), {"type": "file", "format": "text", "content": "kept"}
    )
    assert saved.status == 201, saved.body
    failed = await until_get(
        api, sandbox_path(ws), lambda r: r.json["state"] == "failed", within=60
    )
    assert "stopped responding" in failed.json["reason"]
    assert await sandboxes.spawner.find_running() == []
    assert not await sandboxes.spawner.poll(old)

    created = await api.post(f"/w/{ws}/api/terminals")
    assert created.status == 200, created.body
    fresh = await Terminal.open(
        base_url, f"/w/{ws}/terminals/websocket/{created.json['name']}", token
    )
    assert "kept" in await fresh.run("cat kept.txt", "FRESH")
    (new,) = await sandboxes.spawner.find_running()
    assert new.sandbox_id != old.sandbox_id
    model = await api.get(sandbox_path(ws))
    assert model.json["state"] == "running"
    assert model.json["not_synced"] == []
