"""Sharing a workspace: the members API, and every route checked against the caller's role."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from extensions.workspaces.roles import READ_ONLY_MESSAGE
from tests.client import Client, Response

TokenClientFactory = Callable[..., Awaitable[Client]]


async def shared_workspace(
    make_token_client: TokenClientFactory, **members: str
) -> tuple[str, Client, dict[str, Client]]:
    """alice's workspace, shared with each of ``members`` (username: role); their clients."""
    alice = await make_token_client("alice")
    ws = (await alice.post("/api/workspaces", {"name": "team"})).json["uuid"]
    clients = {}
    for username, role in members.items():
        clients[username] = await make_token_client(username)
        added = await alice.post(
            f"/api/workspaces/{ws}/members", {"username": username, "role": role}
        )
        assert added.status == 201, added.body
    return ws, alice, clients


def listed(response: Response) -> list[tuple[str, str]]:
    assert response.status == 200, response.body
    return [(member["username"], member["role"]) for member in response.json]


async def test_owner_shares_changes_and_revokes(make_token_client: TokenClientFactory) -> None:
    alice = await make_token_client("alice")
    bob = await make_token_client("bob")
    ws = (await alice.post("/api/workspaces", {"name": "team"})).json["uuid"]
    assert (await alice.get(f"/api/workspaces/{ws}")).json["shared"] is False
    assert (await bob.get(f"/api/workspaces/{ws}")).status == 404

    added = await alice.post(f"/api/workspaces/{ws}/members", {"username": "Bob", "role": "viewer"})
    assert added.status == 201, added.body
    assert (added.json["username"], added.json["role"]) == ("bob", "viewer")
    assert added.json["added_at"]
    assert added.headers["Location"] == f"/api/workspaces/{ws}/members/bob"

    expected = [("alice", "owner"), ("bob", "viewer")]
    assert listed(await alice.get(f"/api/workspaces/{ws}/members")) == expected
    assert listed(await bob.get(f"/api/workspaces/{ws}/members")) == expected

    # Both lists show it, marked with the caller's role, the owner and that it is shared.
    [mine] = (await alice.get("/api/workspaces")).json
    assert (mine["role"], mine["owner"], mine["shared"]) == ("owner", "alice", True)
    [theirs] = (await bob.get("/api/workspaces")).json
    assert (theirs["uuid"], theirs["name"]) == (ws, "team")
    assert (theirs["role"], theirs["owner"], theirs["shared"]) == ("viewer", "alice", True)
    assert (await bob.get(f"/api/workspaces/{ws}")).json["role"] == "viewer"

    changed = await alice.patch(f"/api/workspaces/{ws}/members/bob", {"role": "editor"})
    assert changed.status == 200, changed.body
    assert changed.json["role"] == "editor"
    assert (await bob.get(f"/api/workspaces/{ws}")).json["role"] == "editor"

    assert (await alice.delete(f"/api/workspaces/{ws}/members/bob")).status == 204
    assert (await bob.get("/api/workspaces")).json == []
    assert (await bob.get(f"/api/workspaces/{ws}")).status == 404
    assert (await bob.get(f"/w/{ws}/api/contents/main.py")).status == 404
    assert listed(await alice.get(f"/api/workspaces/{ws}/members")) == [("alice", "owner")]
    assert (await alice.get(f"/api/workspaces/{ws}")).json["shared"] is False


async def test_a_member_leaves_and_cannot_remove_others(
    make_token_client: TokenClientFactory,
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="editor", carol="viewer")
    bob, carol = members["bob"], members["carol"]
    refused = await bob.delete(f"/api/workspaces/{ws}/members/carol")
    assert refused.status == 403
    assert refused.json["reason"] == "owner_only"
    refused = await carol.delete(f"/api/workspaces/{ws}/members/bob")
    assert (refused.status, refused.json["message"]) == (403, READ_ONLY_MESSAGE)
    # Nor can anyone remove the owner, who may not leave either.
    assert (await bob.delete(f"/api/workspaces/{ws}/members/alice")).status == 403
    assert (await alice.delete(f"/api/workspaces/{ws}/members/alice")).status == 409

    assert (await carol.delete(f"/api/workspaces/{ws}/members/carol")).status == 204
    assert (await carol.get(f"/api/workspaces/{ws}")).status == 404
    expected = [("alice", "owner"), ("bob", "editor")]
    assert listed(await alice.get(f"/api/workspaces/{ws}/members")) == expected


async def test_members_see_the_shared_workspaces_sandboxes_in_the_list(
    make_token_client: TokenClientFactory,
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="viewer")
    bob = members["bob"]
    carol = await make_token_client("carol")
    private = (await alice.post("/api/workspaces", {"name": "alice only"})).json["uuid"]
    await bob.post("/api/workspaces", {"name": "bob's, never opened"})
    assert (await bob.post(f"/api/workspaces/{ws}/sandbox")).status == 200  # a viewer may start
    assert (await alice.post(f"/api/workspaces/{private}/sandbox")).status == 200

    def states(response: Response) -> list[tuple[str, str]]:
        assert response.status == 200, response.body
        return sorted((sandbox["workspace"], sandbox["state"]) for sandbox in response.json)

    # The owner's list has both; the member's only the shared one; anyone else's none.
    assert states(await alice.get("/api/sandboxes")) == sorted(
        [(ws, "running"), (private, "running")]
    )
    assert states(await bob.get("/api/sandboxes")) == [(ws, "running")]
    assert states(await carol.get("/api/sandboxes")) == []

    assert (await alice.delete(f"/api/workspaces/{ws}/members/bob")).status == 204
    assert states(await bob.get("/api/sandboxes")) == []
    assert (await alice.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
    assert (await alice.delete(f"/api/workspaces/{private}/sandbox")).status == 204


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"username": "nobody", "role": "viewer"}, 404, "not_found"),
        ({"username": "alice", "role": "viewer"}, 409, "conflict"),
        ({"username": "bob", "role": "viewer"}, 409, "conflict"),
        ({"username": "carol", "role": "owner"}, 400, "invalid_input"),
        ({"username": "carol", "role": "admin"}, 400, "invalid_input"),
        ({"username": "carol", "role": ["viewer"]}, 400, "invalid_input"),
        ({"username": "carol"}, 400, "invalid_input"),
        ({"username": {"name": "carol"}, "role": "viewer"}, 400, "invalid_input"),
        ({"role": "viewer"}, 400, "invalid_input"),
        ({"username": "carol", "role": "viewer", "admin": True}, 400, "invalid_input"),
        (["carol", "viewer"], 400, "invalid_json"),
    ],
)
async def test_sharing_refuses_bad_requests_and_changes_nothing(
    make_token_client: TokenClientFactory, body: Any, status: int, reason: str
) -> None:
    ws, alice, _ = await shared_workspace(make_token_client, bob="viewer")
    await make_token_client("carol")
    response = await alice.post(f"/api/workspaces/{ws}/members", body)
    assert (response.status, response.json["reason"]) == (status, reason), response.body
    assert listed(await alice.get(f"/api/workspaces/{ws}/members")) == [
        ("alice", "owner"),
        ("bob", "viewer"),
    ]


async def test_an_unknown_user_is_told_as_registration_would(
    make_token_client: TokenClientFactory, database_url: str
) -> None:
    ws, alice, _ = await shared_workspace(make_token_client)
    response = await alice.post(
        f"/api/workspaces/{ws}/members", {"username": "zed", "role": "viewer"}
    )
    assert response.status == 404
    assert response.json["message"] == "There is no user named 'zed' to share this workspace with."
    # A disabled account reads as no account: the answer says nothing of it.
    await make_token_client("dave")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("UPDATE users SET disabled = true WHERE username = 'dave'")
    response = await alice.post(
        f"/api/workspaces/{ws}/members", {"username": "dave", "role": "viewer"}
    )
    assert response.status == 404
    assert response.json["message"] == "There is no user named 'dave' to share this workspace with."


async def test_role_changes_are_checked(make_token_client: TokenClientFactory) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="viewer")
    await make_token_client("carol")
    members_url = f"/api/workspaces/{ws}/members"
    assert (await alice.patch(f"{members_url}/carol", {"role": "editor"})).status == 404
    assert (await alice.patch(f"{members_url}/nobody", {"role": "editor"})).status == 404
    assert (await alice.patch(f"{members_url}/alice", {"role": "viewer"})).status == 409
    assert (await alice.patch(f"{members_url}/bob", {"role": "owner"})).status == 400
    assert (await alice.patch(f"{members_url}/bob", {"role": None})).status == 400
    assert (await alice.patch(f"{members_url}/bob", {})).status == 400
    assert (await alice.delete(f"{members_url}/carol")).status == 404
    # Only the owner changes roles: a member cannot raise their own.
    refused = await members["bob"].patch(f"{members_url}/bob", {"role": "editor"})
    assert (refused.status, refused.json["message"]) == (403, READ_ONLY_MESSAGE)
    assert listed(await alice.get(members_url)) == [("alice", "owner"), ("bob", "viewer")]


async def test_an_editor_may_change_everything_but_sharing_and_deleting(
    make_token_client: TokenClientFactory,
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="editor")
    bob = members["bob"]
    await make_token_client("carol")
    saved = await bob.request(
        "PUT",
        f"/w/{ws}/api/contents/notes.txt",
        {"type": "file", "format": "text", "content": "by bob"},
    )
    assert saved.status == 201, saved.body
    assert (await alice.get(f"/w/{ws}/api/contents/notes.txt")).json["content"] == "by bob"
    renamed = await bob.patch(f"/api/workspaces/{ws}", {"name": "renamed by bob"})
    assert (renamed.status, renamed.json["name"], renamed.json["role"]) == (
        200,
        "renamed by bob",
        "editor",
    )
    assert (await alice.get(f"/api/workspaces/{ws}")).json["name"] == "renamed by bob"

    for method, path, body in [
        ("DELETE", f"/api/workspaces/{ws}", None),
        ("POST", f"/api/workspaces/{ws}/members", {"username": "carol", "role": "viewer"}),
        ("PATCH", f"/api/workspaces/{ws}/members/bob", {"role": "viewer"}),
    ]:
        refused = await bob.request(method, path, body)
        assert (refused.status, refused.json["reason"]) == (403, "owner_only"), (method, path)
    assert (await alice.get(f"/api/workspaces/{ws}")).status == 200
    assert listed(await alice.get(f"/api/workspaces/{ws}/members")) == [
        ("alice", "owner"),
        ("bob", "editor"),
    ]
    # The owner deletes it: gone for the member too.
    assert (await alice.delete(f"/api/workspaces/{ws}")).status == 204
    assert (await bob.get("/api/workspaces")).json == []


def read_routes(ws: str) -> list[str]:
    """A GET of every kind of route of a workspace (REST)."""
    return [
        f"/api/workspaces/{ws}",
        f"/api/workspaces/{ws}/members",
        f"/api/workspaces/{ws}/sandbox",
        f"/api/workspaces/{ws}/packages",
        f"/w/{ws}/api/contents",
        f"/w/{ws}/api/contents/main.py",
        f"/w/{ws}/api/contents/main.py/checkpoints",
        f"/w/{ws}/files/main.py",
        f"/w/{ws}/api/terminals",
        f"/w/{ws}/api/terminals/1",
        f"/w/{ws}/api/kernels",
        f"/w/{ws}/api/kernels/{uuid.uuid4()}",
        f"/w/{ws}/api/sessions",
        f"/w/{ws}/api/sessions/{uuid.uuid4()}",
        f"/w/{ws}/api/kernelspecs",
        f"/w/{ws}/api/search?q=main",
        f"/w/{ws}/api/search/files?q=main",
        f"/w/{ws}/lsp/status",
    ]


def write_routes(ws: str) -> list[tuple[str, str, Any]]:
    """Every kind of request that changes a workspace (method, path, body)."""
    kernel, session = uuid.uuid4(), uuid.uuid4()
    file_model = {"type": "file", "format": "text", "content": "changed"}
    return [
        ("PUT", f"/w/{ws}/api/contents/main.py", file_model),
        ("PUT", f"/w/{ws}/api/contents/new.py", file_model),
        ("POST", f"/w/{ws}/api/contents", {"type": "file"}),
        ("PATCH", f"/w/{ws}/api/contents/main.py", {"path": "moved.py"}),
        ("DELETE", f"/w/{ws}/api/contents/main.py", None),
        ("POST", f"/w/{ws}/api/contents/main.py/checkpoints", None),
        ("POST", f"/w/{ws}/api/terminals", None),
        ("DELETE", f"/w/{ws}/api/terminals/1", None),
        ("POST", f"/w/{ws}/api/kernels", {"name": "python3"}),
        ("DELETE", f"/w/{ws}/api/kernels/{kernel}", None),
        ("POST", f"/w/{ws}/api/kernels/{kernel}/restart", None),
        ("POST", f"/w/{ws}/api/kernels/{kernel}/interrupt", None),
        ("POST", f"/w/{ws}/api/sessions", {"path": "a.ipynb", "type": "notebook"}),
        ("PATCH", f"/w/{ws}/api/sessions/{session}", {"name": "x"}),
        ("DELETE", f"/w/{ws}/api/sessions/{session}", None),
        ("DELETE", f"/api/workspaces/{ws}/sandbox", None),
        ("DELETE", f"/api/workspaces/{ws}/packages/numpy", None),
        ("PATCH", f"/api/workspaces/{ws}", {"name": "renamed"}),
        ("DELETE", f"/api/workspaces/{ws}", None),
        ("POST", f"/api/workspaces/{ws}/members", {"username": "carol", "role": "editor"}),
        ("PATCH", f"/api/workspaces/{ws}/members/bob", {"role": "editor"}),
        ("DELETE", f"/api/workspaces/{ws}/members/alice", None),
    ]


async def test_a_viewer_reads_and_is_refused_every_write(
    make_token_client: TokenClientFactory,
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="viewer")
    bob = members["bob"]
    await make_token_client("carol")
    for path in read_routes(ws):
        response = await bob.get(path)
        # A kernel or session that does not exist, or a terminal without a sandbox, is a 404
        # of its own: the workspace was found.
        assert response.status in {200, 404}, (path, response.body)
        if response.status == 404:
            assert "workspace" not in response.json["message"].lower(), path
    main = (await bob.get(f"/w/{ws}/api/contents/main.py")).json
    assert main["content"].startswith('"""')
    # Jupyter clients open a viewer's files read-only.
    assert main["writable"] is False
    listing = (await bob.get(f"/w/{ws}/api/contents")).json
    assert [listing["writable"], *(child["writable"] for child in listing["content"])] == [
        False,
        False,
    ]
    assert (await alice.get(f"/w/{ws}/api/contents/main.py")).json["writable"] is True

    before = (await alice.get(f"/api/workspaces/{ws}")).json
    for method, path, body in write_routes(ws):
        refused = await bob.request(method, path, body)
        assert refused.status == 403, (method, path, refused.body)
        assert refused.json["message"] == READ_ONLY_MESSAGE, (method, path)
        assert refused.json["reason"] == "read_only"
    after = (await alice.get(f"/api/workspaces/{ws}")).json
    assert after == before  # the name, the bytes, the last activity: nothing changed
    names = [item["name"] for item in (await alice.get(f"/w/{ws}/api/contents")).json["content"]]
    assert names == ["main.py"]
    assert (await alice.get(f"/w/{ws}/api/contents/main.py/checkpoints")).json == []
    assert (await alice.get(f"/w/{ws}/api/terminals")).json == []
    assert (await alice.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "stopped"
    assert listed(await alice.get(f"/api/workspaces/{ws}/members")) == [
        ("alice", "owner"),
        ("bob", "viewer"),
    ]


async def test_an_unshared_workspace_is_404_everywhere(
    make_token_client: TokenClientFactory, base_url: str
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="viewer")
    carol = await make_token_client("carol")
    for path in read_routes(ws):
        response = await carol.get(path)
        assert response.status == 404, (path, response.body)
        assert response.json["reason"] == "not_found"
    for method, path, body in write_routes(ws):
        response = await carol.request(method, path, body)
        assert response.status == 404, (method, path, response.body)
    ws_url = base_url.replace("http", "ws", 1)
    for path in [
        f"/w/{ws}/api/events",
        f"/w/{ws}/terminals/websocket/1",
        f"/w/{ws}/api/kernels/{uuid.uuid4()}/channels",
        f"/w/{ws}/lsp/ws/pylsp",
    ]:
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(f"{ws_url}{path}?token={carol.token}")
        assert refused.value.code == 404, path
    # A viewer may not open the language server's socket at all.
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(f"{ws_url}/w/{ws}/lsp/ws/pylsp?token={members['bob'].token}")
    assert refused.value.code == 403
    assert (await alice.get(f"/api/workspaces/{ws}")).status == 200
