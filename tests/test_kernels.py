"""Jupyter kernels per workspace, end to end: the platform's kernel, kernelspec and session APIs,
real sandboxes, real agents, real ipykernel kernels; JupyterLab's own client library from Node.
"""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tornado.httpclient import HTTPClientError

from tests.client import Client
from tests.kernel_client import V1, KernelSocket, close_opened
from tests.test_agent_kernels import LOOP, looping
from tests.test_jupyterlab_client import run_node
from tests.test_restart import Platform, data_dir  # noqa: F401  (fixture)
from tests.waiting import until

PROTOCOLS = [pytest.param(V1, id="v1"), pytest.param(None, id="json")]


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    """Close every kernel WebSocket a test opened."""
    yield
    close_opened()


async def workspace(make_user: Any, base_url: str, username: str = "alice") -> tuple[Client, str]:
    """A user's API client (token) and a new workspace's uuid."""
    browser = await make_user(username)
    ws = (await browser.post("/api/workspaces", {"name": "kernels"})).json["uuid"]
    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    return Client(base_url, token=token), ws


async def start_kernel(api: Client, ws: str, **body: Any) -> dict[str, Any]:
    response = await api.post(f"/w/{ws}/api/kernels", body)
    assert response.status == 201, response.body
    assert response.headers["Location"] == f"/w/{ws}/api/kernels/{response.json['id']}"
    model: dict[str, Any] = response.json
    return model


async def connect(
    base_url: str, api: Client, ws: str, kernel_id: str, protocol: str | None = V1
) -> KernelSocket:
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/kernels/{kernel_id}/channels"
    return await KernelSocket.open(f"{url}?token={api.token}", protocol=protocol)


async def test_jupyterlab_services_run_a_notebook_kernel(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    created = await api.request(
        "PUT", f"/w/{ws}/api/contents/nb", {"type": "directory"}, headers={}
    )
    assert created.status == 201

    seen = await run_node("kernels.mjs", f"{base_url}/w/{ws}/", api.token or "")

    assert seen == {
        "defaultSpec": "python3",
        "specNames": ["python3"],
        "sessionPath": "nb/analysis.ipynb",
        "kernelName": "python3",
        "language": "python",
        "protocol": V1,
        "printed": "42\n",
        "numpy": ["np.int64(3)"],
        "cwd": "/workspace/nb",
        "wrote": ["21"],
        "reusedSession": True,
        "reusedKernel": True,
        "interrupted": "KeyboardInterrupt",
        "afterInterrupt": ["1"],
        "afterRestart": ["NameError"],
        "stillWorks": "after restart\n",
        "sessions": ["nb/analysis.ipynb"],
        "kernels": [True],
        "sessionsAfterShutdown": 0,
        "kernelsAfterShutdown": 0,
    }

    # The file the kernel wrote reaches PostgreSQL through file sync.
    async def synced() -> Any:
        response = await api.get(f"/w/{ws}/api/contents/nb/from_kernel.txt")
        return response.json if response.status == 200 else None

    model = await until(synced, "the file the kernel wrote reaches storage", within=30)
    assert model["content"] == "written by the kernel"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_both_websocket_protocols(
    make_user: Any, base_url: str, protocol: str | None
) -> None:
    api, ws = await workspace(make_user, base_url)
    kernel = await start_kernel(api, ws)
    assert kernel["name"] == "python3"
    socket = await connect(base_url, api, ws, kernel["id"], protocol)
    assert (await socket.execute("print(6*7)")).stdout == "42\n"
    assert (await socket.execute("import numpy; numpy.arange(3).sum()")).results == ["np.int64(3)"]
    plotted = await socket.execute(
        "import matplotlib.pyplot as plt; plt.plot([1, 3, 2]); plt.show()", within=120
    )
    assert plotted.errors == []
    [figure] = plotted.displays
    assert base64.b64decode(figure["image/png"]).startswith(b"\x89PNG\r\n")
    listed = (await api.get(f"/w/{ws}/api/kernels")).json
    assert [(k["id"], k["connections"], k["execution_state"]) for k in listed] == [
        (kernel["id"], 1, "idle")
    ]
    assert (await api.delete(f"/w/{ws}/api/kernels/{kernel['id']}")).status == 204
    while await socket.read() is not None:
        pass
    assert (await api.get(f"/w/{ws}/api/kernels/{kernel['id']}")).status == 404
    assert (await api.get(f"/w/{ws}/api/kernels")).json == []


async def test_interrupt_restart_and_cookie_auth(make_user: Any, base_url: str) -> None:
    browser = await make_user()
    ws = (await browser.post("/api/workspaces", {"name": "cookies"})).json["uuid"]
    kernel = (await browser.post(f"/w/{ws}/api/kernels", {})).json
    without_xsrf = Client(base_url, cookies=dict(browser.cookies), send_xsrf=False)
    assert (await without_xsrf.post(f"/w/{ws}/api/kernels/{kernel['id']}/interrupt")).status == 403

    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    api = Client(base_url, token=token)
    socket = await connect(base_url, api, ws, kernel["id"])
    await socket.execute("x = 1")
    loop_id = await socket.request("execute_request", {"code": LOOP, "stop_on_error": False})

    async def busy() -> bool:
        model = (await browser.get(f"/w/{ws}/api/kernels/{kernel['id']}")).json
        return bool(model["execution_state"] == "busy")

    await until(busy, "the loop keeps the kernel busy", within=30)
    await socket.until(lambda m: looping(m, loop_id))
    assert (await browser.post(f"/w/{ws}/api/kernels/{kernel['id']}/interrupt")).status == 204
    error = await socket.until(
        lambda m: m["header"]["msg_type"] == "error" and m["parent_header"]["msg_id"] == loop_id
    )
    assert error["content"]["ename"] == "KeyboardInterrupt"
    assert (await socket.execute("x")).results == ["1"]
    restarted = await browser.post(f"/w/{ws}/api/kernels/{kernel['id']}/restart")
    assert restarted.status == 200
    assert restarted.json["execution_state"] == "idle"
    assert (await socket.execute("x")).errors == ["NameError"]


async def test_websocket_origin_is_checked(make_user: Any, base_url: str) -> None:
    browser = await make_user()
    ws = (await browser.post("/api/workspaces", {"name": "origin"})).json["uuid"]
    kernel = (await browser.post(f"/w/{ws}/api/kernels", {})).json
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/kernels/{kernel['id']}/channels"
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    with pytest.raises(HTTPClientError) as refused:
        await KernelSocket.open(url, headers={"Cookie": cookie, "Origin": "https://evil.example"})
    assert refused.value.code == 403
    host = base_url.split("//", 1)[1].rstrip("/")
    same_origin = await KernelSocket.open(
        url, headers={"Cookie": cookie, "Origin": f"http://{host}"}
    )
    assert (await same_origin.execute("1+1")).results == ["2"]


async def test_kernels_cannot_see_other_workspaces(
    make_user: Any, base_url: str, tmp_path: Path
) -> None:
    api, first = await workspace(make_user, base_url)
    second = (await api.post("/api/workspaces", {"name": "other"})).json["uuid"]
    one = await connect(base_url, api, first, (await start_kernel(api, first))["id"])
    two = await connect(base_url, api, second, (await start_kernel(api, second))["id"])
    assert (await one.execute("open('secret.txt', 'w').write('mine')")).results == ["4"]
    seen = await two.execute(
        "import os, glob\n"
        "print(os.getcwd(), os.path.exists('secret.txt'), "
        "glob.glob('/workspace/**/secret.txt', recursive=True) "
        "+ glob.glob('/tmp/**/secret.txt', recursive=True), "
        f"os.path.exists({str(tmp_path)!r}))"
    )
    assert seen.stdout == "/workspace False [] False\n"
    assert (await one.execute("print(open('secret.txt').read())")).stdout == "mine\n"


async def test_other_users_get_404(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    kernel = await start_kernel(api, ws)
    session = await api.post(f"/w/{ws}/api/sessions", {"path": "a.ipynb", "type": "notebook"})
    assert session.status == 201
    mallory, _ = await workspace(make_user, base_url, "mallory")
    kid, sid = kernel["id"], session.json["id"]
    for method, path in [
        ("GET", "api/kernelspecs"),
        ("GET", "api/kernels"),
        ("POST", "api/kernels"),
        ("GET", f"api/kernels/{kid}"),
        ("DELETE", f"api/kernels/{kid}"),
        ("POST", f"api/kernels/{kid}/interrupt"),
        ("POST", f"api/kernels/{kid}/restart"),
        ("GET", "api/sessions"),
        ("POST", "api/sessions"),
        ("GET", f"api/sessions/{sid}"),
        ("PATCH", f"api/sessions/{sid}"),
        ("DELETE", f"api/sessions/{sid}"),
    ]:
        body = {"path": "b.ipynb", "type": "notebook"} if method in {"POST", "PATCH"} else None
        response = await mallory.request(method, f"/w/{ws}/{path}", body)
        assert response.status == 404, (method, path, response.body)
    with pytest.raises(HTTPClientError) as refused:
        await connect(base_url, mallory, ws, kid)
    assert refused.value.code == 404
    anonymous = Client(base_url)
    assert (await anonymous.get(f"/w/{ws}/api/kernels")).status == 401
    # Nothing changed for the owner.
    assert [k["id"] for k in (await api.get(f"/w/{ws}/api/kernels")).json] == [
        kid,
        session.json["kernel"]["id"],
    ]


@pytest.mark.parametrize("jp_server_config", [{"Kernels": {"max_kernels_per_workspace": 2}}])
async def test_kernel_cap_per_workspace(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    await start_kernel(api, ws)
    await start_kernel(api, ws)
    refused = await api.post(f"/w/{ws}/api/kernels", {})
    assert refused.status == 409
    assert refused.json["reason"] == "conflict"
    assert len((await api.get(f"/w/{ws}/api/kernels")).json) == 2


async def test_kernelspecs_without_and_with_a_sandbox(make_user: Any, base_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    specs = await api.get(f"/w/{ws}/api/kernelspecs")
    assert specs.status == 200
    assert specs.json["default"] == "python3"
    assert specs.json["kernelspecs"]["python3"]["spec"]["language"] == "python"
    sandbox = await api.get(f"/api/workspaces/{ws}/sandbox")
    assert sandbox.json["state"] == "stopped"  # listing kernelspecs starts nothing

    await start_kernel(api, ws)
    specs = await api.get(f"/w/{ws}/api/kernelspecs")
    python3 = specs.json["kernelspecs"]["python3"]
    assert python3["spec"]["display_name"] == "Python 3 (ipykernel)"
    logo_url = python3["resources"]["logo-64x64"]
    assert logo_url == f"/w/{ws}/kernelspecs/python3/logo-64x64.png"
    logo = await api.get(logo_url)
    assert logo.status == 200
    assert logo.headers["Content-Type"] == "image/png"
    assert logo.body.startswith(b"\x89PNG")
    assert (await api.get(f"/w/{ws}/api/kernelspecs/python3")).json == python3
    assert (await api.get(f"/w/{ws}/api/kernelspecs/ruby")).status == 404
    assert (await api.get(f"/w/{ws}/kernelspecs/python3/nope.png")).status == 404
    bad = await api.post(f"/w/{ws}/api/kernels", {"name": "ruby"})
    assert bad.status == 400


async def test_sessions_api(make_user: Any, base_url: str, database_url: str) -> None:
    api, ws = await workspace(make_user, base_url)
    base = f"/w/{ws}/api/sessions"
    assert (await api.get(base)).json == []
    for body, status in [
        (None, 400),
        ({"type": "notebook"}, 400),
        ({"path": "a.ipynb"}, 400),
        ({"path": 3, "type": "notebook"}, 400),
        ({"path": "a.ipynb", "type": "notebook", "kernel": {"name": "ruby"}}, 501),
    ]:
        response = await api.post(base, body)
        assert response.status == status, (body, response.body)
    assert (await api.request("POST", base, raw_body=b"{not json")).status == 400

    created = await api.post(
        base, {"path": "a.ipynb", "type": "notebook", "name": "a.ipynb", "kernel": {}}
    )
    assert created.status == 201
    session = created.json
    assert set(session) == {"id", "path", "name", "type", "kernel", "notebook"}
    assert session["notebook"] == {"path": "a.ipynb", "name": "a.ipynb"}
    assert session["kernel"]["name"] == "python3"
    assert created.headers["Location"] == f"{base}/{session['id']}"
    # Stored in PostgreSQL, so every replica sees it.
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT path, kernel_id FROM kernel_sessions").fetchall()
    assert rows == [("a.ipynb", session["kernel"]["id"])]

    again = await api.post(base, {"path": "a.ipynb", "type": "notebook"})
    assert again.status == 201
    assert again.json["id"] == session["id"]
    console = await api.post(
        base,
        {"path": "console-1", "type": "console", "kernel": {"id": session["kernel"]["id"]}},
    )
    assert console.json["kernel"]["id"] == session["kernel"]["id"]
    assert [s["path"] for s in (await api.get(base)).json] == ["a.ipynb", "console-1"]
    assert (await api.get(f"{base}/{session['id']}")).json["path"] == "a.ipynb"

    renamed = await api.patch(f"{base}/{session['id']}", {"path": "b.ipynb", "name": "b.ipynb"})
    assert renamed.status == 200
    assert (renamed.json["path"], renamed.json["kernel"]["id"]) == (
        "b.ipynb",
        session["kernel"]["id"],
    )
    taken = await api.patch(f"{base}/{session['id']}", {"path": "console-1"})
    assert taken.status == 409
    bad_kernel = await api.patch(f"{base}/{session['id']}", {"kernel": {"id": "0-0-0-0-0"}})
    assert bad_kernel.status == 400

    # A new kernel for the console: its old kernel is shut down (as jupyter_server does), which
    # also ends the notebook's session that shared it.
    switched = await api.patch(f"{base}/{console.json['id']}", {"kernel": {"name": "python3"}})
    assert switched.status == 200
    new_kernel = switched.json["kernel"]["id"]
    assert new_kernel != session["kernel"]["id"]
    assert [k["id"] for k in (await api.get(f"/w/{ws}/api/kernels")).json] == [new_kernel]
    assert [s["path"] for s in (await api.get(base)).json] == ["console-1"]
    assert (await api.get(f"{base}/{session['id']}")).status == 404

    assert (await api.delete(f"{base}/{console.json['id']}")).status == 204
    assert (await api.get(f"/w/{ws}/api/kernels")).json == []
    assert (await api.get(base)).json == []
    assert (await api.delete(f"{base}/{console.json['id']}")).status == 404
    assert (await api.get(f"{base}/not-a-uuid-at-all-x")).status == 404


async def test_renaming_a_session_renames_it_for_the_restarted_kernel(
    make_user: Any, base_url: str
) -> None:
    """As jupyter_server: after a rename, the kernel restarts with the new JPY_SESSION_NAME."""
    api, ws = await workspace(make_user, base_url)
    base = f"/w/{ws}/api/sessions"
    session = (await api.post(base, {"path": "a.ipynb", "type": "notebook"})).json
    kernel_id = session["kernel"]["id"]
    socket = await connect(base_url, api, ws, kernel_id)
    show = "import os; print(os.environ['JPY_SESSION_NAME'])"
    assert (await socket.execute(show)).stdout == "/workspace/a.ipynb\n"
    renamed = await api.patch(f"{base}/{session['id']}", {"path": "b.ipynb"})
    assert renamed.status == 200
    assert (await api.post(f"/w/{ws}/api/kernels/{kernel_id}/restart")).status == 200
    assert (await socket.execute(show)).stdout == "/workspace/b.ipynb\n"


async def test_stopping_the_sandbox_ends_kernels_and_sessions(
    make_user: Any, base_url: str
) -> None:
    api, ws = await workspace(make_user, base_url)
    session = await api.post(f"/w/{ws}/api/sessions", {"path": "a.ipynb", "type": "notebook"})
    assert session.status == 201
    assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
    assert (await api.get(f"/w/{ws}/api/kernels")).json == []
    assert (await api.get(f"/w/{ws}/api/sessions")).json == []
    assert (await api.get(f"/w/{ws}/api/kernels/{session.json['kernel']['id']}")).status == 404
    # Opening the notebook again starts a new sandbox and kernel.
    again = await api.post(f"/w/{ws}/api/sessions", {"path": "a.ipynb", "type": "notebook"})
    assert again.status == 201
    assert again.json["kernel"]["id"] != session.json["kernel"]["id"]


async def test_stopping_the_sandbox_shuts_kernels_down_cleanly(
    make_user: Any, base_url: str, jp_serverapp: Any
) -> None:
    """The agent is asked to exit before its sandbox is killed: kernels run their atexit code."""
    api, ws = await workspace(make_user, base_url)
    kernel = await start_kernel(api, ws)
    socket = await connect(base_url, api, ws, kernel["id"])
    # The kernel's stdout and stderr are /dev/null: it leaves a file in the sandbox's /tmp.
    registered = await socket.execute(
        "import atexit, pathlib\n"
        "atexit.register(pathlib.Path('/tmp/exited').write_text, 'the kernel exited cleanly')"
    )
    assert registered.errors == []
    spawner = jp_serverapp.web_app.settings["sandboxes"].spawner
    (handle,) = await spawner.find_running()
    # Read through a descriptor of the sandbox's /tmp opened before the stop (the tmpfs lives
    # on as long as it is open), from the host: through its init's root.
    tmp = os.open(f"/proc/{handle.state['pid']}/root/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
        exited = os.open("exited", os.O_RDONLY, dir_fd=tmp)
        try:
            said = os.read(exited, 100).decode()
        finally:
            os.close(exited)
    finally:
        os.close(tmp)
    assert said == "the kernel exited cleanly"
    assert not await spawner.find_running()


async def test_a_killed_sandbox_closes_kernel_sockets_for_a_reconnect(
    make_user: Any, base_url: str, jp_serverapp: Any
) -> None:
    """The agent's connection is lost: 1011, on which JupyterLab reconnects (and then learns
    that the kernel is gone), never 1000/1001, on which it would give up silently."""
    api, ws = await workspace(make_user, base_url)
    kernel = await start_kernel(api, ws)
    socket = await connect(base_url, api, ws, kernel["id"])
    assert (await socket.execute("1+1")).results == ["2"]
    sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    (handle,) = await sandboxes.spawner.find_running()
    os.kill(int(handle.state["pid"]), signal.SIGKILL)
    while await socket.read() is not None:
        pass
    assert socket.conn.close_code == 1011

    async def gone() -> bool:
        # 503 while the sandbox is not yet known to be dead (JupyterLab retries), then 404.
        with pytest.raises(HTTPClientError) as refused:
            await connect(base_url, api, ws, kernel["id"])
        assert refused.value.code in {404, 503}
        return refused.value.code == 404

    await until(gone, "the dead sandbox's kernel is gone", within=10)
    assert (await api.get(f"/w/{ws}/api/kernels")).json == []


@pytest.mark.slow
async def test_kernels_survive_a_platform_restart(
    database_url: str,
    data_dir: Path,  # noqa: F811
) -> None:
    """kill -9 the platform while a cell runs: after the restart the kernel, its state, its
    session and the output produced meanwhile are all there."""
    platform = Platform(database_url, data_dir)
    await platform.start()
    _, api = await platform.sign_up()
    token = api.token
    ws = (await api.post("/api/workspaces", {"name": "kept"})).json["uuid"]
    session = (
        await api.post(f"/w/{ws}/api/sessions", {"path": "a.ipynb", "type": "notebook"})
    ).json
    kernel_id = session["kernel"]["id"]
    url = platform.url.replace("http", "ws", 1) + f"/w/{ws}/api/kernels/{kernel_id}/channels"
    socket = await KernelSocket.open(f"{url}?token={token}", session="lab-client-1")
    await socket.execute("x = 41; import time")
    msg_id = await socket.request(
        "execute_request", {"code": "time.sleep(2); print('while the platform was down')"}
    )
    await socket.until(
        lambda m: (
            m["header"]["msg_type"] == "status"
            and m["content"]["execution_state"] == "busy"
            and m["parent_header"]["msg_id"] == msg_id
        )
    )

    platform.kill()
    await platform.start()

    listed = (await api.get(f"/w/{ws}/api/kernels")).json
    assert [k["id"] for k in listed] == [kernel_id]
    assert (await api.get(f"/w/{ws}/api/sessions/{session['id']}")).json["kernel"][
        "id"
    ] == kernel_id
    again = await KernelSocket.open(f"{url}?token={token}", session="lab-client-1")
    missed = await again.until(lambda m: m["header"]["msg_type"] == "stream")
    assert missed["content"]["text"] == "while the platform was down\n"
    assert (await again.execute("x + 1")).results == ["42"]
    platform.kill()


@pytest.mark.parametrize("jp_server_config", [{"Spawner": {"spare_kernel": True}}])
async def test_the_first_kernel_of_a_workspace_is_ready_at_once(
    make_user: Any, base_url: str
) -> None:
    api, ws = await workspace(make_user, base_url)
    first = await start_kernel(api, ws, name="python3")
    # Started ahead of time in the sandbox: idle when the start answers.
    assert first["execution_state"] == "idle"
    socket = await connect(base_url, api, ws, first["id"])
    reply = await socket.execute("import os; print(os.getcwd())")
    assert reply.stdout == "/workspace\n"
    second = await start_kernel(api, ws, name="python3")
    assert second["execution_state"] == "starting"
