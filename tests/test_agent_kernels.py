"""The agent's kernels (``/api/kernelspecs``, ``/api/kernels``, the channels WebSocket), with a
real agent process and real ipykernel kernels: both wire formats, interrupt, restart, culling,
reconnection, bounded output, and a clean shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tests.kernel_client import V1, KernelSocket, close_opened
from tests.missing import skip_or_fail
from tests.test_agent import REPO, TOKEN, Agent, gone, wait_listening
from tests.waiting import until

SANDBOX_PYTHON = REPO / ".sandbox-venv" / "bin" / "python"

PROTOCOLS = [pytest.param(V1, id="v1"), pytest.param(None, id="json")]


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    """Close every kernel WebSocket a test opened."""
    yield
    close_opened()


@pytest.fixture
def agent_args() -> list[str]:
    """Extra command-line arguments; override with ``@pytest.mark.parametrize``."""
    return []


def start_agent(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """The agent as a sandbox runs it: the sandbox venv's Python (numpy, ipykernel), the agent
    package on ``PYTHONPATH`` (which it removes before starting kernels)."""
    if not SANDBOX_PYTHON.exists():
        skip_or_fail("the sandbox venv is missing: run `make install`")
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env.update(AGENT_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(SANDBOX_PYTHON), "-s", "-m", "kernel_image", "--root", str(root), *args],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    return proc, root, log


@pytest.fixture
def agent(tmp_path: Path, agent_args: list[str]) -> Iterator[Agent]:
    """An agent on a free TCP port of 127.0.0.1."""
    proc, root, log = start_agent(tmp_path, "--port", "0", *agent_args)
    running = Agent(proc, root, log, wait_listening(proc, log))
    yield running
    running.close()
    # Kernels' own stderr goes to the same log (an interrupted start prints a traceback).
    text = log.read_text()
    assert f'File "{REPO / "kernel_image"}' not in text, text


async def start_kernel(agent: Agent, **body: Any) -> dict[str, Any]:
    response = await agent.fetch("POST", "/api/kernels", json_body=body)
    assert response.code == 201, response.body
    model: dict[str, Any] = json.loads(response.body)
    return model


async def connect(
    agent: Agent, kernel_id: str, protocol: str | None = V1, session: str | None = None
) -> KernelSocket:
    return await KernelSocket.open(
        f"ws://{agent.host}/api/kernels/{kernel_id}/channels",
        protocol=protocol,
        session=session,
        headers=agent.headers(),
    )


async def until_state(agent: Agent, kernel_id: str, state: str, within: float = 20) -> None:
    """Wait until the agent reports the kernel's execution state as ``state``."""

    async def reached() -> bool:
        return bool((await agent.json(f"/api/kernels/{kernel_id}"))["execution_state"] == state)

    await until(reached, f"kernel {kernel_id} is {state}", within=within)


async def until_ran(agent: Agent, kernel_id: str, within: float = 30) -> None:
    """Wait until the kernel went busy and back to idle, without reading its channels."""
    states: list[str] = []

    async def ran() -> bool:
        states.append((await agent.json(f"/api/kernels/{kernel_id}"))["execution_state"])
        return "busy" in states and states[-1] == "idle"

    await until(ran, f"kernel {kernel_id} ran its request: {states[-5:]}", within=within)


# -- REST ---------------------------------------------------------------------------------------


async def test_kernelspecs(agent: Agent) -> None:
    specs = await agent.json("/api/kernelspecs")
    assert specs["default"] == "python3"
    python3 = specs["kernelspecs"]["python3"]
    assert python3["name"] == "python3"
    assert python3["spec"]["language"] == "python"
    assert python3["spec"]["argv"][1:] == ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert python3["spec"]["display_name"] == "Python 3 (ipykernel)"
    assert python3["resources"]["logo-64x64"] == "/kernelspecs/python3/logo-64x64.png"
    assert await agent.json("/api/kernelspecs/python3") == python3
    logo = await agent.fetch("GET", "/kernelspecs/python3/logo-64x64.png")
    assert logo.code == 200
    assert logo.headers["Content-Type"] == "image/png"
    assert logo.body.startswith(b"\x89PNG")
    for path in ("/api/kernelspecs/ruby", "/kernelspecs/python3/kernel.json"):
        assert (await agent.fetch("GET", path)).code == 404
    assert (await agent.fetch("GET", "/api/kernelspecs", token=None)).code == 401


async def test_start_list_get_shutdown(agent: Agent) -> None:
    assert await agent.json("/api/kernels") == []
    model = await start_kernel(agent)
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["name"] == "python3"
    assert model["connections"] == 0
    assert model["last_activity"].endswith("Z")
    kernel_id = model["id"]
    assert [k["id"] for k in await agent.json("/api/kernels")] == [kernel_id]

    await until_state(agent, kernel_id, "idle")
    ws = await connect(agent, kernel_id)
    pid = int((await ws.execute("import os; print(os.getpid())")).stdout)
    assert (await agent.json(f"/api/kernels/{kernel_id}"))["connections"] == 1

    deleted = await agent.fetch("DELETE", f"/api/kernels/{kernel_id}")
    assert deleted.code == 204
    assert gone(pid)
    while await ws.read() is not None:
        pass
    assert ws.conn.close_code == 1000
    assert (await agent.fetch("GET", f"/api/kernels/{kernel_id}")).code == 404
    assert (await agent.fetch("DELETE", f"/api/kernels/{kernel_id}")).code == 404
    assert await agent.json("/api/kernels") == []


async def test_bad_requests(agent: Agent) -> None:
    for body, code in [
        ({"name": "ruby"}, 400),
        ({"name": 3}, 400),
        ({"path": "../etc"}, 400),
        ({"path": "/etc"}, 400),
    ]:
        response = await agent.fetch("POST", "/api/kernels", json_body=body)
        assert response.code == code, (body, response.body)
        assert json.loads(response.body)["message"]
    bad_json = await agent.fetch("POST", "/api/kernels", b"{nope")
    assert bad_json.code == 400
    unknown = "00000000-0000-0000-0000-000000000000"
    for method, path in [
        ("GET", f"/api/kernels/{unknown}"),
        ("POST", f"/api/kernels/{unknown}/interrupt"),
        ("POST", f"/api/kernels/{unknown}/restart"),
    ]:
        assert (await agent.fetch(method, path)).code == 404
    with pytest.raises(HTTPClientError) as refused:
        await connect(agent, unknown)
    assert refused.value.code == 404
    assert await agent.json("/api/kernels") == []


@pytest.mark.parametrize("agent_args", [["--max-kernels", "2"]])
async def test_kernel_cap(agent: Agent) -> None:
    await start_kernel(agent)
    await start_kernel(agent)
    refused = await agent.fetch("POST", "/api/kernels", json_body={})
    assert refused.code == 409
    assert "at most 2" in json.loads(refused.body)["message"]


async def test_websocket_needs_the_token(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    with pytest.raises(HTTPClientError) as refused:
        await KernelSocket.open(f"ws://{agent.host}/api/kernels/{kernel_id}/channels")
    assert refused.value.code == 401


# -- running code -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_execute_in_both_protocols(agent: Agent, protocol: str | None) -> None:
    (agent.root / "sub").mkdir()
    model = await start_kernel(agent, path="sub/notebook.ipynb", session_name="sub/notebook.ipynb")
    ws = await connect(agent, model["id"], protocol)

    info_id = await ws.request("kernel_info_request", {})
    info = await ws.until(lambda m: m["parent_header"].get("msg_id") == info_id)
    assert info["channel"] in {"shell", "iopub"}

    printed = await ws.execute("print(6*7)")
    assert printed.stdout == "42\n"
    assert printed.shell is not None
    assert printed.shell["status"] == "ok"
    assert printed.states == ["busy", "idle"]
    summed = await ws.execute("import numpy; numpy.arange(3).sum()")
    assert summed.results == ["np.int64(3)"]
    where = await ws.execute("import os; print(os.getcwd()); print(os.environ['JPY_SESSION_NAME'])")
    assert where.stdout.split() == [
        str(agent.root / "sub"),
        str(agent.root / "sub" / "notebook.ipynb"),
    ]
    secret = await ws.execute("import os; print(os.environ.get('AGENT_TOKEN'))")
    assert secret.stdout == "None\n"
    failed = await ws.execute("1/0", stop_on_error=False)
    assert failed.errors == ["ZeroDivisionError"]
    written = await ws.execute("open('made-by-kernel.txt', 'w').write('hi')")
    assert written.results == ["2"]
    assert (agent.root / "sub" / "made-by-kernel.txt").read_text() == "hi"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_buffers_travel_both_ways(agent: Agent, protocol: str | None) -> None:
    """A comm echoes binary buffers: client → kernel and kernel → client, in both formats."""
    ws = await connect(agent, (await start_kernel(agent))["id"], protocol)
    setup = await ws.execute(
        "def _echo(comm, msg):\n"
        "    comm.on_msg(lambda m: comm.send({'n': len(m['buffers'])}, buffers=m['buffers']))\n"
        "get_ipython().kernel.comm_manager.register_target('echo', _echo)"
    )
    assert setup.shell is not None
    assert setup.shell["status"] == "ok"
    comm_id = "c0ffee"
    await ws.request("comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}})
    await ws.request(
        "comm_msg", {"comm_id": comm_id, "data": {}}, buffers=[b"\x00\x01binary", b"two"]
    )
    echoed = await ws.until(lambda m: m["header"]["msg_type"] == "comm_msg")
    assert echoed["content"]["data"] == {"n": 2}
    assert echoed["buffers"] == [b"\x00\x01binary", b"two"]


# An endless loop that says when it runs: a SIGINT that lands while ipykernel is still setting
# the execution up (after its "busy" status) is not a KeyboardInterrupt in the user's code.
LOOP = "print('looping', flush=True)\nwhile True: pass"


def looping(message: dict[str, Any], loop_id: str) -> bool:
    """Whether ``message`` is the loop of ``LOOP`` saying it runs."""
    return bool(
        message["header"]["msg_type"] == "stream"
        and message["parent_header"].get("msg_id") == loop_id
        and "looping" in message["content"]["text"]
    )


async def test_interrupt_and_restart(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    await ws.execute("x = 1")
    loop_id = await ws.request("execute_request", {"code": LOOP, "stop_on_error": False})

    await until_state(agent, kernel_id, "busy")
    await ws.until(lambda m: looping(m, loop_id))
    health = await agent.json("/api/health")
    assert health["kernels"] == 1
    assert health["last_kernel_activity"] is not None
    interrupted = await agent.fetch("POST", f"/api/kernels/{kernel_id}/interrupt")
    assert interrupted.code == 204
    error = await ws.until(
        lambda m: m["header"]["msg_type"] == "error" and m["parent_header"].get("msg_id") == loop_id
    )
    assert error["content"]["ename"] == "KeyboardInterrupt"
    assert (await ws.execute("x")).results == ["1"]

    restarted = await agent.fetch("POST", f"/api/kernels/{kernel_id}/restart")
    assert restarted.code == 200
    assert json.loads(restarted.body)["execution_state"] == "idle"
    # The same connection goes on with the new kernel process.
    assert (await ws.execute("x")).errors == ["NameError"]
    assert (await ws.execute("print('after restart')")).stdout == "after restart\n"


async def test_a_renamed_session_reaches_the_kernel_at_its_restart(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent, session_name="a.ipynb"))["id"]
    ws = await connect(agent, kernel_id)
    show = "import os; print(os.environ['JPY_SESSION_NAME'])"
    renamed = await agent.fetch(
        "PATCH", f"/api/kernels/{kernel_id}", json_body={"session_name": "sub/b.ipynb"}
    )
    assert renamed.code == 200
    assert json.loads(renamed.body)["id"] == kernel_id
    # A running process keeps its environment.
    assert (await ws.execute(show)).stdout == f"{agent.root / 'a.ipynb'}\n"
    assert (await agent.fetch("POST", f"/api/kernels/{kernel_id}/restart")).code == 200
    assert (await ws.execute(show)).stdout == f"{agent.root / 'sub' / 'b.ipynb'}\n"
    for body, code in [
        ({"session_name": "../b.ipynb"}, 400),
        ({"session_name": ""}, 400),
        ({"session_name": 3}, 400),
        ({}, 400),
    ]:
        response = await agent.fetch("PATCH", f"/api/kernels/{kernel_id}", json_body=body)
        assert response.code == code, (body, response.body)
    unknown = "00000000-0000-0000-0000-000000000000"
    missing = await agent.fetch(
        "PATCH", f"/api/kernels/{unknown}", json_body={"session_name": "b.ipynb"}
    )
    assert missing.code == 404


async def test_stdin_reaches_the_asking_client(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    other = await connect(agent, kernel_id)
    msg_id = await ws.request(
        "execute_request", {"code": "print('got', input('name? '))", "allow_stdin": True}
    )
    prompt = await ws.until(lambda m: m["header"]["msg_type"] == "input_request")
    assert prompt["content"]["prompt"] == "name? "
    await ws.request("input_reply", {"value": "ada"}, channel="stdin")
    output = await ws.until(
        lambda m: m["header"]["msg_type"] == "stream" and m["parent_header"]["msg_id"] == msg_id
    )
    assert output["content"]["text"] == "got ada\n"
    # The other client saw the output (IOPub is for everyone) but not the prompt nor the reply.
    await other.until(lambda m: m["header"]["msg_type"] == "stream")
    assert all(m["channel"] == "iopub" for m in other.messages)


async def test_a_reconnecting_session_gets_what_it_missed(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id, session="session-1")
    await ws.execute("import time")
    await ws.request("execute_request", {"code": "time.sleep(1); print('while away')"})
    ws.close()
    await until_ran(agent, kernel_id)
    back = await connect(agent, kernel_id, session="session-1")
    missed = await back.until(lambda m: m["header"]["msg_type"] == "stream")
    assert missed["content"]["text"] == "while away\n"
    reply = await back.until(lambda m: m["header"]["msg_type"] == "execute_reply")
    assert reply["channel"] == "shell"


async def test_a_session_connecting_again_takes_over(agent: Agent) -> None:
    """A client reconnecting before its old connection is known to be gone (a half-open TCP
    connection): the old one is closed with 1001, the new one gets what was queued."""
    kernel_id = (await start_kernel(agent))["id"]
    first = await connect(agent, kernel_id, session="session-2")
    await first.execute("import time")
    await first.request("execute_request", {"code": "time.sleep(1); print('for the new one')"})
    second = await connect(agent, kernel_id, session="session-2")
    while await first.read() is not None:
        pass
    assert first.conn.close_code == 1001
    output = await second.until(lambda m: m["header"]["msg_type"] == "stream")
    assert output["content"]["text"] == "for the new one\n"
    assert (await agent.json(f"/api/kernels/{kernel_id}"))["connections"] == 1


@pytest.mark.parametrize(
    ("frame", "protocol", "code"),
    [
        ("text in a binary protocol", V1, 1003),
        (b"\x01\x00", V1, 1007),
        ((99).to_bytes(8, "little") + b"x" * 64, V1, 1007),
        ("not json", None, 1007),
        (json.dumps({"no": "header"}), None, 1007),
    ],
)
async def test_bad_frames_close_the_socket(
    agent: Agent, frame: str | bytes, protocol: str | None, code: int
) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id, protocol)
    await ws.conn.write_message(frame, binary=isinstance(frame, bytes))
    while await ws.read() is not None:
        pass
    assert ws.conn.close_code == code
    # The kernel is fine, and so is a new connection.
    assert (await (await connect(agent, kernel_id, protocol)).execute("1+1")).results == ["2"]


async def test_output_flood_is_bounded_for_a_slow_client(agent: Agent) -> None:
    """A client that reads nothing while the kernel prints 300 MB in 1 MB messages: output
    beyond the client's queue is dropped for it with one notice, and everything else (status,
    the reply) still arrives."""
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    await ws.execute("import sys; block = ('x' * 1023 + '\\n') * 1024")
    msg_id = await ws.request(
        "execute_request",
        {"code": "for _ in range(300):\n    sys.stdout.write(block); sys.stdout.flush()"},
    )
    await until_ran(agent, kernel_id, within=120)
    await ws.until(
        lambda m: (
            m["header"]["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            and m["parent_header"]["msg_id"] == msg_id
        ),
        within=120,
    )
    assert any(m["header"]["msg_type"] == "execute_reply" for m in ws.messages)
    output = [m for m in ws.messages if m["header"]["msg_type"] == "stream"]
    received = sum(len(m["content"]["text"]) for m in output)
    assert 1 << 20 < received < 100 << 20
    notices = [m for m in output if "not shown" in m["content"]["text"]]
    assert len(notices) == 1
    assert notices[0]["parent_header"]["msg_id"] == msg_id
    assert notices[0]["content"]["name"] == "stderr"


# -- lifecycle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("agent_args", [["--kernel-idle-timeout", "1"]])
async def test_idle_kernels_without_clients_are_culled(agent: Agent) -> None:
    await start_kernel(agent)  # nobody connects to this one
    watched = (await start_kernel(agent))["id"]
    ws = await connect(agent, watched)
    await ws.execute("1")

    async def culled() -> bool:
        return [k["id"] for k in await agent.json("/api/kernels")] == [watched]

    await until(culled, "the kernel without clients is culled", within=30)
    # Time passing is the point: the watched kernel outlives its idle timeout (1 s) twice.
    await asyncio.sleep(2)
    assert (await ws.execute("2")).results == ["2"]


async def test_health_reports_kernel_activity(agent: Agent) -> None:
    health = await agent.json("/api/health")
    assert health["last_kernel_activity"] is None
    assert health["kernels"] == 0
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    await ws.execute("1")
    first = (await agent.json("/api/health"))["last_kernel_activity"]
    # Time passing is the point: idle, with no messages, the time stays.
    await asyncio.sleep(1.2)
    assert (await agent.json("/api/health"))["last_kernel_activity"] == first
    await ws.request("execute_request", {"code": "import time; time.sleep(3)"})

    async def busy() -> bool:
        return bool((await agent.json("/api/health"))["last_kernel_activity"] > first)

    await until(busy, "a busy kernel counts as activity", within=10)


async def test_sigterm_shuts_kernels_down_cleanly(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    reply = await ws.execute(
        "import atexit, os\n"
        "from ipykernel.connect import get_connection_file\n"
        "atexit.register(lambda: open('goodbye.txt', 'w').write('clean exit'))\n"
        "print(os.getpid(), get_connection_file(), os.environ['IPYTHONDIR'])"
    )
    pid, connection_file, ipython_dir = reply.stdout.split()
    runtime = Path(connection_file).parent
    assert Path(ipython_dir).parent == runtime
    assert runtime.stat().st_mode & 0o777 == 0o700
    assert not runtime.is_relative_to(agent.root)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    assert gone(int(pid))
    assert (agent.root / "goodbye.txt").read_text() == "clean exit"
    assert not runtime.exists()


async def test_a_dead_kernel_is_restarted_and_clients_stay(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    await ws.execute("x = 1")
    await ws.request("execute_request", {"code": "import os; os._exit(1)"})
    restarting = await ws.until(
        lambda m: (
            m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "restarting"
        )
    )
    assert restarting["channel"] == "iopub"

    await until_state(agent, kernel_id, "idle", within=30)
    assert (await ws.execute("x")).errors == ["NameError"]
    assert [k["id"] for k in await agent.json("/api/kernels")] == [kernel_id]


@pytest.mark.slow
async def test_a_kernel_that_keeps_dying_is_removed(agent: Agent) -> None:
    kernel_id = (await start_kernel(agent))["id"]
    ws = await connect(agent, kernel_id)
    # Every new kernel process now exits while it starts (an IPython startup file).
    made = await ws.execute(
        "import os, pathlib\n"
        "startup = pathlib.Path(os.environ['IPYTHONDIR'], 'profile_default', 'startup')\n"
        "startup.mkdir(parents=True, exist_ok=True)\n"
        "(startup / '00-die.py').write_text('import os; os._exit(1)')\n"
        "print(startup / '00-die.py')"
    )
    startup_file = Path(made.stdout.strip())
    await ws.request("execute_request", {"code": "import os; os._exit(1)"})
    dead = await ws.until(
        lambda m: m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "dead",
        within=90,
    )
    assert dead["channel"] == "iopub"
    while await ws.read() is not None:
        pass

    async def removed() -> bool:
        return await agent.json("/api/kernels") == []

    await until(removed, "the dying kernel is removed", within=20)
    assert (await agent.fetch("GET", f"/api/kernels/{kernel_id}")).code == 404
    await asyncio.to_thread(startup_file.unlink)
    new = await connect(agent, (await start_kernel(agent))["id"])
    assert (await new.execute("1+1")).results == ["2"]
