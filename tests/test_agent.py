"""The sandbox agent (``kernel_image``), run for real as a subprocess: auth, terminals over
WebSocket (scrollback, backpressure, bad frames), files, and the bulk tar load.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.netutil import Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.waiting import until

REPO = Path(__file__).resolve().parent.parent
SYSTEM_TMP = Path("/tmp")  # noqa: S108 (where an escaping write would land; checked, not used)
TOKEN = "agent-test-token-0123456789"
LISTENING = re.compile(r"listening on (\S+?),")


class UnixResolver(Resolver):
    """Answers every host name with one Unix socket (how the platform reaches a local agent)."""

    def initialize(self, path: str) -> None:  # type: ignore[override]
        self.path = path

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        return [(socket.AF_UNIX, self.path)]


@dataclass
class Agent:
    """A running agent and ways to talk to it."""

    proc: subprocess.Popen[bytes]
    root: Path
    log: Path
    host: str
    resolver: Resolver | None = None
    _http: AsyncHTTPClient | None = field(default=None, repr=False)
    _sockets: list[Socket] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def headers(self, token: str | None = TOKEN) -> dict[str, str]:
        return {"Authorization": f"token {token}"} if token else {}

    async def fetch(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        json_body: Any = None,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> HTTPResponse:
        if self._http is None:
            self._http = SimpleAsyncHTTPClient(force_instance=True, resolver=self.resolver)
        if json_body is not None:
            body = json.dumps(json_body).encode()
        if body is None and method in {"POST", "PUT"}:
            body = b""
        producer = None
        if chunked and body is not None:
            content = body

            async def producer(write: Any) -> None:
                for start in range(0, len(content), 100_000):
                    await write(content[start : start + 100_000])

            body = None
        return await self._http.fetch(
            f"http://{self.host}{path}",
            method=method,
            body=body,
            body_producer=producer,
            headers={**self.headers(token), **(headers or {})},
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=30,
        )

    async def ws(self, name: str, *, token: str | None = TOKEN, query: str = "") -> Socket:
        request = HTTPRequest(
            f"ws://{self.host}/terminals/websocket/{name}{query}", headers=self.headers(token)
        )
        ws = Socket(await websocket_connect(request, resolver=self.resolver))
        self._sockets.append(ws)
        return ws

    async def new_terminal(self, **body: Any) -> str:
        response = await self.fetch("POST", "/api/terminals", json_body=body)
        assert response.code == 200, response.body
        return str(json.loads(response.body)["name"])

    async def json(self, path: str) -> Any:
        response = await self.fetch("GET", path)
        assert response.code == 200, response.body
        return json.loads(response.body)

    def close(self) -> None:
        for ws in self._sockets:
            ws.close()
        if self._http is not None:
            self._http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Socket:
    """A terminal WebSocket client speaking terminado's protocol."""

    conn: WebSocketClientConnection
    messages: list[Any] = field(default_factory=list)

    async def send(self, *message: Any) -> None:
        await self.conn.write_message(json.dumps(list(message)))

    async def stdin(self, text: str) -> None:
        await self.send("stdin", text)

    async def read(self, within: float = 10) -> Any:
        """The next message (decoded), or None once the socket is closed."""
        raw = await asyncio.wait_for(self.conn.read_message(), within)
        return None if raw is None else json.loads(raw)

    async def read_until(self, pattern: str, within: float = 10) -> re.Match[str]:
        """Read output until ``pattern`` (a regex) matches what arrived since this call."""
        text = ""
        deadline = time.monotonic() + within
        while True:
            try:
                message = await self.read(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                pytest.fail(f"no {pattern!r} in {within}s; output ended {text[-300:]!r}")
            if message is None:
                pytest.fail(f"socket closed before {pattern!r}; output ended {text[-300:]!r}")
            self.messages.append(message[0])
            if message[0] == "stdout":
                text += message[1]
                if match := re.search(pattern, text[-200_000:]):
                    return match

    def close(self) -> None:
        self.conn.close()


def start(
    tmp_path: Path, *where: str, token: str | None = TOKEN, pass_fds: tuple[int, ...] = ()
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TOKEN"}
    if token is not None:
        env["AGENT_TOKEN"] = token
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "kernel_image", *where, "--root", str(root)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    return proc, root, log


def wait_listening(proc: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := LISTENING.search(log.read_text()):
            return match.group(1)
        if proc.poll() is not None:
            pytest.fail(f"the agent exited: {log.read_text()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the agent did not start: {log.read_text()}")


@pytest.fixture
def agent_args() -> list[str]:
    """Extra command-line arguments; override with ``@pytest.mark.parametrize``."""
    return []


@pytest.fixture
def agent(tmp_path: Path, agent_args: list[str]) -> Iterator[Agent]:
    """An agent on a free TCP port of 127.0.0.1."""
    proc, root, log = start(tmp_path, "--port", "0", *agent_args)
    running = Agent(proc, root, log, wait_listening(proc, log))
    yield running
    running.close()
    assert "Traceback" not in log.read_text(), log.read_text()


def children(pid: int, comm: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat_line = (entry / "stat").read_text()
        except (OSError, NotADirectoryError):
            continue
        name = stat_line[stat_line.find("(") + 1 : stat_line.rfind(")")]
        ppid = int(stat_line[stat_line.rfind(")") + 2 :].split()[1])
        if ppid == pid and name == comm:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


# -- start-up and auth -------------------------------------------------------------------------


def test_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    proc, _, log = start(tmp_path, "--port", "0", token=None)
    assert proc.wait(15) != 0
    assert "AGENT_TOKEN" in log.read_text()


async def test_every_request_needs_the_token(agent: Agent) -> None:
    for token in (None, "wrong-token-0123456789", TOKEN + "x"):
        response = await agent.fetch("GET", "/api/health", token=token)
        assert response.code == 401
        assert json.loads(response.body) == {"message": "missing or invalid token"}
    for path in ("/api/terminals", "/api/files/x", "/api/nowhere"):
        assert (await agent.fetch("GET", path, token=None)).code == 401
    bearer = await agent.fetch(
        "GET", "/api/health", token=None, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bearer.code == 401
    health = await agent.json("/api/health")
    assert health["status"] == "ok"
    assert health["terminals"] == 0
    assert health["last_input"] is None
    assert health["started"].endswith("Z")
    assert health["version"]
    assert (await agent.fetch("GET", "/api/nowhere")).code == 404


async def test_websocket_needs_the_token(agent: Agent) -> None:
    name = await agent.new_terminal()
    for token in (None, "wrong-token-0123456789"):
        with pytest.raises(HTTPClientError) as refused:
            await agent.ws(name, token=token)
        assert refused.value.code == 401
    with pytest.raises(HTTPClientError) as missing:
        await agent.ws("nope")
    assert missing.value.code == 404


def first_contact_agent(tmp_path: Path) -> Agent:
    """An agent started as in a Kubernetes pod: no token until ``PUT /api/token``."""
    proc, root, log = start(tmp_path, "--port", "0", "--token-on-first-contact", token=None)
    return Agent(proc, root, log, wait_listening(proc, log))


async def test_first_contact_agent_answers_nothing_before_its_token(tmp_path: Path) -> None:
    agent = first_contact_agent(tmp_path)
    try:
        for method, path in [("GET", "/api/health"), ("GET", "/api/terminals"),
                             ("POST", "/api/terminals"), ("PUT", "/api/files/x"),
                             ("GET", "/api/kernels"), ("POST", "/api/kernels"),
                             ("PUT", "/api/tree"), ("GET", "/api/nowhere")]:  # fmt: skip
            for token in (TOKEN, None):
                response = await agent.fetch(method, path, b"{}", token=token)
                assert response.code == 503, (method, path, response.body)
                assert json.loads(response.body) == {
                    "message": "the agent has no token yet (PUT /api/token)"
                }
        for socket_path in ("/terminals/websocket/1", "/api/sync"):
            with pytest.raises(HTTPClientError) as refused:
                await websocket_connect(
                    HTTPRequest(f"ws://{agent.host}{socket_path}", headers=agent.headers())
                )
            assert refused.value.code == 503
        for bad in (b"", b"[]", b"{", b'{"token": 5}', b'{"token": "short"}',
                    json.dumps({"token": "with space " + TOKEN}).encode(),
                    json.dumps({"token": "x" * 2000}).encode()):  # fmt: skip
            response = await agent.fetch("PUT", "/api/token", bad, token=None)
            assert response.code == 400, (bad, response.body)
            assert json.loads(response.body)["message"]
        assert (await agent.fetch("GET", "/api/health", token=TOKEN)).code == 503
        assert list(agent.root.iterdir()) == []  # nothing was written, nothing ran
    finally:
        agent.close()
    assert "Traceback" not in agent.log.read_text()


async def test_first_contact_token_is_set_once(tmp_path: Path) -> None:
    agent = first_contact_agent(tmp_path)
    try:
        claim = {"token": TOKEN}
        first = await agent.fetch("PUT", "/api/token", json_body=claim, token=None)
        assert (first.code, first.body) == (204, b"")
        again = await agent.fetch("PUT", "/api/token", json_body=claim, token=None)
        assert again.code == 204  # a retry, or another platform replica: no change
        other = await agent.fetch(
            "PUT", "/api/token", json_body={"token": "another-token-0123456789"}, token=None
        )
        assert other.code == 409
        assert json.loads(other.body) == {"message": "the agent has another token already"}
        assert (await agent.json("/api/health"))["status"] == "ok"
        wrong = await agent.fetch("GET", "/api/health", token="another-token-0123456789")
        assert wrong.code == 401
        name = await agent.new_terminal()
        ws = await agent.ws(name)
        await ws.stdin("echo TOKEN=$((6*7))${AGENT_TOKEN:-none}\r")
        assert (await ws.read_until(r"TOKEN=42(\S+)")).group(1) == "none"
        # Kept only in the agent's memory: not in its environment, nor its log.
        environ = await asyncio.to_thread(Path(f"/proc/{agent.pid}/environ").read_bytes)
        assert TOKEN.encode() not in environ
        assert b"AGENT_TOKEN" not in environ
        assert TOKEN not in agent.log.read_text()
    finally:
        agent.close()


def test_first_contact_takes_no_token_from_the_environment(tmp_path: Path) -> None:
    proc, _, log = start(tmp_path, "--port", "0", "--token-on-first-contact")
    assert proc.wait(15) != 0
    assert "--token-on-first-contact takes its token from PUT /api/token" in log.read_text()


# -- terminals ---------------------------------------------------------------------------------


async def test_terminal_runs_commands(agent: Agent) -> None:
    name = await agent.new_terminal()
    assert name == "1"
    ws = await agent.ws(name)
    assert await ws.read() == ["setup", {}]
    await ws.stdin("echo $((6*7))\r")
    await ws.read_until(r"\b42\b")
    await ws.stdin("echo TOKEN=${AGENT_TOKEN:-none} HOME=$HOME TERM=$TERM; pwd\r")
    match = await ws.read_until(r"TOKEN=(\S+) HOME=(\S+) TERM=(\S+)\s+(/\S+)")
    assert match.group(1) == "none"
    assert match.group(2) == os.environ.get("HOME", match.group(2))
    assert match.group(3) == "xterm-256color"
    assert match.group(4) == str(agent.root.resolve())
    health = await agent.json("/api/health")
    assert health["terminals"] == 1
    assert health["last_input"].endswith("Z")
    listed = await agent.json("/api/terminals")
    assert [t["name"] for t in listed] == ["1"]
    ws.close()


async def test_terminal_create_options(tmp_path: Path) -> None:
    proc, root, log = start(tmp_path, "--port", "0", "--max-terminals", "2")
    agent = Agent(proc, root, log, wait_listening(proc, log))
    try:
        (root / "sub").mkdir()
        name = await agent.new_terminal(name="build", cwd="sub")
        assert name == "build"
        ws = await agent.ws(name)
        await ws.stdin("pwd\r")
        await ws.read_until(r"/sub\r?\n")
        ws.close()
        for body, code in [
            ({"name": "build"}, 409),
            ({"name": "a/b"}, 400),
            ({"name": 3}, 400),
            ({"cwd": "../"}, 400),
            ({"cwd": "/etc"}, 400),
            ({"cwd": "missing"}, 400),
        ]:
            response = await agent.fetch("POST", "/api/terminals", json_body=body)
            assert response.code == code, (body, response.body)
            assert "message" in json.loads(response.body)
        assert (await agent.fetch("POST", "/api/terminals", b"[1]")).code == 400
        assert await agent.new_terminal() == "1"
        full = await agent.fetch("POST", "/api/terminals")
        assert full.code == 409
        assert "at most 2" in json.loads(full.body)["message"]
    finally:
        agent.close()


async def test_reconnect_replays_scrollback_and_since(agent: Agent) -> None:
    name = await agent.new_terminal()
    first = await agent.ws(name)
    await first.stdin("echo AAA$((1+1))\r")
    await first.read_until("AAA2")
    offset = (await agent.json(f"/api/terminals/{name}"))["output_offset"]
    assert offset > 0
    first.close()

    # Output produced while nobody is connected lands in the scrollback.
    second = await agent.ws(name)
    await second.read_until("AAA2")  # a plain reconnect replays everything
    await second.stdin("echo BBB$((2+2))\r")
    await second.read_until("BBB4")
    second.close()

    since = await agent.ws(name, query=f"?since={offset}")
    assert await since.read() == ["setup", {}]
    replay = await since.read()
    assert replay[0] == "stdout"
    assert "BBB4" in replay[1]
    assert "AAA2" not in replay[1]
    since.close()

    # An offset older than the ring (or not from this terminal) replays the whole ring.
    old = await agent.ws(name, query="?since=999999999")
    await old.read_until("AAA2")
    old.close()
    bad = await agent.fetch("GET", f"/terminals/websocket/{name}?since=-1")
    assert bad.code == 400


async def test_set_size_resizes_the_pty(agent: Agent) -> None:
    ws = await agent.ws(await agent.new_terminal())
    await ws.send("set_size", 33, 111, 500, 800)
    await ws.stdin("stty size\r")
    await ws.read_until(r"33 111")
    ws.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", 1007),
        ('{"stdin": "x"}', 1007),
        ("[]", 1007),
        ('["stdin", 123]', 1007),
        ('["stdin"]', 1007),
        ('["set_size", -1, 1e9]', 1007),
        ('["set_size", 24]', 1007),
        ('["set_size", "24", "80"]', 1007),
        (b"\x00binary", 1003),
        ('["stdin", "' + "x" * (1024 * 1024 + 10) + '"]', 1009),
    ],
)
async def test_bad_frames_close_the_socket_cleanly(agent: Agent, frame: Any, code: int) -> None:
    name = await agent.new_terminal()
    ws = await agent.ws(name)
    assert await ws.read() == ["setup", {}]
    await ws.conn.write_message(frame, binary=isinstance(frame, bytes))
    while await ws.read() is not None:
        pass
    assert ws.conn.close_code == code
    assert ws.conn.close_reason
    # The terminal is fine, and a new client can use it.
    again = await agent.ws(name)
    await again.stdin("echo OK$((2+3))\r")
    await again.read_until("OK5")
    again.close()


async def test_unknown_message_types_are_ignored(agent: Agent) -> None:
    ws = await agent.ws(await agent.new_terminal())
    await ws.send("hello", 1)
    await ws.stdin("echo STILL$((1+2))\r")
    await ws.read_until("STILL3")
    ws.close()


async def test_delete_kills_the_terminal_session(agent: Agent) -> None:
    name = await agent.new_terminal()
    ws = await agent.ws(name)
    await ws.stdin("sleep 1000 & echo PIDS=$$,$!=\r")
    match = await ws.read_until(r"PIDS=(\d+),(\d+)=")
    shell, job = int(match.group(1)), int(match.group(2))
    assert not gone(shell)
    assert not gone(job)
    response = await agent.fetch("DELETE", f"/api/terminals/{name}")
    assert response.code == 204
    # Clients are told, as terminado does, and the socket closes.
    messages = []
    while (message := await ws.read()) is not None:
        messages.append(message)
    assert messages[-1] == ["disconnect", 1]
    assert gone(shell)  # reaped before the answer
    await until(lambda: gone(job), "the background job is reaped", within=5)
    assert (await agent.fetch("GET", f"/api/terminals/{name}")).code == 404
    assert (await agent.fetch("DELETE", f"/api/terminals/{name}")).code == 404
    assert (await agent.json("/api/health"))["terminals"] == 0


async def test_exit_ends_the_terminal(agent: Agent) -> None:
    name = await agent.new_terminal()
    ws = await agent.ws(name)
    await ws.stdin("exit\r")
    last = None
    while (message := await ws.read()) is not None:
        last = message
    assert last == ["disconnect", 1]
    response = await agent.fetch("GET", f"/api/terminals/{name}")
    assert response.code == 404


async def test_flood_with_a_slow_client_pauses_the_pty_and_ctrl_c_works(agent: Agent) -> None:
    name = await agent.new_terminal()
    ws = await agent.ws(name)
    await ws.stdin("echo SHELL=$$=\r")
    shell = int((await ws.read_until(r"SHELL=(\d+)=")).group(1))

    # Flood, and stop reading: tornado's client takes one message and then leaves the rest
    # in the socket, so the agent's writes stall.
    await ws.stdin("yes\r")
    offsets = [0]

    async def paused() -> bool:
        offsets.append((await agent.json(f"/api/terminals/{name}"))["output_offset"])
        return offsets[-1] > 300_000 and offsets[-1] == offsets[-2]

    # The agent stops reading the PTY: output no longer advances while nobody reads.
    await until(paused, f"the flood started, then paused: {offsets}", within=30, interval=0.2)
    assert children(shell, "yes"), "yes is not running"

    # Ctrl-C reaches the PTY at once, although the client still reads nothing.
    await ws.stdin("\x03")
    await until(lambda: not children(shell, "yes"), "Ctrl-C ends yes", within=5)
    await ws.stdin("echo DONE$((3+4))\r")
    await ws.read_until("DONE7", within=30)
    ws.close()


async def test_output_held_back_by_a_slow_client_arrives_whole_and_in_order(agent: Agent) -> None:
    name = await agent.new_terminal()
    ws = await agent.ws(name)
    count = 1_000_000  # about 7 MB: more than the socket buffers hold, so the agent pauses
    await ws.stdin(f"seq 1 {count}; echo END''MARK\r")
    # Read nothing for a while: time passing with a full socket is what makes the agent pause.
    await asyncio.sleep(1)
    output = ""
    while "ENDMARK" not in output:
        message = await ws.read(within=30)
        assert message is not None, "closed before the end of the output"
        if message[0] == "stdout":
            output += message[1]
    expected = "\r\n".join(map(str, range(1, count + 1))) + "\r\nENDMARK"
    assert expected in output, "output was lost or repeated"


@pytest.mark.parametrize("agent_args", [["--stalled-client-timeout", "1"]])
async def test_a_stuck_client_is_dropped_and_others_go_on(agent: Agent) -> None:
    name = await agent.new_terminal()
    stuck, reader = await agent.ws(name), await agent.ws(name)
    await reader.stdin("yes\r")
    await reader.read_until("y\r\ny")
    received = 0

    async def output_after_the_drop() -> bool:
        # Keep reading, or this client would be stalled too.
        nonlocal received
        message = await reader.read()
        assert message is not None, "output stopped for everyone"
        if "dropping a client" in agent.log.read_text():
            received += len(message[1])
        return received > 100_000

    await until(
        output_after_the_drop, "output goes on after the stuck client is dropped", interval=0
    )
    await reader.stdin("\x03")
    await reader.stdin("echo DONE$((3+4))\r")
    await reader.read_until("DONE7", within=30)
    assert stuck.conn.close_code in {None, 1013}


async def test_flood_without_clients_fills_only_the_scrollback(agent: Agent) -> None:
    name = await agent.new_terminal()
    ws = await agent.ws(name)
    await ws.stdin("yes FLOOD\r")
    await ws.read_until("FLOOD\r\nFLOOD")
    ws.close()
    offsets = [(await agent.json(f"/api/terminals/{name}"))["output_offset"]]

    async def advanced() -> int:
        # The API answers during the flood (the agent is not starved), and the PTY is read.
        offset: int = (await agent.json(f"/api/terminals/{name}"))["output_offset"]
        return offset if offset > offsets[-1] else 0

    for _ in range(4):
        offsets.append(await until(advanced, f"nobody reads the PTY: {offsets}", within=10))
    again = await agent.ws(name)
    assert await again.read() == ["setup", {}]
    replay = await again.read()
    assert len(replay[1].encode()) <= 256 * 1024  # the scrollback, not everything
    await again.stdin("\x03")
    await again.stdin("echo DONE$((3+4))\r")
    await again.read_until("DONE7", within=30)


# -- files -------------------------------------------------------------------------------------


async def test_files_put_get_rename_delete(agent: Agent) -> None:
    root = agent.root
    assert (await agent.fetch("PUT", "/api/files/a/b/c.txt", b"hello")).code == 204
    assert (root / "a/b/c.txt").read_bytes() == b"hello"
    got = await agent.fetch("GET", "/api/files/a/b/c.txt")
    assert (got.code, got.body) == (200, b"hello")
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert (await agent.fetch("PUT", "/api/files/a/b/c.txt", b"")).code == 204
    assert (root / "a/b/c.txt").read_bytes() == b""

    # Overwriting keeps the mode (a script stays executable); no temporary file is left.
    (root / "run.sh").write_text("old")
    (root / "run.sh").chmod(0o755)
    assert (await agent.fetch("PUT", "/api/files/run.sh", b"echo new")).code == 204
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755
    assert sorted(p.name for p in root.iterdir()) == ["a", "run.sh"]

    assert (await agent.fetch("PUT", "/api/files-dir/x/y")).code == 204
    assert (await agent.fetch("PUT", "/api/files-dir/x/y")).code == 204
    assert (root / "x/y").is_dir()
    assert (await agent.fetch("PUT", "/api/files-dir/run.sh")).code == 409

    rename = {"from": "a/b/c.txt", "to": "x/y/z/d.txt"}
    assert (await agent.fetch("POST", "/api/files-rename", json_body=rename)).code == 204
    assert (root / "x/y/z/d.txt").exists()
    assert not (root / "a/b/c.txt").exists()
    clash = {"from": "x/y/z/d.txt", "to": "run.sh"}
    assert (await agent.fetch("POST", "/api/files-rename", json_body=clash)).code == 409
    clash["overwrite"] = True  # type: ignore[assignment]
    assert (await agent.fetch("POST", "/api/files-rename", json_body=clash)).code == 204
    missing = {"from": "nope", "to": "other"}
    assert (await agent.fetch("POST", "/api/files-rename", json_body=missing)).code == 404
    bad = await agent.fetch("POST", "/api/files-rename", json_body={"from": 1})
    assert bad.code == 400

    assert (await agent.fetch("DELETE", "/api/files/x")).code == 204
    assert not (root / "x").exists()
    assert (await agent.fetch("DELETE", "/api/files/x")).code == 404
    assert (await agent.fetch("GET", "/api/files/x")).code == 404
    assert (await agent.fetch("GET", "/api/files/a")).code == 409
    assert (await agent.fetch("DELETE", "/api/files/")).code == 400
    assert (root / "run.sh").read_bytes() == b""


async def test_paths_that_escape_the_root_are_refused(agent: Agent, tmp_path: Path) -> None:
    root = agent.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "out").symlink_to(outside)
    (root / "etc").symlink_to("/etc")
    (root / "inside").symlink_to("sub")
    (root / "sub").mkdir()
    probe = f"agent-test-{os.getpid()}-{time.monotonic_ns()}"
    for method, path in [
        ("PUT", "/api/files/../x"),
        ("PUT", "/api/files/a/../../x"),
        ("PUT", "/api/files/%2e%2e/x"),
        ("PUT", f"/api/files/{SYSTEM_TMP}/{probe}"),
        ("PUT", "/api/files/a%00b"),
        ("PUT", f"/api/files/out/{probe}"),
        ("PUT", f"/api/files/etc/{probe}"),
        ("PUT", f"/api/files-dir/out/{probe}"),
        ("GET", "/api/files/out/secret"),
        ("GET", "/api/files/etc/hostname"),
        ("DELETE", "/api/files/out/secret"),
    ]:
        response = await agent.fetch(method, path, b"x" if method == "PUT" else None)
        assert 400 <= response.code < 500, (method, path, response.code)
        assert "message" in json.loads(response.body)
    escape = {"from": "out/secret", "to": "stolen"}
    assert (await agent.fetch("POST", "/api/files-rename", json_body=escape)).code == 403
    assert not (SYSTEM_TMP / probe).exists()
    assert not (Path("/etc") / probe).exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]

    # Symbolic links that stay inside the root work; deleting a link removes only the link.
    assert (await agent.fetch("PUT", "/api/files/inside/f", b"ok")).code == 204
    assert (root / "sub/f").read_bytes() == b"ok"
    assert (await agent.fetch("DELETE", "/api/files/out")).code == 204
    assert (outside / "secret").exists()


async def test_bulk_tree_load(agent: Agent) -> None:
    big = os.urandom(5 * 1024 * 1024)
    tar = make_tar(
        [
            (member("src", tarfile.DIRTYPE), None),
            (member("src/pkg/deep/mod.py"), b"print('hi')\n"),
            (member("bin/tool", mode=0o4777), b"#!/bin/sh\n"),
            (member("data/big.bin", mtime=1_000_000_000), big),
            (member("empty", tarfile.DIRTYPE), None),
        ]
    )
    response = await agent.fetch("PUT", "/api/tree", tar, chunked=True)
    assert response.code == 200, response.body
    result = json.loads(response.body)
    assert result["files"] == 3
    assert result["bytes"] == len(big) + len(b"print('hi')\n") + len(b"#!/bin/sh\n")
    assert result["skipped"] == []
    root = agent.root
    assert (root / "data/big.bin").read_bytes() == big
    assert (root / "data/big.bin").stat().st_mtime == 1_000_000_000
    assert (root / "src/pkg/deep/mod.py").read_text() == "print('hi')\n"
    assert stat.S_IMODE((root / "bin/tool").stat().st_mode) == 0o755  # the data filter's mode
    assert (root / "empty").is_dir()

    not_tar = await agent.fetch("PUT", "/api/tree", b"this is not a tar archive" * 100)
    assert not_tar.code == 400
    assert "tar" in json.loads(not_tar.body)["message"]


async def test_bulk_tree_load_skips_links_and_escapes(agent: Agent, tmp_path: Path) -> None:
    root = agent.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "out").symlink_to(outside)
    probe = f"agent-test-{os.getpid()}-{time.monotonic_ns()}"
    tar = make_tar(
        [
            (member("link", tarfile.SYMTYPE, linkname="/etc"), None),
            (member("link/passwd"), b"evil"),
            (member("hard", tarfile.LNKTYPE, linkname="/etc/passwd"), None),
            (member("../evil"), b"evil"),
            (member(f"{SYSTEM_TMP}/{probe}"), b"evil"),
            (member("out/evil"), b"evil"),
            (member("fifo", tarfile.FIFOTYPE), None),
            (member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
            (member("ok.txt"), b"fine"),
        ]
    )
    response = await agent.fetch("PUT", "/api/tree", tar)
    assert response.code == 200, response.body
    result = json.loads(response.body)
    assert result["files"] == 2  # ok.txt, and link/passwd (link is no link: it was skipped)
    skipped = {s["name"] for s in result["skipped"]}
    assert skipped >= {"link", "hard", "../evil", "out/evil", "fifo", "dev"}
    assert (root / "ok.txt").read_text() == "fine"
    # With the symbolic link refused, "link/passwd" is an ordinary file in a folder.
    assert sorted(p.name for p in root.iterdir()) == ["link", "ok.txt", "out"]
    assert not (root / "link").is_symlink()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists()
    assert not (SYSTEM_TMP / probe).exists()


@pytest.mark.parametrize("agent_args", [["--max-tree-bytes", "1000"]])
async def test_bulk_tree_load_is_bounded(agent: Agent) -> None:
    tar = make_tar([(member("big"), b"x" * 5000)])
    response = await agent.fetch("PUT", "/api/tree", tar)
    assert response.code == 413
    assert "1000 bytes" in json.loads(response.body)["message"]
    assert not (agent.root / "big").exists()


# -- how the agent listens ---------------------------------------------------------------------


async def test_serves_on_an_inherited_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    try:
        proc, root, log = start(
            tmp_path, "--fd", str(listener.fileno()), pass_fds=(listener.fileno(),)
        )
    finally:
        listener.close()
    agent = Agent(proc, root, log, "agent", resolver=UnixResolver(path=str(path)))
    try:
        wait_listening(proc, log)
        assert (await agent.json("/api/health"))["status"] == "ok"
        ws = await agent.ws(await agent.new_terminal())
        await ws.stdin("echo $((7*6))\r")
        await ws.read_until(r"\b42\b")
        # The terminal's shell did not inherit the agent's listening socket.
        await ws.stdin("ls -l /proc/$$/fd | grep -c socket: ; echo END\r")
        assert (await ws.read_until(r"[\r\n](\d+)\r?\nEND")).group(1) == "0"
        ws.close()
    finally:
        agent.close()


async def test_serves_on_its_own_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "own.sock"
    proc, root, log = start(tmp_path, "--socket", str(path))
    agent = Agent(proc, root, log, "agent", resolver=UnixResolver(path=str(path)))
    try:
        wait_listening(proc, log)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (await agent.json("/api/health"))["status"] == "ok"
        assert (await agent.fetch("GET", "/api/health", token=None)).code == 401
    finally:
        agent.close()
    assert not path.exists()
