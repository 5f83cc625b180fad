"""What an agent loads only when first used: the kernels' and the language servers' code (seen in
the import log of a real agent, ``python -v``), and the agent's bytecode that the local
spawner writes so that sandboxes do not compile it at every start."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from extensions.sandboxes.spawners.local import LocalSpawner
from tests.test_agent import REPO, Agent, start, wait_listening

IMPORTED = re.compile(r"^import '([\w.]+)' #", re.MULTILINE)
LAZY_MODULES = ("kernel_image.kernel_handlers", "kernel_image.kernel", "kernel_image.lsp_handlers")


def imported(log: Path) -> set[str]:
    """The modules an agent run with ``python -v`` has imported so far."""
    return set(IMPORTED.findall(log.read_text()))


@pytest.fixture
def traced_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    """An agent that logs every import (``python -v``) on a free TCP port."""
    monkeypatch.setenv("PYTHONVERBOSE", "1")
    proc, root, log = start(tmp_path, "--port", "0")
    running = Agent(proc, root, log, wait_listening(proc, log))
    yield running
    running.close()
    assert "Traceback" not in log.read_text(), log.read_text()


async def test_a_terminal_loads_no_kernel_or_language_server_code(traced_agent: Agent) -> None:
    name = await traced_agent.new_terminal()
    ws = await traced_agent.ws(name)
    await ws.stdin("echo rea''dy\r")
    await ws.read_until("ready")
    loaded = imported(traced_agent.log)
    assert "kernel_image.terminals" in loaded
    assert loaded.isdisjoint(LAZY_MODULES), loaded & set(LAZY_MODULES)
    assert "curses" not in loaded


async def test_the_first_request_loads_the_kernel_routes(traced_agent: Agent) -> None:
    specs = await traced_agent.json("/api/kernelspecs")
    assert "python3" in specs["kernelspecs"]
    assert "kernel_image.kernel_handlers" in imported(traced_agent.log)
    assert await traced_agent.json("/api/kernels") == []
    logo = await traced_agent.fetch("GET", "/kernelspecs/python3/logo-64x64.png")
    assert logo.code == 200
    assert logo.body.startswith(b"\x89PNG")


async def test_the_first_request_loads_the_language_server_routes(traced_agent: Agent) -> None:
    status = await traced_agent.json("/lsp/status")
    assert "pylsp" in status["sessions"]
    assert "kernel_image.lsp_handlers" in imported(traced_agent.log)


@pytest.mark.parametrize("path", ["/api/kernelsx", "/api/kernels/a/b/c", "/lsp/nothing"])
async def test_lazy_paths_without_a_route_are_json_404s(traced_agent: Agent, path: str) -> None:
    response = await traced_agent.fetch("GET", path)
    assert response.code == 404
    assert json.loads(response.body) == {"message": "no such endpoint"}
    unauthenticated = await traced_agent.fetch("GET", path, token=None)
    assert unauthenticated.code == 401


def stale_bytecode(package: Path) -> list[str]:
    """The package's modules without bytecode as new as their source."""
    stale = []
    for source in package.glob("*.py"):
        cached = Path(importlib.util.cache_from_source(str(source)))
        if not cached.is_file() or cached.stat().st_mtime < source.stat().st_mtime:
            stale.append(source.name)
    return stale


async def test_local_spawner_writes_the_agent_bytecode(tmp_path: Path) -> None:
    package = tmp_path / "kernel_image"
    shutil.copytree(REPO / "kernel_image", package, ignore=shutil.ignore_patterns("__pycache__"))
    assert stale_bytecode(package)
    spawner = LocalSpawner(data_dir=str(tmp_path / "data"), agent_package=str(package))
    await spawner.check()
    assert stale_bytecode(package) == []
