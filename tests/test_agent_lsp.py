"""The agent's language server bridge (``/lsp/ws/pylsp``, ``/lsp/status``) with a real agent
and a real pylsp: ids per client, one ``initialize``, documents counted per client, the
messages it drops, bad frames, a killed or oversized server, the idle stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError

from kernel_image.lsp_session import LanguageServer, LanguageServerLimits
from kernel_image.lsp_specs import ServerSpec
from tests.lsp_client import LspClient, diagnostic_codes, position
from tests.test_agent import Agent, wait_listening
from tests.test_agent_kernels import start_agent
from tests.waiting import until

OPENED: list[LspClient] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    """Close every socket a test opened."""
    yield
    while OPENED:
        OPENED.pop().close()


@pytest.fixture
def agent_args() -> list[str]:
    """Extra command-line arguments; override with ``@pytest.mark.parametrize``."""
    return []


@pytest.fixture
def agent(tmp_path: Path, agent_args: list[str]) -> Iterator[Agent]:
    """An agent on a free TCP port of 127.0.0.1, on the sandbox venv (where pylsp is)."""
    proc, root, log = start_agent(tmp_path, "--port", "0", *agent_args)
    running = Agent(proc, root, log, wait_listening(proc, log))
    yield running
    running.close()


async def connect(agent: Agent, name: str = "pylsp", token: str | None = None) -> LspClient:
    headers = agent.headers() if token is None else {"Authorization": f"token {token}"}
    request = HTTPRequest(f"ws://{agent.host}/lsp/ws/{name}", headers=headers)
    client = await LspClient.connect(request, root_uri=agent.root.as_uri())
    OPENED.append(client)
    return client


async def status(agent: Agent) -> dict[str, Any]:
    model: dict[str, Any] = (await agent.json("/lsp/status"))["sessions"]["pylsp"]
    return model


async def completion_labels(client: LspClient, path: str, text: str, after: str) -> list[str]:
    reply = await client.request(
        "textDocument/completion",
        {"textDocument": {"uri": client.uri(path)}, "position": position(text, after, len(after))},
    )
    return [item["insertText"] for item in reply["result"]["items"]]


async def test_replies_reach_only_the_client_that_asked(agent: Agent) -> None:
    first, second = await connect(agent), await connect(agent)
    assert "completionProvider" in (await first.initialize())["result"]["capabilities"]
    # The second client's initialize gets the cached answer; the server saw one.
    assert "completionProvider" in (await second.initialize())["result"]["capabilities"]
    await first.open("a.py", "import json\njson.du")
    await second.open("b.py", "import os\nos.getc")
    asks = [
        (client, path) for client, path in ((first, "a.py"), (second, "b.py")) for _ in range(3)
    ]
    # The same request id from both clients, several times, at once.
    for client, path in asks:
        await client.send(
            {
                "id": 7,
                "method": "textDocument/completion",
                "params": {
                    "textDocument": {"uri": client.uri(path)},
                    "position": {"line": 1, "character": 7},
                },
            }
        )
    for client, path in asks:
        reply = await client.reply(7)
        labels = [i["insertText"] for i in reply["result"]["items"]]
        assert ("dumps" if path == "a.py" else "getcwd") in labels
    assert not first.replies
    assert not second.replies
    assert (await status(agent))["handler_count"] == 2


async def test_documents_are_shared_and_closed_with_their_last_client(agent: Agent) -> None:
    first, second = await connect(agent), await connect(agent)
    await first.initialize()
    await second.initialize()
    # Not on disk: only the server's copy of the document answers.
    await first.open("shared.py", "value = 1\n")
    await second.open("shared.py", "import os\nvalue = 1\n")  # becomes a full-text change
    note = await first.notification(
        "textDocument/publishDiagnostics", lambda p: "F401" in diagnostic_codes({"params": p})
    )
    assert note["params"]["uri"] == first.uri("shared.py")
    await first.notify("textDocument/didClose", {"textDocument": {"uri": first.uri("shared.py")}})
    text = "import os\nvalue = 1\nos.getc"
    await second.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": second.uri("shared.py"), "version": 3},
            "contentChanges": [{"text": text}],
        },
    )
    assert "getcwd" in await completion_labels(second, "shared.py", text, "os.getc")
    # A client that leaves closes what it alone had open.
    second.close()
    await until(lambda: status_count(agent, 1), "the second client has left")
    hover = await first.request(
        "textDocument/hover",
        {"textDocument": {"uri": first.uri("shared.py")}, "position": {"line": 2, "character": 4}},
    )
    assert "getcwd" not in json.dumps(hover)


async def status_count(agent: Agent, count: int) -> bool:
    return bool((await status(agent))["handler_count"] == count)


async def test_other_languages_and_shutdown_do_not_reach_the_server(agent: Agent) -> None:
    client, other = await connect(agent), await connect(agent)
    await client.initialize()
    await client.open("notes.md", "import json\njson.dumps", language="markdown")
    hover = await client.request(
        "textDocument/hover",
        {"textDocument": {"uri": client.uri("notes.md")}, "position": {"line": 1, "character": 7}},
    )
    assert "Serialize" not in json.dumps(hover)
    # Changes and closes of a document the server never got are dropped too.
    await client.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": client.uri("notes.md"), "version": 2},
            "contentChanges": [{"text": "x"}],
        },
    )
    await client.notify("textDocument/didClose", {"textDocument": {"uri": client.uri("notes.md")}})
    assert (await client.request("shutdown", None))["result"] is None
    await client.notify("exit", None)
    text = "import json\njson.du"
    await other.open("c.py", text)
    assert "dumps" in await completion_labels(other, "c.py", text, "json.du")
    assert (await status(agent))["status"] == "started"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00binary", 1003),
        ("not json", 1007),
        ("[1, 2]", 1007),
        (json.dumps({"id": 1, "method": "initialize"}), 1007),
        (json.dumps({"jsonrpc": "2.0", "id": [1], "method": "x"}), 1007),
        (json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": 5}), 1007),
        (json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {}}), 1007),
        ("x" * (17 * 1024**2), 1009),
    ],
)
async def test_bad_frames_close_the_socket(agent: Agent, frame: str | bytes, code: int) -> None:
    client = await connect(agent)
    with contextlib.suppress(WebSocketClosedError):  # closed while the big one is written
        await client.conn.write_message(frame, binary=isinstance(frame, bytes))
    closed_code, reason = await client.closed()
    # Tornado aborts the connection after the close frame for a message too big, which the
    # client may not read while it is still writing.
    assert closed_code == code or (code == 1009 and closed_code is None), reason
    assert (await agent.fetch("GET", "/api/health")).code == 200


async def test_refused_before_the_upgrade(agent: Agent) -> None:
    with pytest.raises(HTTPClientError) as unknown:
        await connect(agent, "pyright")
    assert unknown.value.code == 404
    with pytest.raises(HTTPClientError) as no_token:
        await connect(agent, token="wrong-token-0123456789")
    assert no_token.value.code == 401
    response = await agent.fetch("GET", "/lsp/status", token=None)
    assert response.code == 401


async def test_status_follows_the_server(agent: Agent) -> None:
    model = await agent.json("/lsp/status")
    assert model == {
        "version": 2,
        "sessions": {
            "pylsp": {
                "handler_count": 0,
                "status": "not_started",
                "last_server_message_at": None,
                "last_handler_message_at": None,
            }
        },
    }
    client = await connect(agent)
    await client.initialize()
    started = await status(agent)
    assert started["status"] == "started"
    assert started["handler_count"] == 1
    assert started["last_server_message_at"] is not None
    assert started["last_handler_message_at"] is not None


def server_pids(agent: Agent) -> list[int]:
    """pids of pylsp processes started by this agent."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"pylsp" in argv and parent == agent.pid:
            pids.append(int(entry.name))
    return pids


async def test_a_killed_server_closes_its_sockets_and_the_next_starts_another(
    agent: Agent,
) -> None:
    client = await connect(agent)
    await client.initialize()
    [pid] = server_pids(agent)
    os.kill(pid, signal.SIGKILL)
    code, reason = await client.closed()
    assert code == 1012
    assert reason == "language server restarted: it exited"
    again = await connect(agent)
    await again.initialize()
    text = "import json\njson.du"
    await again.open("d.py", text)
    assert "dumps" in await completion_labels(again, "d.py", text, "json.du")
    assert server_pids(agent) != [pid]


@pytest.mark.parametrize("agent_args", [["--lsp-memory-limit", "1048576"]])
async def test_a_server_over_its_memory_limit_is_killed_not_the_agent(agent: Agent) -> None:
    client = await connect(agent)
    code, reason = await client.closed()
    assert code == 1012
    assert reason == "language server restarted: it used more than 1 MiB"
    assert (await agent.fetch("GET", "/api/health")).code == 200
    assert "killing it" in agent.log.read_text()


@pytest.mark.parametrize("agent_args", [["--lsp-idle-timeout", "0.5"]])
async def test_a_server_without_clients_stops(agent: Agent) -> None:
    client = await connect(agent)
    await client.initialize()
    assert server_pids(agent)
    client.close()

    async def stopped() -> bool:
        return (await status(agent))["status"] == "stopped" and not server_pids(agent)

    await until(stopped, "the idle server stopped")
    again = await connect(agent)
    assert "capabilities" in (await again.initialize())["result"]


def foreign_sockets(pid: int) -> set[str]:
    """Sockets a process holds other than its stdin, stdout and stderr (uvloop leaves copies
    of those in the child)."""
    descriptors = Path(f"/proc/{pid}/fd")
    stdio = {(descriptors / str(fd)).readlink() for fd in (0, 1, 2)}
    held = {fd.readlink() for fd in descriptors.iterdir()} - stdio
    return {str(target) for target in held if str(target).startswith("socket:")}


async def test_the_server_gets_nothing_of_the_agent(agent: Agent) -> None:
    client = await connect(agent)
    await client.initialize()
    [pid] = server_pids(agent)
    environ = Path(f"/proc/{pid}/environ").read_bytes()  # noqa: ASYNC240 (procfs: instant)
    assert b"AGENT_TOKEN" not in environ
    assert Path(f"/proc/{pid}/cwd").resolve() == agent.root.resolve()  # noqa: ASYNC240
    assert not foreign_sockets(pid)


@pytest.mark.parametrize("agent_args", [["--workspace-env"]])
async def test_the_server_sees_what_is_installed_in_the_workspace_venv(agent: Agent) -> None:
    [site_packages] = agent.root.glob(".venv/lib/python*/site-packages")
    (site_packages / "installed_by_user.py").write_text("def greet_the_user():\n    pass\n")
    client = await connect(agent)
    await client.initialize()
    text = "import installed_by_user\ninstalled_by_user.gre"
    await client.open("uses.py", text)
    labels = await completion_labels(client, "uses.py", text, "installed_by_user.gre")
    assert labels == ["greet_the_user"]


@dataclass(eq=False)
class RecordingClient:
    """A client of the bridge that keeps what it is sent and how it was disconnected."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    def send_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def disconnect(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_a_server_that_exits_as_it_starts_is_not_restarted_at_once(
    tmp_path: Path,
) -> None:
    # A server that cannot start (a broken install) fails the same way however often it is
    # started: its clients get 1011 (wait), not 1012 (reconnect now).
    spec = ServerSpec(
        argv=[sys.executable, "-c", "raise SystemExit(3)"], languages=frozenset({"python"})
    )
    server = LanguageServer("broken", spec, str(tmp_path), LanguageServerLimits())
    client = RecordingClient()
    await server.attach(client)
    closed = await until(lambda: client.closed, "the client is disconnected")
    assert closed == (1011, "language server failed: it exited as it started")
    assert server.model()["status"] == "stopped"
    assert server.model()["handler_count"] == 0


ECHO_SERVER = ServerSpec(
    argv=[sys.executable, str(Path(__file__).with_name("lsp_echo_server.py"))],
    languages=frozenset({"python"}),
    settings={"pylsp": {"plugins": {"ruff": {"enabled": True}}}},
)


@pytest.fixture
def echo_server(
    tmp_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[LanguageServer]:
    """A bridge to ``tests/lsp_echo_server.py``, stopped after the test."""
    server = LanguageServer("echo", ECHO_SERVER, str(tmp_path), LanguageServerLimits())
    yield server
    jp_asyncio_loop.run_until_complete(server.stop())


async def two_clients(server: LanguageServer) -> tuple[RecordingClient, RecordingClient]:
    """Two clients attached to ``server`` (which starts it)."""
    first, second = RecordingClient(), RecordingClient()
    await server.attach(first)
    await server.attach(second)
    return first, second


async def reply(client: RecordingClient, request_id: Any) -> dict[str, Any]:
    """The reply the client got to its request ``request_id``."""

    def found() -> dict[str, Any] | None:
        answers = [m for m in client.messages if "method" not in m and m["id"] == request_id]
        assert len(answers) <= 1, answers
        return answers[0] if answers else None

    return await until(found, f"the reply to {request_id!r}")


async def request(
    server: LanguageServer, client: RecordingClient, request_id: Any, method: str, params: Any
) -> dict[str, Any]:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    await server.from_client(client, message)
    return await reply(client, request_id)


async def notify(server: LanguageServer, client: RecordingClient, method: str, params: Any) -> None:
    await server.from_client(client, {"jsonrpc": "2.0", "method": method, "params": params})


async def seen_by_server(server: LanguageServer, client: RecordingClient) -> list[dict[str, Any]]:
    """Every message the echo server received (asked through ``client``)."""
    client.messages.clear()
    answer = await request(server, client, "seen", "echo/seen", None)
    seen: list[dict[str, Any]] = answer["result"]
    return seen


async def test_the_server_sees_one_initialize_and_its_own_ids(
    tmp_path: Path, echo_server: LanguageServer
) -> None:
    server = echo_server
    first, second = await two_clients(server)
    for client in (first, second):
        answer = await request(server, client, 0, "initialize", {"rootUri": None, "processId": 7})
        assert answer["result"] == {"capabilities": {}}
        await notify(server, client, "initialized", {})
    # The same id from both clients: each gets its own answer.
    for client, who in ((first, "first"), (second, "second")):
        await server.from_client(
            client, {"jsonrpc": "2.0", "id": 1, "method": "x/ping", "params": {"who": who}}
        )
    assert (await reply(first, 1))["result"] == {"echo": {"who": "first"}}
    assert (await reply(second, 1))["result"] == {"echo": {"who": "second"}}
    assert (await request(server, first, "bye", "shutdown", None))["result"] is None
    await notify(server, first, "exit", None)
    await notify(server, first, "workspace/didChangeConfiguration", {"settings": {}})

    seen = await seen_by_server(server, second)
    assert [m["method"] for m in seen] == ["initialize", "initialized", "x/ping", "x/ping"]
    initialize = seen[0]["params"]
    assert initialize["processId"] is None
    assert initialize["rootUri"] == tmp_path.as_uri()
    assert initialize["workspaceFolders"] == [{"uri": tmp_path.as_uri(), "name": tmp_path.name}]
    assert initialize["initializationOptions"] == ECHO_SERVER.settings
    ids = [m["id"] for m in seen if "id" in m]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) for i in ids)


async def test_documents_are_counted_per_client(
    tmp_path: Path, echo_server: LanguageServer
) -> None:
    server = echo_server
    first, second = await two_clients(server)
    uri = (tmp_path / "shared.py").as_uri()
    document = {"uri": uri, "languageId": "python", "version": 1, "text": "a = 1\n"}
    await notify(server, first, "textDocument/didOpen", {"textDocument": document})
    again = {**document, "version": 4, "text": "b = 2\n"}
    await notify(server, second, "textDocument/didOpen", {"textDocument": again})
    notes = {"uri": (tmp_path / "notes.md").as_uri(), "languageId": "markdown", "text": "#"}
    await notify(server, first, "textDocument/didOpen", {"textDocument": {**notes, "version": 1}})
    closing = {"textDocument": {"uri": uri}}
    await notify(server, first, "textDocument/didClose", closing)
    await notify(server, first, "textDocument/didChange", {**closing, "contentChanges": []})
    await notify(server, second, "textDocument/didChange", {**closing, "contentChanges": []})
    server.detach(second)

    seen = await seen_by_server(server, first)
    assert [(m["method"], m["params"]) for m in seen] == [
        ("textDocument/didOpen", {"textDocument": document}),
        (
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": 4},
                "contentChanges": [{"text": "b = 2\n"}],
            },
        ),
        ("textDocument/didChange", {**closing, "contentChanges": []}),
        ("textDocument/didClose", closing),
    ]


async def test_server_requests_are_answered_or_forwarded(echo_server: LanguageServer) -> None:
    server = echo_server
    first, second = await two_clients(server)
    items = {"items": [{"section": "pylsp"}, {"section": "other"}]}
    configured = await request(server, first, 1, "echo/config", items)
    assert configured["result"]["result"] == [ECHO_SERVER.settings["pylsp"], None]

    # workspace/applyEdit goes to the client whose request caused it, which answers it.
    await server.from_client(first, {"jsonrpc": "2.0", "id": 2, "method": "echo/ask"})
    edit = await until(
        lambda: next((m for m in first.messages if m.get("method") == "workspace/applyEdit"), None),
        "the edit reaches the asking client",
    )
    assert not [m for m in second.messages if m.get("method") == "workspace/applyEdit"]
    # A cancel of that request reaches the server with the server's id for it.
    await notify(server, first, "$/cancelRequest", {"id": 2})
    answer = {"jsonrpc": "2.0", "id": edit["id"], "result": {"applied": True}}
    await server.from_client(first, answer)
    assert (await reply(first, 2))["result"]["result"] == {"applied": True}

    # Asked while a client that disconnects is asking: the bridge says it was not applied.
    await server.from_client(second, {"jsonrpc": "2.0", "id": 3, "method": "echo/ask"})
    await until(lambda: second.messages, "the edit reaches the second client")
    server.detach(second)

    seen = await seen_by_server(server, first)
    asked = [m for m in seen if m.get("method") == "echo/ask"]
    cancels = [m["params"]["id"] for m in seen if m.get("method") == "$/cancelRequest"]
    assert cancels == [asked[0]["id"], asked[1]["id"]]
    refused = {"applied": False, "failureReason": "the client disconnected"}
    assert [m["result"] for m in seen if "result" in m] == [
        [ECHO_SERVER.settings["pylsp"], None],
        {"applied": True},
        refused,
    ]
