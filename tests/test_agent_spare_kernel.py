"""The spare kernel (``--spare-kernel``): started ahead, unlisted, handed to the first kernel
start in its folder and session, a fresh process at restart, shut down when left unused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_agent import Agent, wait_listening
from tests.test_agent_kernels import (  # noqa: F401 (close_sockets: a fixture)
    close_sockets,
    connect,
    start_agent,
    start_kernel,
)
from tests.test_agent_lifetime import empty_tar
from tests.waiting import until

SPARE_READY = re.compile(r"kernel (\S+) \| spare, ready")
SHOW = "import os; print(os.getcwd(), os.environ.get('JPY_SESSION_NAME'), __session__, os.getpid())"


def spare_agent(tmp_path: Path, *args: str) -> Agent:
    proc, root, log = start_agent(tmp_path, "--port", "0", "--spare-kernel", *args)
    return Agent(proc, root, log, wait_listening(proc, log))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = spare_agent(tmp_path)
    yield running
    running.close()


async def spare_id(agent: Agent) -> str:
    """The spare's id, once the agent says it is ready."""

    def ready() -> str | None:
        found = SPARE_READY.search(agent.log.read_text())
        return found.group(1) if found else None

    return await until(ready, "the spare kernel is ready", within=60)


async def test_the_first_kernel_is_the_spare_moved_to_its_folder_and_session(
    agent: Agent,
) -> None:
    spare = await spare_id(agent)
    assert await agent.json("/api/kernels") == []
    (agent.root / "sub").mkdir()
    model = await start_kernel(agent, path="sub/nb.ipynb", session_name="sub/nb.ipynb")
    assert model["id"] == spare
    assert model["execution_state"] == "idle"
    ws = await connect(agent, spare)
    reply = await ws.execute(SHOW)
    cwd, env_name, session, pid = reply.stdout.split()
    notebook = str(agent.root / "sub" / "nb.ipynb")
    assert (cwd, env_name, session) == (str(agent.root / "sub"), notebook, notebook)
    # Taking it ran nothing the user can see: this is the first execution.
    assert reply.shell is not None
    assert reply.shell["execution_count"] == 1

    # A restart is a fresh process, in the same folder and session.
    assert (await agent.fetch("POST", f"/api/kernels/{spare}/restart")).code == 200
    again = (await ws.execute(SHOW)).stdout.split()
    assert again[:3] == [cwd, env_name, session]
    assert again[3] != pid

    # Only the first start is served ahead.
    second = await start_kernel(agent)
    assert second["id"] != spare
    assert {k["id"] for k in await agent.json("/api/kernels")} == {spare, second["id"]}


async def test_an_unused_spare_is_shut_down_after_the_workspace_opened(tmp_path: Path) -> None:
    agent = spare_agent(tmp_path, "--spare-kernel-timeout", "0.5")
    try:
        spare = await spare_id(agent)
        assert (await agent.fetch("PUT", "/api/tree", empty_tar())).code == 200
        await until(
            lambda: "spare shut down (unused)" in agent.log.read_text(), "the spare is shut down"
        )
        model = await start_kernel(agent)
        assert model["id"] != spare
    finally:
        agent.close()
