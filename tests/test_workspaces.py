"""Workspaces: CRUD, limits, ownership on every route, and the per-workspace Jupyter routes."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from tests.client import Client, Response
from tests.conftest import UserFactory

TokenClientFactory = Callable[..., Awaitable[Client]]


async def create_workspace(api: Client, name: str = "project") -> dict[str, Any]:
    response = await api.post("/api/workspaces", {"name": name})
    assert response.status == 201, response.body
    workspace: dict[str, Any] = response.json
    return workspace


async def put_text(api: Client, workspace: str, path: str, text: str) -> Response:
    return await api.request(
        "PUT",
        f"/w/{workspace}/api/contents/{path}",
        {"type": "file", "format": "text", "content": text},
    )


async def test_create_returns_model_and_starter_file(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    response = await api.post("/api/workspaces", {"name": "My project ✨"})
    assert response.status == 201
    workspace = response.json
    assert set(workspace) >= {"uuid", "name", "created_at", "updated_at", "last_activity"}
    assert workspace["name"] == "My project ✨"
    assert uuid.UUID(workspace["uuid"])
    assert response.headers["Location"] == f"/api/workspaces/{workspace['uuid']}"

    main = await api.get(f"/w/{workspace['uuid']}/api/contents/main.py")
    assert main.status == 200
    assert main.json["type"] == "file"
    assert "Hello" in main.json["content"]
    listing = await api.get(f"/w/{workspace['uuid']}/api/contents")
    assert [item["name"] for item in listing.json["content"]] == ["main.py"]


async def test_list_is_newest_activity_first_and_only_mine(
    make_token_client: TokenClientFactory,
) -> None:
    alice = await make_token_client("alice")
    bob = await make_token_client("bob")
    first = await create_workspace(alice, "first")
    second = await create_workspace(alice, "second")
    await create_workspace(bob, "bob's")
    listed = (await alice.get("/api/workspaces")).json
    assert [w["uuid"] for w in listed] == [second["uuid"], first["uuid"]]

    renamed = await alice.patch(f"/api/workspaces/{first['uuid']}", {"name": "renamed"})
    assert renamed.status == 200
    assert renamed.json["name"] == "renamed"
    listed = (await alice.get("/api/workspaces")).json
    assert [w["name"] for w in listed] == ["renamed", "second"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "line\nbreak"},
        {"name": "tab\there"},
        {"name": 42},
        {},
        {"name": "ok", "owner": "bob"},
    ],
)
async def test_bad_names_are_refused_and_change_nothing(
    make_token_client: TokenClientFactory, body: dict[str, Any]
) -> None:
    api = await make_token_client()
    workspace = await create_workspace(api, "kept")
    response = await api.post("/api/workspaces", body)
    assert response.status == 400
    assert response.json["message"]
    patch = await api.patch(f"/api/workspaces/{workspace['uuid']}", body)
    assert patch.status == 400
    listed = (await api.get("/api/workspaces")).json
    assert [w["name"] for w in listed] == ["kept"]


class TestLimit:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Workspaces": {"max_workspaces_per_user": 2}}

    async def test_creating_past_the_limit_is_409(
        self, make_token_client: TokenClientFactory
    ) -> None:
        api = await make_token_client()
        await create_workspace(api, "one")
        await create_workspace(api, "two")
        response = await api.post("/api/workspaces", {"name": "three"})
        assert response.status == 409
        assert "2 workspaces" in response.json["message"]
        assert len((await api.get("/api/workspaces")).json) == 2


async def test_delete_removes_files(
    make_token_client: TokenClientFactory, database_url: str
) -> None:
    api = await make_token_client()
    workspace = await create_workspace(api)
    ws = workspace["uuid"]
    assert (await put_text(api, ws, "notes.txt", "keep me")).status == 201
    assert (await api.delete(f"/api/workspaces/{ws}")).status == 204
    assert (await api.get(f"/api/workspaces/{ws}")).status == 404
    assert (await api.get(f"/w/{ws}/api/contents/notes.txt")).status == 404
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM workspace_items WHERE workspace_id = %s", [ws]
        ).fetchone()
    assert row == (0,)
    assert (await api.delete(f"/api/workspaces/{ws}")).status == 404


def every_workspace_route(ws: str) -> list[tuple[str, str, Any]]:
    file_model = {"type": "file", "format": "text", "content": "x"}
    return [
        ("GET", f"/api/workspaces/{ws}", None),
        ("PATCH", f"/api/workspaces/{ws}", {"name": "stolen"}),
        ("DELETE", f"/api/workspaces/{ws}", None),
        ("GET", f"/w/{ws}/api/contents", None),
        ("GET", f"/w/{ws}/api/contents/main.py", None),
        ("PUT", f"/w/{ws}/api/contents/main.py", file_model),
        ("PUT", f"/w/{ws}/api/contents/new.py", file_model),
        ("POST", f"/w/{ws}/api/contents", {"type": "file"}),
        ("PATCH", f"/w/{ws}/api/contents/main.py", {"path": "moved.py"}),
        ("DELETE", f"/w/{ws}/api/contents/main.py", None),
        ("GET", f"/w/{ws}/api/contents/main.py/checkpoints", None),
        ("POST", f"/w/{ws}/api/contents/main.py/checkpoints", None),
        ("POST", f"/w/{ws}/api/contents/main.py/checkpoints/1", None),
        ("DELETE", f"/w/{ws}/api/contents/main.py/checkpoints/1", None),
        ("GET", f"/w/{ws}/files/main.py", None),
    ]


async def test_another_users_workspace_is_404_on_every_route(
    make_token_client: TokenClientFactory,
) -> None:
    alice = await make_token_client("alice")
    mallory = await make_token_client("mallory")
    workspace = await create_workspace(alice)
    ws = workspace["uuid"]
    for method, path, body in every_workspace_route(ws):
        response = await mallory.request(method, path, body)
        assert response.status == 404, (method, path, response.status)
    main = await alice.get(f"/w/{ws}/api/contents/main.py")
    assert main.status == 200
    assert "Hello" in main.json["content"]
    assert (await alice.get(f"/api/workspaces/{ws}")).json["name"] == "project"


@pytest.mark.parametrize(
    "ws", ["not-a-uuid", str(uuid.uuid4()), "00000000-0000-0000-0000-00000000000"]
)
async def test_unknown_or_malformed_workspace_is_404(
    make_token_client: TokenClientFactory, ws: str
) -> None:
    api = await make_token_client()
    for method, path, body in every_workspace_route(ws):
        response = await api.request(method, path, body)
        assert response.status == 404, (method, path, response.status)


async def test_workspace_routes_need_authentication(
    make_token_client: TokenClientFactory, client: Client
) -> None:
    workspace = await create_workspace(await make_token_client())
    ws = workspace["uuid"]
    assert (await client.get("/api/workspaces")).status == 401
    assert (await client.get(f"/api/workspaces/{ws}")).status == 401
    assert (await client.get(f"/w/{ws}/api/contents/main.py")).status in {401, 403}
    put = await put_text(client, ws, "main.py", "overwritten")
    assert put.status in {401, 403}


async def test_cookie_writes_need_xsrf_token_writes_do_not(
    make_user: UserFactory, base_url: str
) -> None:
    browser = await make_user()
    workspace = await create_workspace(browser)
    ws = workspace["uuid"]
    no_xsrf = Client(base_url, cookies=dict(browser.cookies), send_xsrf=False)
    assert (await put_text(no_xsrf, ws, "a.txt", "x")).status == 403
    assert (await no_xsrf.post("/api/workspaces", {"name": "x"})).status == 403
    assert (await browser.get(f"/w/{ws}/api/contents/a.txt")).status == 404
    assert (await put_text(browser, ws, "a.txt", "x")).status == 201

    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    for scheme in ("token", "Bearer"):
        api = Client(base_url, token=token, token_scheme=scheme)
        assert (await put_text(api, ws, f"{scheme}.txt", "y")).status == 201


async def test_location_points_into_the_workspace(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    ws = (await create_workspace(api))["uuid"]
    response = await put_text(api, ws, "dir%20x.txt", "hi")
    assert response.status == 201
    assert response.headers["Location"] == f"/w/{ws}/api/contents/dir%20x.txt"
    untitled = await api.post(f"/w/{ws}/api/contents", {"type": "file", "ext": ".txt"})
    assert untitled.status == 201
    assert untitled.headers["Location"] == f"/w/{ws}/api/contents/untitled.txt"


async def test_files_route_serves_bytes_safely(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    ws = (await create_workspace(api))["uuid"]
    await put_text(api, ws, "notes.txt", "plain words")
    page = "<script>fetch('/api/accounts/tokens')</script>"
    await put_text(api, ws, "page.html", page)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    await api.request(
        "PUT",
        f"/w/{ws}/api/contents/pic.png",
        {"type": "file", "format": "base64", "content": base64.b64encode(png).decode()},
    )

    text = await api.get(f"/w/{ws}/files/notes.txt")
    assert text.status == 200
    assert text.body == b"plain words"
    assert text.headers["Content-Type"].startswith("text/plain")
    assert "attachment" not in text.headers.get("Content-Disposition", "")

    download = await api.get(f"/w/{ws}/files/notes.txt?download=1")
    assert "attachment" in download.headers["Content-Disposition"]

    image = await api.get(f"/w/{ws}/files/pic.png")
    assert image.body == png
    assert image.headers["Content-Type"] == "image/png"

    html = await api.get(f"/w/{ws}/files/page.html")
    assert html.status == 200
    assert html.body == page.encode()
    assert "attachment" in html.headers["Content-Disposition"]
    csp = html.headers["Content-Security-Policy"]
    assert "sandbox" in csp
    assert "allow-same-origin" not in csp
    assert "allow-scripts" not in csp
    assert html.headers["X-Content-Type-Options"] == "nosniff"
