"""HTTP-level attacks: the URL table, secrets in logs, malformed input and hostile file names."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tornado.routing import Rule, RuleRouter

from platform_server.app import PlatformApp
from tests.client import Client, Response
from tests.conftest import UserFactory

TokenClientFactory = Callable[..., Awaitable[Client]]

# Every request handler the platform means to serve. A handler that is not listed here fails
# test_url_table_serves_only_allowed_handlers: add it only if it reads nothing of the server's
# own disk and reaches none of its processes.
ALLOWED_HANDLERS = frozenset(
    {
        # jupyter_server's: its own static files, API root, identity, CSP reports, metrics.
        "jupyter_server.base.handlers.FileFindHandler",
        "jupyter_server.base.handlers.PublicStaticFileHandler",
        "jupyter_server.base.handlers.TrailingSlashHandler",
        "jupyter_server.base.handlers.APIVersionHandler",
        "jupyter_server.base.handlers.PrometheusMetricsHandler",
        "jupyter_server.services.api.handlers.APISpecHandler",
        "jupyter_server.services.api.handlers.APIStatusHandler",
        "jupyter_server.services.security.handlers.CSPReportHandler",
        # the platform's own
        "platform_server.handlers.HealthHandler",
        "platform_server.handlers.LivenessHandler",
        "platform_server.handlers.NotFoundHandler",
        "platform_server.handlers.OpenAPIHandler",
        "platform_server.handlers.PlatformIdentityHandler",
        "extensions.accounts.handlers.RegisterHandler",
        "extensions.accounts.handlers.LoginHandler",
        "extensions.accounts.handlers.LogoutHandler",
        "extensions.accounts.handlers.MeHandler",
        "extensions.accounts.handlers.PasswordHandler",
        "extensions.accounts.handlers.TokensHandler",
        "extensions.accounts.handlers.TokenHandler",
        "extensions.accounts.handlers.AdminUsersHandler",
        "extensions.accounts.handlers.AdminUserHandler",
        "extensions.ide.handlers.RootHandler",
        "extensions.ide.handlers.LoginPageHandler",
        "extensions.ide.handlers.RegisterPageHandler",
        "extensions.ide.handlers.WorkspacesPageHandler",
        "extensions.ide.handlers.IdePageHandler",
        "extensions.ide.handlers.AssetsHandler",
        "extensions.kernels.handlers.KernelSpecsHandler",
        "extensions.kernels.handlers.KernelSpecHandler",
        "extensions.kernels.handlers.KernelSpecResourceHandler",
        "extensions.kernels.handlers.MainKernelHandler",
        "extensions.kernels.handlers.KernelHandler",
        "extensions.kernels.handlers.KernelActionHandler",
        "extensions.kernels.handlers.SessionRootHandler",
        "extensions.kernels.handlers.SessionHandler",
        "extensions.kernels.proxy.KernelProxyHandler",
        "extensions.language_servers.handlers.LanguageServerStatusHandler",
        "extensions.language_servers.handlers.LanguageServerProxyHandler",
        "extensions.collaboration.handlers.CollaborationHandler",
        "extensions.sandboxes.handlers.SandboxListHandler",
        "extensions.sandboxes.handlers.SandboxHandler",
        "extensions.sandboxes.packages.handlers.PackagesHandler",
        "extensions.sandboxes.packages.handlers.PackageHandler",
        "extensions.sandboxes.handlers.SandboxProgressHandler",
        "extensions.sandboxes.events_handler.EventsHandler",
        "extensions.terminals.handlers.TerminalRootHandler",
        "extensions.terminals.handlers.TerminalHandler",
        "extensions.terminals.proxy.TerminalProxyHandler",
        "extensions.workspaces.handlers.WorkspaceListHandler",
        "extensions.workspaces.handlers.WorkspaceHandler",
        "extensions.workspaces.member_handlers.MemberListHandler",
        "extensions.workspaces.member_handlers.MemberHandler",
        "extensions.workspaces.jupyter_handlers.WorkspaceCheckpointsHandler",
        "extensions.workspaces.jupyter_handlers.WorkspaceModifyCheckpointsHandler",
        "extensions.workspaces.jupyter_handlers.WorkspaceContentsHandler",
        "extensions.workspaces.jupyter_handlers.WorkspaceFilesHandler",
        "extensions.workspaces.search_handlers.SearchHandler",
        "extensions.workspaces.search_handlers.FileNameSearchHandler",
    }
)

# Bidirectional controls: they make "evil\u202egnp.exe" display as "evilexe.png".
BIDI_CONTROLS = [
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",
]

WEBSOCKET_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
}


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """alice administers (so that the administrators' endpoints parse her bodies); bob not."""
    return {"Accounts": {"admin_users": ["alice"]}}


# --- helpers -------------------------------------------------------------------------------


def handler_rules(router: RuleRouter) -> Iterator[tuple[str, Any]]:
    """``(pattern, target)`` of every rule, nested routers included."""
    for rule in router.rules:
        assert isinstance(rule, Rule)
        if isinstance(rule.target, RuleRouter):
            yield from handler_rules(rule.target)
        else:
            regex = getattr(rule.matcher, "regex", None)
            yield (regex.pattern if regex is not None else repr(rule.matcher)), rule.target


def assert_json_error(response: Response, status: int, reason: str | None = None) -> None:
    """A JSON ``{"message", "reason"}`` error with this status (and reason, when given)."""
    assert response.status == status, (response.status, response.body[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json
    assert isinstance(body["message"], str), body
    assert body["message"], body
    assert isinstance(body["reason"], str), body
    assert body["reason"], body
    if reason is not None:
        assert body["reason"] == reason, body


async def workspace_of(api: Client, name: str = "project") -> str:
    response = await api.post("/api/workspaces", {"name": name})
    assert response.status == 201, response.body
    return str(response.json["uuid"])


async def token_of(browser: Client) -> str:
    response = await browser.post("/api/accounts/tokens", {"name": "t"})
    assert response.status == 201, response.body
    return str(response.json["token"])


def stored_rows(database_url: str) -> list[tuple[Any, ...]]:
    """Every file, checkpoint and pending upload chunk, as stored."""
    with psycopg.connect(database_url) as conn:
        files = conn.execute(
            "SELECT workspace_id, path, type, sha256 FROM workspace_items ORDER BY 1, 2"
        ).fetchall()
        checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchall()
        uploads = conn.execute("SELECT count(*) FROM uploads").fetchall()
    return [*files, *checkpoints, *uploads]


class LogCapture(logging.Handler):
    """Every record any logger emits, formatted as an operator's log file would show it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def all_logs(jp_serverapp: PlatformApp, caplog: pytest.LogCaptureFixture) -> Iterator[LogCapture]:
    """Capture at DEBUG on the root logger and on every logger that does not propagate to it
    (the app's own, which tornado's loggers feed)."""
    caplog.set_level(logging.DEBUG)
    capture = LogCapture()
    loggers = [logging.getLogger(), jp_serverapp.log]
    loggers += [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    levels = []
    for logger in loggers:
        levels.append(logger.level)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
    yield capture
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(capture)
        logger.setLevel(level)


# --- 1. the URL table: nothing of the server's own disk --------------------------------------


def test_url_table_serves_only_allowed_handlers(jp_serverapp: PlatformApp) -> None:
    """Stops jupyter_server's root /files/, /view/, /api/contents, /api/resolvePath (and any
    handler a new jupyter_server adds by itself) from serving the platform's own disk."""
    served = {
        (pattern, f"{target.__module__}.{target.__qualname__}")
        for pattern, target in handler_rules(jp_serverapp.web_app.default_router)
    }
    unexpected = sorted((name, pattern) for pattern, name in served if name not in ALLOWED_HANDLERS)
    assert not unexpected, unexpected
    names = {name for _, name in served}
    # The allow-list is not stale: the platform's own routes are all there.
    assert "extensions.workspaces.jupyter_handlers.WorkspaceFilesHandler" in names
    assert "platform_server.handlers.NotFoundHandler" in names


@pytest.fixture
def server_files(jp_serverapp: PlatformApp) -> Path:
    """Files in the server's own root_dir (as a checkout would have)."""
    root = Path(jp_serverapp.root_dir)
    (root / "README.md").write_text("server readme")
    (root / "platform_server" / "db").mkdir(parents=True)
    (root / "platform_server" / "db" / "secrets.py").write_text("SECRET = 1")
    return root


ROOT_PATHS = [
    "/files/README.md",
    "/files/platform_server/db/secrets.py",
    "/view/README.md",
    "/nbconvert/html/README.md",
    "/api/contents",
    "/api/contents/README.md",
    "/api/resolvePath?path=README.md",
    "/tree",
    "/edit/README.md",
    "/notebooks/README.md",
]


@pytest.mark.usefixtures("server_files")
@pytest.mark.parametrize("path", ROOT_PATHS)
@pytest.mark.parametrize("credentials", ["token", "cookie", "none"])
async def test_server_working_directory_is_unreachable_by_any_caller(
    make_user: UserFactory, base_url: str, path: str, credentials: str
) -> None:
    """Stops a logged-in user (or anyone) reading the platform's checkout through jupyter's
    root files, view, nbconvert, contents and tree handlers."""
    if credentials == "none":
        caller = Client(base_url)
    else:
        browser = await make_user()
        caller = browser if credentials == "cookie" else Client(base_url, await token_of(browser))
    response = await caller.get(path)
    assert_json_error(response, 404, "not_found")
    assert b"server readme" not in response.body
    assert b"SECRET" not in response.body


# --- 2. secrets never reach a log ------------------------------------------------------------


async def test_tokens_in_failing_requests_never_reach_the_log(
    jp_serverapp: PlatformApp,
    make_user: UserFactory,
    base_url: str,
    all_logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Stops valid API tokens (and XSRF values) being written to the log in clear by tornado's
    error lines, request summaries, 500 tracebacks and WebSocket refusals."""
    from extensions.workspaces.handlers import WorkspaceHandler

    browser = await make_user("bob")
    token = await token_of(browser)
    ws = await workspace_of(browser)
    xsrf = browser.cookies["_xsrf"]
    anonymous = Client(base_url)
    query = f"token={token}&_xsrf={xsrf}"

    # 404: an unknown route, another workspace.
    assert (await anonymous.get(f"/nowhere?{query}")).status == 404
    assert (await anonymous.get(f"/w/{uuid.uuid4()}/api/contents?{query}")).status == 404
    # 403: an administrator's route.
    assert (await anonymous.get(f"/api/admin/users?{query}")).status == 403
    # 400: a malformed body.
    bad = await anonymous.request("PUT", f"/w/{ws}/api/contents/a.txt?{query}", raw_body=b"[" * 100)
    assert bad.status == 400
    # 401: a wrong token carrying the real one's text.
    assert (await anonymous.get(f"/api/workspaces?token=x{token}")).status == 401

    # 500: a handler that breaks, with the URL in its exception.
    def broken(self: WorkspaceHandler, workspace_id: str) -> None:
        msg = f"broken while serving {self.request.full_url()}"
        raise RuntimeError(msg)

    monkeypatch.setattr(WorkspaceHandler, "get", broken)
    crashed = await anonymous.request(
        "GET",
        f"/api/workspaces/{ws}?{query}",
        headers={"Referer": f"http://elsewhere/?token={token}", "X-XSRFToken": xsrf},
    )
    assert crashed.status == 500
    assert token not in crashed.body.decode()

    # WebSocket refusals: another site's page (with the login cookie: a token-authenticated
    # socket skips the origin check, as in Jupyter), another user's workspace, a terminal of a
    # stopped sandbox.
    refused = await browser.get(
        f"/w/{ws}/api/events?_xsrf={xsrf}",
        headers={**WEBSOCKET_UPGRADE, "Origin": "http://evil.example"},
    )
    assert refused.status == 403
    stranger = await anonymous.get(
        f"/w/{uuid.uuid4()}/api/events?{query}", headers=WEBSOCKET_UPGRADE
    )
    assert stranger.status == 404
    missing = await anonymous.get(
        f"/w/{ws}/terminals/websocket/1?{query}", headers=WEBSOCKET_UPGRADE
    )
    assert missing.status == 404

    logged = all_logs.text + "\n".join(capfd.readouterr())
    assert "RuntimeError: broken while serving" in logged  # the traceback was logged
    assert f"/api/workspaces/{ws}" in logged
    assert token not in logged
    assert xsrf not in logged


# --- 3. malformed input: 400 and nothing written ---------------------------------------------

# Far deeper than Python's recursion limit, within every body size limit.
DEEP = b"[" * 20_000
DEEP_OBJECT = b'{"a":' * 5_000


def json_endpoints(ws: str) -> list[tuple[str, str]]:
    """Every endpoint that reads a JSON body (methods and paths)."""
    return [
        ("PATCH", "/api/me"),
        ("POST", "/api/accounts/register"),
        ("POST", "/api/accounts/login"),
        ("PATCH", "/api/accounts/me"),
        ("POST", "/api/accounts/password"),
        ("POST", "/api/accounts/tokens"),
        ("PATCH", "/api/admin/users/alice"),
        ("POST", "/api/workspaces"),
        ("PATCH", f"/api/workspaces/{ws}"),
        ("PUT", f"/w/{ws}/api/contents/new.txt"),
        ("PUT", f"/w/{ws}/api/contents/main.py"),
        ("POST", f"/w/{ws}/api/contents"),
        ("PATCH", f"/w/{ws}/api/contents/main.py"),
        ("POST", f"/w/{ws}/api/terminals"),
        ("POST", f"/w/{ws}/api/kernels"),
        ("POST", f"/w/{ws}/api/sessions"),
        ("PATCH", f"/w/{ws}/api/sessions/{uuid.uuid4()}"),
    ]


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, b"\xff\xfe{", b'{"name": "\xff"}'])
async def test_deeply_nested_or_undecodable_json_is_400_on_every_endpoint(
    make_user: UserFactory, base_url: str, database_url: str, body: bytes
) -> None:
    """Stops a RecursionError or UnicodeDecodeError in a JSON parser from becoming a 500 (a
    cheap request that fills the log with tracebacks)."""
    browser = await make_user()
    api = Client(base_url, await token_of(browser))
    ws = await workspace_of(api)
    before = stored_rows(database_url)
    for method, path in json_endpoints(ws):
        response = await api.request(
            method, path, raw_body=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, (method, path, response.status, response.body[:300])
        assert_json_error(response, 400)
    assert stored_rows(database_url) == before


def bad_contents_requests(ws: str) -> list[tuple[str, str, bytes]]:
    """Contents API requests whose bodies have the wrong shape (method, path, raw body)."""
    contents = f"/w/{ws}/api/contents"

    def body(value: Any) -> bytes:
        return json.dumps(value).encode()

    big_chunk = {"type": "file", "format": "base64", "content": "eA==", "chunk": 2**31}
    return [
        ("PUT", f"{contents}/a.txt", body(["type", "file"])),
        ("PUT", f"{contents}/a.txt", body("file")),
        ("PUT", f"{contents}/a.txt", body(5)),
        ("PUT", f"{contents}/a.txt", b'{"type": "file", "format": "text", "content": "\xff"}'),
        ("PUT", f"{contents}/a.txt", body({"type": {}, "format": "text", "content": "x"})),
        ("PUT", f"{contents}/a.txt", body({"type": ["file"], "content": "x"})),
        ("PUT", f"{contents}/a.txt", body({"type": "file", "format": {}, "content": "x"})),
        ("PUT", f"{contents}/a.txt", body({"type": "file", "format": "text", "content": 5})),
        ("PUT", f"{contents}/a.txt", body({"type": "file", "path": 5, "content": "x"})),
        ("PUT", f"{contents}/a.ipynb", body({"type": "notebook", "content": {}})),
        ("PUT", f"{contents}/a.ipynb", body({"type": "notebook", "content": {"cells": 5}})),
        ("PUT", f"{contents}/a.ipynb", body({"type": "notebook", "content": []})),
        ("PUT", f"{contents}/main.py", body({"type": "notebook", "content": {}})),
        ("PUT", f"{contents}/big.bin", body(big_chunk)),
        ("PUT", f"{contents}/big.bin", body({**big_chunk, "chunk": 2**63})),
        ("PUT", f"{contents}/big.bin", body({**big_chunk, "chunk": 1.5})),
        ("PUT", f"{contents}/big.bin", body({**big_chunk, "chunk": "1"})),
        ("PATCH", f"{contents}/main.py", body({"path": 5})),
        ("PATCH", f"{contents}/main.py", body({"path": None})),
        ("PATCH", f"{contents}/main.py", body({"path": ["moved.py"]})),
        ("PATCH", f"{contents}/main.py", body({"path": {"a": 1}})),
        ("PATCH", f"{contents}/main.py", body(["moved.py"])),
        ("PATCH", f"{contents}/main.py", body("moved.py")),
        ("POST", contents, body({"copy_from": 5})),
        ("POST", contents, body({"copy_from": ["main.py"]})),
        ("POST", contents, body({"type": {}})),
        ("POST", contents, body({"type": "file", "ext": 5})),
        ("POST", contents, body(["main.py"])),
        ("POST", contents, body("main.py")),
    ]


async def test_wrongly_shaped_contents_bodies_are_400_and_write_nothing(
    make_token_client: TokenClientFactory, database_url: str
) -> None:
    """Stops wrong JSON types (arrays, strings, objects where names go, huge chunk numbers)
    from reaching jupyter_server's and our code as 500s or partial writes."""
    api = await make_token_client()
    ws = await workspace_of(api)
    before = stored_rows(database_url)
    for method, path, raw in bad_contents_requests(ws):
        response = await api.request(
            method, path, raw_body=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, (method, path, raw[:100], response.body[:300])
        assert_json_error(response, 400)
    assert stored_rows(database_url) == before
    main = await api.get(f"/w/{ws}/api/contents/main.py")
    assert main.status == 200
    assert "Hello" in main.json["content"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/workspaces", {"name": {}}),
        ("/api/workspaces", {"name": ["x"]}),
        ("/api/workspaces", ["name"]),
        ("/w/{ws}/api/terminals", {"name": {}}),
        ("/w/{ws}/api/terminals", {"cwd": ["x"]}),
        ("/w/{ws}/api/terminals", ["1"]),
        ("/w/{ws}/api/kernels", {"name": {}}),
        ("/w/{ws}/api/kernels", ["python3"]),
        ("/w/{ws}/api/sessions", {"path": {}, "type": "notebook", "kernel": {"name": "x"}}),
        ("/w/{ws}/api/sessions", {"path": "a.ipynb", "type": 5, "kernel": {"name": "x"}}),
        ("/w/{ws}/api/sessions", {"path": "a.ipynb", "type": "notebook", "kernel": "x"}),
        ("/w/{ws}/api/sessions", ["a.ipynb"]),
    ],
)
async def test_wrongly_typed_fields_are_400_on_platform_endpoints(
    make_token_client: TokenClientFactory, database_url: str, path: str, body: Any
) -> None:
    """Stops wrong JSON types in the platform's own endpoints from becoming 500s."""
    api = await make_token_client()
    ws = await workspace_of(api)
    before = stored_rows(database_url)
    response = await api.post(path.format(ws=ws), body)
    assert_json_error(response, 400)
    assert stored_rows(database_url) == before


async def test_deeply_nested_permissions_argument_is_400(
    make_token_client: TokenClientFactory,
) -> None:
    """Stops GET /api/me?permissions=[[[... (a RecursionError in jupyter_server's parser) from
    becoming a 500."""
    api = await make_token_client()
    response = await api.get("/api/me?permissions=" + "%5B" * 5_000)
    assert_json_error(response, 400, "invalid_json")
    assert (await api.get("/api/me")).status == 200


async def test_terminal_frame_nested_too_deep_closes_the_socket_cleanly(
    jp_serverapp: PlatformApp,
) -> None:
    """Stops a deeply nested terminal frame from raising RecursionError in the relay."""
    from extensions.terminals.proxy import invalid_frame

    assert invalid_frame(DEEP.decode()) == "not JSON"
    assert invalid_frame(DEEP_OBJECT.decode()) == "not JSON"


# --- 4. small ones ---------------------------------------------------------------------------


async def test_anonymous_workspace_files_request_is_a_clean_401(
    make_token_client: TokenClientFactory, base_url: str, all_logs: LogCapture
) -> None:
    """Stops an anonymous request to /w/<uuid>/files/ from raising (a logged TypeError)."""
    api = await make_token_client()
    ws = await workspace_of(api)
    for path in (f"/w/{ws}/files/main.py", f"/w/{uuid.uuid4()}/files/x"):
        response = await Client(base_url).get(path)
        assert response.status in {401, 404}, (path, response.status, response.body[:300])
        assert_json_error(response, response.status)
    assert "Traceback" not in all_logs.text
    assert "TypeError" not in all_logs.text


@pytest.mark.parametrize("control", BIDI_CONTROLS, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS])
async def test_bidi_controls_in_file_names_are_refused(
    make_token_client: TokenClientFactory, database_url: str, control: str
) -> None:
    """Stops "invoice\u202efdp.exe" (shown as "invoiceexe.pdf") from being created, renamed to
    or uploaded."""
    api = await make_token_client()
    ws = await workspace_of(api)
    contents = f"/w/{ws}/api/contents"
    name = f"invoice{control}fdp.exe"
    quoted = "".join(f"%{b:02X}" for b in name.encode())
    before = stored_rows(database_url)
    file_model = {"type": "file", "format": "text", "content": "x"}
    attempts = [
        await api.request("PUT", f"{contents}/{quoted}", file_model),
        await api.request("PUT", f"{contents}/{quoted}", {"type": "directory"}),
        await api.patch(f"{contents}/main.py", {"path": name}),
        await api.request(
            "PUT",
            f"{contents}/{quoted}",
            {"type": "file", "format": "base64", "content": "eA==", "chunk": 1},
        ),
        await api.post(f"{contents}/{quoted}", {"copy_from": "main.py"}),
        await api.post(f"{contents}/{quoted}", {"type": "file"}),
    ]
    for response in attempts:
        assert_json_error(response, 400, "invalid_path")
    assert stored_rows(database_url) == before


async def test_agent_refusals_reach_the_client_as_400_not_503(
    make_token_client: TokenClientFactory,
) -> None:
    """Stops the agent's refusal of a bad terminal name or cwd, and a socket to a terminal
    that does not exist, from being reported as an unavailable sandbox (503) or a 500."""
    api = await make_token_client()
    ws = await workspace_of(api)
    bad_cwd = await api.post(f"/w/{ws}/api/terminals", {"cwd": "no/such/folder"})
    assert_json_error(bad_cwd, 400, "invalid_input")
    assert "no/such/folder" in bad_cwd.json["message"]
    bad_name = await api.post(f"/w/{ws}/api/terminals", {"name": "two words"})
    assert_json_error(bad_name, 400, "invalid_input")
    assert "name must be" in bad_name.json["message"]
    # The sandbox runs now; its agent refuses the socket of a terminal it does not have.
    missing = await api.get(f"/w/{ws}/terminals/websocket/nope", headers=WEBSOCKET_UPGRADE)
    assert_json_error(missing, 404, "not_found")
    assert (await api.get(f"/w/{ws}/api/terminals")).json == []


@pytest.mark.parametrize("depth", [150, 600])
async def test_deeply_nested_notebook_is_400_and_leaves_the_signature_store(
    make_token_client: TokenClientFactory, database_url: str, depth: int
) -> None:
    """Stops a notebook nested deep enough to make nbformat, the notary or jsonschema recurse
    past Python's limit from answering 500 (and from emptying the notebook signature store,
    which jupyter_server does when signing fails)."""
    api = await make_token_client()
    ws = await workspace_of(api)
    before = stored_rows(database_url)
    metadata = "{" + '"a":{' * depth + "}" * depth + "}"
    raw = (
        '{"type": "notebook", "content": {"nbformat": 4, "nbformat_minor": 5, '
        f'"metadata": {metadata}, "cells": []}}}}'
    ).encode()
    response = await api.request(
        "PUT",
        f"/w/{ws}/api/contents/deep.ipynb",
        raw_body=raw,
        headers={"Content-Type": "application/json"},
    )
    assert_json_error(response, 400, "invalid_notebook")
    assert stored_rows(database_url) == before
    # jupyter_server answers this 404 in plain text; here it is JSON like every error.
    missing = await api.get(f"/w/{ws}/api/contents/deep.ipynb")
    assert_json_error(missing, 404, "not_found")
