"""Sandbox lifecycle under load and across replicas: many starts on a small connection pool,
the warm pool under culling, and reconciling while sandboxes start elsewhere."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.spawners.local import LocalSpawner
from platform_server.app import PlatformApp
from tests.client import Client
from tests.test_local_spawner import cgroup_limits, enforced
from tests.waiting import until

TokenClientFactory = Callable[..., Awaitable[Client]]


def sandboxes_of(app: PlatformApp) -> Sandboxes:
    return cast(Sandboxes, app.web_app.settings["sandboxes"])


async def unassigned_rows(sandboxes: Sandboxes) -> list[dict[str, Any]]:
    """The rows of sandboxes without a workspace (the warm pool, and what it leaves)."""
    async with sandboxes.db.connection() as conn:
        cur = await conn.execute(
            "SELECT id, state FROM sandboxes WHERE workspace_id IS NULL ORDER BY created_at"
        )
        return list(await cur.fetchall())


async def fill_warm_pool(sandboxes: Sandboxes) -> str:
    """Fill a warm pool of one sandbox, then stop refilling it; return the sandbox's id."""
    sandboxes.spawner.warm_pool_size = 1

    async def filled() -> list[dict[str, Any]] | None:
        rows = await unassigned_rows(sandboxes)
        if rows and rows[0]["state"] == "running":
            return rows
        await sandboxes.fill_pool()
        return None

    try:
        (row,) = await until(filled, "the pool is filled", interval=0.1)
    finally:
        sandboxes.spawner.warm_pool_size = 0
    return str(row["id"])


async def running_ids(sandboxes: Sandboxes) -> set[str]:
    return {handle.sandbox_id for handle in await sandboxes.spawner.find_running()}


class TestSmallConnectionPool:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"PlatformApp": {"db_pool_size": 3, "db_timeout": 2.0}}

    async def test_more_starts_than_connections_and_requests_are_still_served(
        self, make_token_client: TokenClientFactory, jp_serverapp: PlatformApp
    ) -> None:
        api = await make_token_client()
        workspaces = [
            (await api.post("/api/workspaces", {"name": f"ws{i}"})).json["uuid"] for i in range(5)
        ]
        starts = [
            asyncio.ensure_future(api.post(f"/api/workspaces/{ws}/sandbox")) for ws in workspaces
        ]
        listings = []

        async def started() -> bool:
            listings.append((await api.get("/api/workspaces")).status)
            return all(start.done() for start in starts)

        await until(started, "the five sandboxes have started", within=60)
        assert [(await start).status for start in starts] == [200] * 5
        assert listings
        assert set(listings) == {200}
        assert len(await running_ids(sandboxes_of(jp_serverapp))) == 5


class TestWarmPoolCulling:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Sandboxes": {"idle_timeout": 1}}

    async def test_a_warm_sandbox_waiting_for_a_workspace_is_not_idle(
        self, jp_serverapp: PlatformApp
    ) -> None:
        sandboxes = sandboxes_of(jp_serverapp)
        pooled = await fill_warm_pool(sandboxes)
        # Time passing is the point: the pooled sandbox waits longer than the idle timeout.
        await asyncio.sleep(1.5)
        assert await sandboxes.cull_once() == 0
        assert await unassigned_rows(sandboxes) == [{"id": uuid.UUID(pooled), "state": "running"}]
        assert await running_ids(sandboxes) == {pooled}

    async def test_a_warm_sandbox_past_max_age_is_stopped_and_its_row_deleted(
        self, jp_serverapp: PlatformApp
    ) -> None:
        sandboxes = sandboxes_of(jp_serverapp)
        await fill_warm_pool(sandboxes)
        sandboxes.max_age = 1

        async def culled() -> bool:
            return bool(await sandboxes.cull_once() == 1)

        await until(culled, "the warm sandbox past its maximum age is culled", within=10)
        assert await unassigned_rows(sandboxes) == []
        assert await running_ids(sandboxes) == set()

    async def test_rows_of_ended_warm_sandboxes_go_and_a_workspace_keeps_its_stopped_row(
        self, make_token_client: TokenClientFactory, jp_serverapp: PlatformApp
    ) -> None:
        sandboxes = sandboxes_of(jp_serverapp)
        api = await make_token_client()
        ws = (await api.post("/api/workspaces", {"name": "kept"})).json["uuid"]
        assert (await api.post(f"/api/workspaces/{ws}/sandbox")).status == 200
        assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
        async with sandboxes.db.connection() as conn:
            # What a failed pool start and a pool sandbox that died leave behind.
            await conn.execute(
                """INSERT INTO sandboxes (workspace_id, state, spawner, reason)
                   VALUES (NULL, 'failed', 'LocalSpawner', 'no bwrap'),
                          (NULL, 'stopped', 'LocalSpawner', NULL)"""
            )
        await sandboxes.reconcile()
        assert await unassigned_rows(sandboxes) == []
        kept = await sandboxes.row(uuid.UUID(ws))
        assert kept is not None
        assert kept["state"] == "stopped"
        # The next start replaces the stopped row.
        assert (await api.post(f"/api/workspaces/{ws}/sandbox")).status == 200
        started = await sandboxes.row(uuid.UUID(ws))
        assert started is not None
        assert started["state"] == "running"
        assert started["id"] != kept["id"]


async def test_reconcile_keeps_a_sandbox_started_while_it_runs(
    make_token_client: TokenClientFactory,
    jp_serverapp: PlatformApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandboxes = sandboxes_of(jp_serverapp)
    api = await make_token_client()
    ws = uuid.UUID((await api.post("/api/workspaces", {"name": "racing"})).json["uuid"])
    find_running = sandboxes.spawner.find_running

    async def started_elsewhere_then_listed() -> list[Any]:
        # Another replica starts the workspace's sandbox while this one reconciles.
        await sandboxes.ensure_running(ws)
        return await find_running()

    with monkeypatch.context() as patched:
        patched.setattr(sandboxes.spawner, "find_running", started_elsewhere_then_listed)
        await sandboxes.reconcile()
    row = await sandboxes.current(ws)
    assert row is not None
    assert row["state"] == "running"
    assert await running_ids(sandboxes) == {str(row["id"])}


async def test_reconcile_leaves_a_warm_sandbox_being_claimed(
    make_token_client: TokenClientFactory,
    jp_serverapp: PlatformApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandboxes = sandboxes_of(jp_serverapp)
    pooled = await fill_warm_pool(sandboxes)
    async with sandboxes.db.connection() as conn:
        # An hour in the pool, as a warm sandbox may wait.
        await conn.execute(
            """UPDATE sandboxes SET created_at = created_at - interval '1 hour',
                   state_since = state_since - interval '1 hour'
               WHERE id = %s""",
            [pooled],
        )
    api = await make_token_client()
    ws = (await api.post("/api/workspaces", {"name": "claiming"})).json["uuid"]
    load_files = sandboxes.load_files

    async def reconciled_then_loaded(*args: Any, **kwargs: Any) -> int:
        # Another replica reconciles while the claimed sandbox gets its files.
        await sandboxes.reconcile()
        return await load_files(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(sandboxes, "load_files", reconciled_then_loaded)
        assert (await api.post(f"/api/workspaces/{ws}/sandbox")).status == 200
    row = await sandboxes.row(uuid.UUID(ws))
    assert row is not None
    assert (str(row["id"]), row["state"]) == (pooled, "running")
    assert await running_ids(sandboxes) == {pooled}


async def test_a_claim_whose_files_do_not_load_in_time_falls_back_to_a_new_sandbox(
    make_token_client: TokenClientFactory,
    jp_serverapp: PlatformApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim is bounded by start_timeout like a start (reconcile discards what outlives
    twice that): the stuck pooled sandbox is discarded and a fresh one takes its place."""
    sandboxes = sandboxes_of(jp_serverapp)
    pooled = await fill_warm_pool(sandboxes)
    api = await make_token_client()
    ws = (await api.post("/api/workspaces", {"name": "slow load"})).json["uuid"]
    load_files = sandboxes.load_files

    async def stuck_once(*args: Any, **kwargs: Any) -> int:
        patched.setattr(sandboxes, "load_files", load_files)  # the fresh sandbox loads fine
        await asyncio.sleep(3600)
        return 0

    with monkeypatch.context() as patched:
        patched.setattr(sandboxes, "start_timeout", 1.0)
        patched.setattr(sandboxes, "load_files", stuck_once)
        started = await api.post(f"/api/workspaces/{ws}/sandbox")
    assert started.status == 200
    row = await sandboxes.row(uuid.UUID(ws))
    assert row is not None
    assert row["state"] == "running"
    assert str(row["id"]) != pooled
    assert await running_ids(sandboxes) == {str(row["id"])}


async def test_sandboxes_are_held_to_the_cpu_limit_before_anyone_uses_them(
    make_token_client: TokenClientFactory, jp_serverapp: PlatformApp
) -> None:
    sandboxes = sandboxes_of(jp_serverapp)
    spawner = sandboxes.spawner
    assert isinstance(spawner, LocalSpawner)
    await enforced(spawner, "cpu")
    assert spawner.start_cpu_limit > spawner.cpu_limit  # they start faster than they run
    api = await make_token_client()
    ws = (await api.post("/api/workspaces", {"name": "limited"})).json["uuid"]
    assert (await api.post(f"/api/workspaces/{ws}/sandbox")).status == 200
    await fill_warm_pool(sandboxes)
    handles = await spawner.find_running()
    assert len(handles) == 2  # the workspace's, and the warm pool's
    quota = f"{round(spawner.cpu_limit * 100_000)} 100000"
    assert [cgroup_limits(handle)["cpu.max"] for handle in handles] == [quota, quota]
