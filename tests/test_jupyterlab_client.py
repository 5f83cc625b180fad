"""JupyterLab's own client library (``@jupyterlab/services`` from npm, run by Node) against a
workspace: the proof that a JupyterLab front end works unchanged at ``/w/<uuid>/``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tests.client import Client

JS = Path(__file__).parent / "js"


async def run_node(script: str, base_url: str, token: str) -> Any:
    """Run ``tests/js/<script>`` against ``base_url``; return the JSON it prints."""
    node = shutil.which("node")
    assert node, "Node.js 20+ is needed for the JupyterLab client tests"
    assert (JS / "node_modules" / "@jupyterlab" / "services").exists(), "run `make install`"
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS / script),
        env={**os.environ, "BASE_URL": base_url, "TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def test_contents_manager_drives_a_workspace(make_user: Any, base_url: str) -> None:
    browser = await make_user()
    workspace = (await browser.post("/api/workspaces", {"name": "lab"})).json
    token = (await browser.post("/api/accounts/tokens", {"name": "lab"})).json["token"]

    seen = await run_node("contents.mjs", f"{base_url}/w/{workspace['uuid']}/", token)

    assert seen["saved"] == {"path": "hello.txt", "type": "file", "hasDate": True}
    assert seen["read"] == "hello from jupyterlab"
    assert seen["untitledDir"] == "Untitled Folder"
    assert seen["untitledFile"] == "Untitled Folder/untitled.py"
    assert seen["renamedDir"] == "src"
    assert seen["listing"] == ["src/untitled.py"]
    assert seen["copy"] == "src/hello.txt"
    assert seen["notebook"] == "Untitled.ipynb"
    assert seen["notebookFormat"] == 4
    assert seen["notebookCells"] == 1
    assert seen["checkpoints"] >= 1
    assert seen["restored"] == "hello from jupyterlab"
    assert seen["checkpointsAfterDelete"] == seen["checkpoints"] - 1
    assert seen["root"] == ["Untitled.ipynb", "hello.txt", "main.py"]
    assert seen["deletedGone"] is True

    api = Client(base_url, token=token)
    saved = await api.get(f"/w/{workspace['uuid']}/api/contents/hello.txt")
    assert saved.json["content"] == "hello from jupyterlab"


async def test_terminal_manager_runs_commands_in_the_sandbox(make_user: Any, base_url: str) -> None:
    browser = await make_user()
    workspace = (await browser.post("/api/workspaces", {"name": "lab"})).json
    token = (await browser.post("/api/accounts/tokens", {"name": "lab"})).json["token"]

    seen = await run_node("terminals.mjs", f"{base_url}/w/{workspace['uuid']}/", token)

    assert seen == {
        "name": "1",
        "answered": True,
        "scrollbackReplayed": True,
        "inputAfterReconnect": True,
        "listed": ["1"],
        "afterShutdown": [],
    }
