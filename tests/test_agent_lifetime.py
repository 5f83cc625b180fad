"""Sandboxes end themselves after their limits when no platform is left: the agent's own idle,
maximum-age and unclaimed limits (``kernel_image.lifetime``), and how the platform sets them."""

from __future__ import annotations

import asyncio
import io
import signal
import tarfile
from pathlib import Path
from typing import Any

import pytest

from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.spawners.base import AgentLifetime, Spawner
from extensions.sandboxes.spawners.k8s_objects import PodOptions, make_sandbox_pod
from extensions.sandboxes.spawners.local import LocalSpawner
from kernel_image.lifetime import Lifetime, Limits
from tests.test_agent import Agent, gone, start, wait_listening
from tests.test_restart import Platform
from tests.test_restart import data_dir as data_dir  # the fixture
from tests.waiting import until


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lifetime(
    limits: Limits, *, activity: float | None = None, unsynced: bool = False
) -> tuple[Lifetime, Clock]:
    clock = Clock()
    return Lifetime(limits, lambda: activity, lambda: unsynced, now=clock), clock


def test_a_claimed_sandbox_ends_after_its_idle_limit_and_requests_that_change_things_reset_it() -> (
    None
):
    life, clock = lifetime(Limits(idle_timeout=60))
    clock.now += 3600
    assert life.why_stop() is None, "never idle-stopped before a workspace is loaded"
    life.claim()
    clock.now += 59
    life.heard(changes=False)  # a GET (listing, health) is not activity
    clock.now += 2
    assert life.why_stop() == "idle for 60 s"
    life.heard(changes=True)
    clock.now += 59
    assert life.why_stop() is None


def test_terminal_or_kernel_activity_keeps_a_sandbox() -> None:
    clock = Clock()
    last_input = [clock.now]
    life = Lifetime(Limits(idle_timeout=60), lambda: last_input[0], lambda: False, now=clock)
    life.claim()
    clock.now += 50
    last_input[0] = clock.now
    clock.now += 50
    assert life.why_stop() is None
    clock.now += 11
    assert life.why_stop() == "idle for 60 s"


def test_an_idle_sandbox_with_changes_not_yet_synced_waits_for_its_maximum_age() -> None:
    life, clock = lifetime(Limits(idle_timeout=60, max_age=600), unsynced=True)
    life.claim()
    clock.now += 300
    assert life.why_stop() is None
    clock.now += 301
    assert life.why_stop() == "older than 600 s"


def test_a_pool_sandbox_ends_once_no_platform_has_asked_anything_for_its_limit() -> None:
    life, clock = lifetime(Limits(unclaimed_timeout=300))
    clock.now += 299
    life.heard(changes=False)  # the platform's health check
    clock.now += 299
    assert life.why_stop() is None
    clock.now += 2
    assert life.why_stop() == "unclaimed and alone for 300 s"
    life.claim()
    assert life.why_stop() is None, "a claimed sandbox is no longer in the pool"


def test_zero_disables_every_limit() -> None:
    life, clock = lifetime(Limits())
    life.claim()
    clock.now += 10**9
    assert life.why_stop() is None


def empty_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


async def ended(agent: Agent, why: str) -> None:
    await until(lambda: gone(agent.pid), f"the agent ends by itself ({why})", within=30)
    assert f"ending the sandbox: {why}" in agent.log.read_text()


async def test_an_agent_no_platform_talks_to_ends_by_itself(tmp_path: Path) -> None:
    proc, root, log = start(tmp_path, "--port", "0", "--unclaimed-timeout", "1")
    agent = Agent(proc, root, log, wait_listening(proc, log))
    try:
        await ended(agent, "unclaimed and alone for 1 s")
        assert proc.wait(5) == 0
    finally:
        agent.close()


async def test_an_idle_claimed_agent_ends_by_itself_and_stops_its_terminals(
    tmp_path: Path,
) -> None:
    proc, root, log = start(tmp_path, "--port", "0", "--idle-timeout", "2")
    agent = Agent(proc, root, log, wait_listening(proc, log))
    try:
        assert (await agent.fetch("PUT", "/api/tree", empty_tar())).code == 200
        name = await agent.new_terminal()
        ws = await agent.ws(name)
        await ws.stdin("echo $((6 * 7))\r")
        await ws.read_until("42")
        await ended(agent, "idle for 2 s")
    finally:
        agent.close()


async def test_a_busy_agent_still_ends_at_its_maximum_age(tmp_path: Path) -> None:
    proc, root, log = start(tmp_path, "--port", "0", "--max-age", "3", "--idle-timeout", "60")
    agent = Agent(proc, root, log, wait_listening(proc, log))
    try:
        assert (await agent.fetch("PUT", "/api/tree", empty_tar())).code == 200
        name = await agent.new_terminal()
        ws = await agent.ws(name)

        async def type_forever() -> None:
            while True:
                await ws.stdin("true\r")
                await asyncio.sleep(0.2)  # a user typing, not synchronisation

        typing = asyncio.create_task(type_forever())
        try:
            await ended(agent, "older than 3 s")
        finally:
            typing.cancel()
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, AgentLifetime(1800 + 300, 7200 + 300, 300)),
        (
            {"idle_timeout": 0, "max_age": 60, "self_stop_margin": 5, "pool_alone_timeout": 30},
            AgentLifetime(0, 65, 30),
        ),
        ({"health_interval": 0}, AgentLifetime(2100, 7500, 0)),
    ],
)
def test_the_platform_gives_agents_its_culling_limits_plus_a_margin(
    settings: dict[str, Any], expected: AgentLifetime
) -> None:
    spawner = Spawner()
    Sandboxes(spawner=spawner, **settings)
    assert spawner.lifetime == expected
    assert expected.args() == [
        f"--idle-timeout={expected.idle_timeout:g}",
        f"--max-age={expected.max_age:g}",
        f"--unclaimed-timeout={expected.unclaimed_timeout:g}",
    ]


def test_sandbox_pods_pass_the_limits_to_the_agent() -> None:
    options = AgentLifetime(2100, 7500, 300).args()
    pod = make_sandbox_pod(PodOptions("abc", "ns", "image:1", agent_options=tuple(options)))
    (container,) = pod.spec.containers
    assert container.args[-3:] == options


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_pool_sandboxes_left_by_a_stopped_platform_end_by_themselves(
    database_url: str, data_dir: Path, stop_signal: signal.Signals
) -> None:
    platform = Platform(
        database_url,
        data_dir,
        "--Spawner.warm_pool_size=1",
        "--Sandboxes.pool_alone_timeout=3",
        "--Sandboxes.health_interval=0.5",
    )
    await platform.start()
    spawner = LocalSpawner(data_dir=str(data_dir))
    try:
        await until(lambda: spawner_finds(spawner, 1), "a warm-pool sandbox", within=60)
        assert platform.process is not None
        # Ctrl-C too (make run): a clean stop, not a KeyboardInterrupt out of the loop.
        platform.process.send_signal(stop_signal)
        assert await asyncio.to_thread(platform.process.wait, 60) == 0
        log = platform.log.read_text()
        assert "sandboxes | 1 keep running after this process (1 in the warm pool)" in log, log
        assert "in the warm pool, after 3 s alone" in log, log
        await until(lambda: spawner_finds(spawner, 0), "the pool sandbox to end", within=60)
    finally:
        if platform.process is not None and platform.process.poll() is None:
            platform.kill()


async def spawner_finds(spawner: LocalSpawner, count: int) -> bool:
    return len(await spawner.find_running()) == count
