"""Python IntelliSense end to end: the platform's ``/w/<uuid>/lsp/...`` routes, real bubblewrap
sandboxes, their agents and a real pylsp with ruff, spoken to as the IDE does."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError

from tests.client import Client
from tests.lsp_client import LspClient, diagnostic_codes, position
from tests.test_terminals import (  # noqa: F401 (close_terminals: a fixture)
    Terminal,
    close_terminals,
    open_terminal,
)
from tests.waiting import until

TokenClientFactory = Callable[..., Awaitable[Client]]
OPENED: list[LspClient] = []

LIB = 'def helper(x):\n    """Double it."""\n    return 2 * x\n'
MAIN = "from lib import helper\n\nprint(helper(2))\n"


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    """Close every socket a test opened."""
    yield
    while OPENED:
        OPENED.pop().close()


async def workspace(make_user: Any, base_url: str, username: str = "alice") -> tuple[Client, str]:
    """A user's token client, and a workspace of theirs with lib.py and main.py, running."""
    browser = await make_user(username)
    ws = (await browser.post("/api/workspaces", {"name": "lsp"})).json["uuid"]
    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    api = Client(base_url, token=token)
    for name, text in (("lib.py", LIB), ("main.py", MAIN)):
        saved = await api.request(
            "PUT",
            f"/w/{ws}/api/contents/{name}",
            {"type": "file", "format": "text", "content": text},
        )
        assert saved.status in {200, 201}, saved.body
    started = await api.post(f"/api/workspaces/{ws}/sandbox")
    assert started.status == 200, started.body
    return api, ws


def socket_url(base_url: str, ws: str, name: str = "pylsp") -> str:
    return base_url.replace("http", "ws", 1) + f"/w/{ws}/lsp/ws/{name}"


async def connect(base_url: str, api: Client, ws: str, name: str = "pylsp") -> LspClient:
    client = await LspClient.connect(
        HTTPRequest(socket_url(base_url, ws, name), headers={"Authorization": f"token {api.token}"})
    )
    OPENED.append(client)
    return client


def at(client: LspClient, path: str, text: str, needle: str, offset: int) -> dict[str, Any]:
    """``textDocument`` and ``position`` params for ``needle`` (+ ``offset``) in a file."""
    return {"textDocument": {"uri": client.uri(path)}, "position": position(text, needle, offset)}


async def test_completion_hover_and_ruff_diagnostics(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    client = await connect(base_url, api, ws)
    capabilities = (await client.initialize())["result"]["capabilities"]
    for provider in ("hoverProvider", "signatureHelpProvider", "renameProvider"):
        assert provider in capabilities
    # Documentation comes with completionItem/resolve (docs/api.md).
    assert capabilities["completionProvider"]["resolveProvider"] is True

    text = "import json\njson.du"
    await client.open("scratch.py", text)
    reply = await client.request("textDocument/completion", at(client, "scratch.py", text, "du", 2))
    [dumps] = [item for item in reply["result"]["items"] if item["insertText"] == "dumps"]
    resolved = (await client.request("completionItem/resolve", dumps))["result"]
    assert "Serialize ``obj`` to a JSON formatted ``str``" in resolved["documentation"]["value"]

    text = "import json\njson.dumps({})\n"
    await client.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": client.uri("scratch.py"), "version": 2},
            "contentChanges": [{"text": text}],
        },
    )
    hover = await client.request("textDocument/hover", at(client, "scratch.py", text, "dumps", 1))
    assert "Serialize ``obj``" in hover["result"]["contents"]["value"]

    await client.open("bad.py", "import os\n\nprint(undefined_name)\n")
    note = await client.notification(
        "textDocument/publishDiagnostics", lambda p: p["uri"] == client.uri("bad.py")
    )
    assert {"F401", "F821"} <= diagnostic_codes(note)
    assert {d["source"] for d in note["params"]["diagnostics"]} == {"ruff"}
    await client.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": client.uri("bad.py"), "version": 2},
            "contentChanges": [{"text": "import os\n\nprint(os.sep)\n"}],
        },
    )
    await client.notification(
        "textDocument/publishDiagnostics",
        lambda p: p["uri"] == client.uri("bad.py") and not p["diagnostics"],
    )


async def test_definition_rename_and_formatting_across_files(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    client = await connect(base_url, api, ws)
    await client.initialize()
    await client.open("main.py", MAIN)

    reply = await client.request(
        "textDocument/definition", at(client, "main.py", MAIN, "helper(2", 1)
    )
    assert [(d["uri"], d["range"]["start"]["line"]) for d in reply["result"]] == [
        (client.uri("lib.py"), 0)
    ]

    renamed = await client.request(
        "textDocument/rename", {**at(client, "main.py", MAIN, "helper(2", 1), "newName": "twice"}
    )
    edits = {
        change["textDocument"]["uri"]: "".join(e["newText"] for e in change["edits"])
        for change in renamed["result"]["documentChanges"]
    }
    assert edits == {
        client.uri("lib.py"): LIB.replace("helper", "twice"),
        client.uri("main.py"): MAIN.replace("helper", "twice"),
    }

    await client.open("messy.py", "x=1\nimport   os\n")
    formatted = await client.request(
        "textDocument/formatting",
        {
            "textDocument": {"uri": client.uri("messy.py")},
            "options": {"tabSize": 4, "insertSpaces": True},
        },
    )
    assert [e["newText"] for e in formatted["result"]] == ["x = 1\nimport os\n"]


async def test_two_clients_get_only_their_own_replies(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    first, second = await connect(base_url, api, ws), await connect(base_url, api, ws)
    await first.initialize()
    await second.initialize()
    texts = {first: ("a.py", "import json\njson.du"), second: ("b.py", "import os\nos.getc")}
    for client, (path, text) in texts.items():
        await client.open(path, text)
    for client, (path, text) in texts.items():
        params = at(client, path, text, "\n", len(text.split("\n")[1]) + 1)
        await client.send({"id": 1, "method": "textDocument/completion", "params": params})
    for client, (path, _) in texts.items():
        labels = [i["insertText"] for i in (await client.reply(1))["result"]["items"]]
        assert ("dumps" if path == "a.py" else "getcwd") in labels
        assert ("getcwd" if path == "a.py" else "dumps") not in labels
    status = (await api.get(f"/w/{ws}/lsp/status")).json
    assert status["sessions"]["pylsp"]["handler_count"] == 2


async def test_status_says_whether_the_sandbox_runs(
    make_user: Any, make_token_client: TokenClientFactory, base_url: str
) -> None:
    browser = await make_user()
    ws = (await browser.post("/api/workspaces", {"name": "lsp"})).json["uuid"]
    stopped = await browser.get(f"/w/{ws}/lsp/status")
    assert stopped.status == 200
    assert stopped.json["sandbox_running"] is False
    assert stopped.json["sessions"] == {}
    spec = stopped.json["specs"]["pylsp"]
    assert spec["languages"] == ["python"]
    assert spec["version"] == 2
    assert "argv" not in spec
    assert "env" not in spec

    assert (await browser.post(f"/api/workspaces/{ws}/sandbox")).status == 200
    running = (await browser.get(f"/w/{ws}/lsp/status")).json
    assert running["sandbox_running"] is True
    session = running["sessions"]["pylsp"]
    assert session["status"] == "not_started"
    assert session["handler_count"] == 0
    assert session["spec"] == spec

    anonymous = await Client(base_url).get(f"/w/{ws}/lsp/status")
    assert anonymous.status == 401
    assert anonymous.json["reason"] == "unauthenticated"
    mallory = await make_token_client("mallory")
    assert (await mallory.get(f"/w/{ws}/lsp/status")).status == 404


async def test_sockets_are_refused_before_the_upgrade(
    make_user: Any, make_token_client: TokenClientFactory, base_url: str
) -> None:
    browser = await make_user()
    ws = (await browser.post("/api/workspaces", {"name": "lsp"})).json["uuid"]
    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    api = Client(base_url, token=token)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="

    not_running = await api.get(f"/w/{ws}/lsp/ws/pylsp", headers=upgrade)
    assert not_running.status == 404
    assert "not running" in not_running.json["message"]
    assert (await api.post(f"/api/workspaces/{ws}/sandbox")).status == 200

    anonymous = await Client(base_url).get(f"/w/{ws}/lsp/ws/pylsp", headers=upgrade)
    assert anonymous.status == 401
    assert anonymous.json["reason"] == "unauthenticated"
    unknown = await api.get(f"/w/{ws}/lsp/ws/pyright", headers=upgrade)
    assert unknown.status == 404
    assert unknown.json["message"] == "No language server named 'pyright'."
    mallory = await make_token_client("mallory")
    refused = await mallory.get(f"/w/{ws}/lsp/ws/pylsp", headers=upgrade)
    assert refused.status == 404

    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    evil = HTTPRequest(
        socket_url(base_url, ws), headers={"Cookie": cookie, "Origin": "https://evil.example"}
    )
    with pytest.raises(HTTPClientError) as forbidden:
        await LspClient.connect(evil)
    assert forbidden.value.code == 403
    same_site = HTTPRequest(
        socket_url(base_url, ws), headers={"Cookie": cookie, "Origin": base_url}
    )
    client = await LspClient.connect(same_site)
    OPENED.append(client)
    assert "capabilities" in (await client.initialize())["result"]


async def test_bad_frames_close_the_socket(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    frames: list[tuple[str | bytes, int]] = [
        (b"\x01", 1003),
        ("not json", 1007),
        (json.dumps({"id": 1, "method": "initialize"}), 1007),
        (json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {}}), 1007),
    ]
    for frame, code in frames:
        client = await connect(base_url, api, ws)
        with contextlib.suppress(WebSocketClosedError):
            await client.conn.write_message(frame, binary=isinstance(frame, bytes))
        closed_code, reason = await client.closed()
        assert closed_code == code, (frame, reason)
        assert reason
    sandbox = (await api.get(f"/api/workspaces/{ws}/sandbox")).json
    assert sandbox["state"] == "running"


async def kill_language_server(terminal: Terminal) -> None:
    """SIGKILL the sandbox's pylsp from a terminal in it (as a user could)."""
    await terminal.run(
        "for p in /proc/[0-9]*; do "
        "tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q -- '-m pylsp' && kill -9 ${p#/proc/}; "
        "done",
        "KILLED",
    )


async def test_a_killed_server_closes_the_sockets_and_a_new_socket_works(
    make_user: Any, base_url: str
) -> None:
    api, ws = await workspace(make_user, base_url)
    client = await connect(base_url, api, ws)
    await client.initialize()
    _, terminal = await open_terminal(base_url, ws, api.token or "")
    await kill_language_server(terminal)
    assert await client.closed() == (1012, "language server restarted: it exited")

    again = await connect(base_url, api, ws)
    await again.initialize()
    text = "import json\njson.du"
    await again.open("scratch.py", text)
    reply = await again.request("textDocument/completion", at(again, "scratch.py", text, "du", 2))
    assert "dumps" in [item["insertText"] for item in reply["result"]["items"]]


@pytest.mark.parametrize(
    "jp_server_config", [{"Spawner": {"language_server_memory_limit": 1048576}}]
)
async def test_a_server_over_its_memory_limit_is_restarted_not_the_sandbox(
    make_user: Any, base_url: str
) -> None:
    api, ws = await workspace(make_user, base_url)
    client = await connect(base_url, api, ws)
    assert await client.closed() == (1012, "language server restarted: it used more than 1 MiB")
    assert (await api.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "running"
    _, terminal = await open_terminal(base_url, ws, api.token or "")
    assert "alive" in await terminal.run("echo alive", "DONE")
    again = await connect(base_url, api, ws)
    assert (await again.closed())[0] == 1012


@pytest.mark.parametrize("jp_server_config", [{"Spawner": {"language_server_idle_timeout": 0.5}}])
async def test_a_server_without_clients_stops(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    client = await connect(base_url, api, ws)
    await client.initialize()
    client.close()

    async def stopped() -> bool:
        session = (await api.get(f"/w/{ws}/lsp/status")).json["sessions"]["pylsp"]
        return bool(session["status"] == "stopped" and session["handler_count"] == 0)

    await until(stopped, "the idle language server stopped")
    again = await connect(base_url, api, ws)
    assert "capabilities" in (await again.initialize())["result"]
