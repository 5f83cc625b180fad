"""Attacks on accounts: open redirects after login, XSRF, large bodies before authentication,
login lock-outs, credentials left alive by a password change, and anonymous workspace calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from playwright.async_api import Page, Route, expect
from tornado.httpclient import AsyncHTTPClient

from extensions.accounts.passwords import MAX_LOGIN_PASSWORD_BYTES
from extensions.ide.handlers import safe_next
from tests.client import Client, Response
from tests.conftest import UserFactory
from tests.test_accounts import (
    LOGIN_COOKIE,
    NEW_PASSWORD,
    PASSWORD,
    assert_error,
    create_token,
    login,
    me,
    me_status,
)
from tests.test_ide import (  # noqa: F401  (pages: fixture)
    DIRTY,
    WAIT,
    Pages,
    editor_lines,
    file_text,
    pages,
    paste_into_editor,
    tab,
    terminal,
    workspace_of,
)
from tests.test_security_http import WEBSOCKET_UPGRADE

KNOWN_BROWSER_COOKIE = "platform-browser"
BODY_LIMIT = 64 * 1024
# Where an attacker would like the login page to send its victim.
EVIL_HOST = "evil.example"
OPEN_REDIRECTS = [
    "/\t/evil.example",  # browsers drop the tab: "//evil.example"
    "/\n/evil.example",
    "//evil.example",
    "/\\evil.example",  # browsers read the backslash as "/"
    "https://evil.example",
    "javascript:alert(1)",
]

TokenClientFactory = Callable[..., Awaitable[Client]]


async def raw_exchange(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is on a new connection, then read one answer (status, headers,
    body). Fails if no answer comes while the rest of a declared body is still unsent."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 60)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


async def fetch_expecting_continue(
    base_url: str, method: str, path: str, body: bytes, headers: dict[str, str]
) -> Response:
    """A request that sends its body only once the server said "100 Continue" (as curl does
    for large bodies): a server that refuses at the headers gets no body at all."""
    response = await AsyncHTTPClient().fetch(
        base_url.rstrip("/") + path,
        method=method,
        body=body,
        headers=headers,
        expect_100_continue=True,
        raise_error=False,
    )
    return Response(response.code, response.headers, response.body or b"")


def assert_json_reason(response: Response, status: int, reason: str) -> None:
    """An error answer with this status and machine-readable reason."""
    assert response.status == status, (response.status, response.body[:300])
    body = json.loads(response.body)
    assert body["reason"] == reason, body
    assert isinstance(body["message"], str), body
    assert body["message"], body


# --- 1. open redirect after login ----------------------------------------------------------


@pytest.mark.parametrize("value", [*OPEN_REDIRECTS, "/%2F/x\\y", "//[", "", "w/x/"])
def test_safe_next_refuses_every_other_origin(value: str) -> None:
    assert safe_next(value) is None


@pytest.mark.parametrize(
    "value", ["/", "/workspaces", "/w/0e6f8c1e-5a4b-4a3a-9a7a-7d1f5c0b9e21/", "/a?next=//b#c"]
)
def test_safe_next_keeps_same_origin_paths(value: str) -> None:
    assert safe_next(value) == value


async def login_through_page(page: Page, next_value: str, username: str = "alice") -> None:
    """Open the login page with ``?next=``, and log in with the right password."""
    await page.goto(f"/login?next={quote(next_value, safe='')}")
    await page.fill("#field-username", username)
    await page.fill("#field-password", PASSWORD)
    await page.click("#submit")


async def test_login_page_never_redirects_to_another_site(
    pages: Pages,  # noqa: F811
    make_user: UserFactory,
) -> None:
    """Stops /login?next=/%09/evil.example (and kin) from sending a fresh login elsewhere."""
    await make_user("alice")
    visited: list[str] = []

    async def attacker_site(route: Route) -> None:
        visited.append(route.request.url)
        await route.fulfill(status=200, content_type="text/html", body="<p>evil</p>")

    for next_value in OPEN_REDIRECTS:
        context = await pages.context()
        await context.route(lambda url: urlsplit(url).hostname == EVIL_HOST, attacker_site)
        page = await pages.page(context)
        await login_through_page(page, next_value)
        await expect(page).to_have_url(f"{pages.base_url}/workspaces")
        await expect(page.locator("#username")).to_have_text("alice")
        assert urlsplit(page.url).netloc == urlsplit(pages.base_url).netloc, next_value
        assert not visited, (next_value, visited)
        await context.close()
        pages.contexts.remove(context)


async def test_login_page_follows_a_same_origin_next(
    pages: Pages,  # noqa: F811
    make_user: UserFactory,
) -> None:
    _, workspace = await workspace_of(make_user)
    page = await pages.page()
    await login_through_page(page, f"/w/{workspace}/")
    await expect(page).to_have_url(f"{pages.base_url}/w/{workspace}/")
    await expect(editor_lines(page)).to_contain_text("Hello from your workspace")


# --- 2. a password change revokes API tokens -------------------------------------------------


async def test_password_change_revokes_stolen_api_tokens_by_default(
    make_user: UserFactory, base_url: str
) -> None:
    """Stops a token taken before a password change from working after it."""
    browser = await make_user("alice")
    other_browser = Client(base_url)
    assert (await login(other_browser, "alice")).status == 200
    tokens = [await create_token(browser, name) for name in ("laptop", "ci")]
    bob = await make_user("bob")
    bobs_token = await create_token(bob)

    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await browser.post("/api/accounts/password", body)
    assert response.status == 200, response.body
    assert response.json == {"revoked_logins": 1, "revoked_tokens": 2}

    for token in tokens:
        assert_error(await me(Client(base_url, token=token["token"])), 401)
    assert await me_status(other_browser) == 401
    assert await me_status(browser) == 200
    assert (await browser.get("/api/accounts/tokens")).json == []
    assert await me_status(Client(base_url, token=bobs_token["token"])) == 200


async def test_password_change_through_a_token_keeps_that_token_only(
    make_token_client: TokenClientFactory, base_url: str
) -> None:
    api = await make_token_client("alice")  # its user also holds one cookie login
    other = await create_token(api, "other")
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await api.post("/api/accounts/password", body)
    assert response.status == 200, response.body
    assert response.json == {"revoked_logins": 1, "revoked_tokens": 1}
    assert await me_status(api) == 200
    assert await me_status(Client(base_url, token=other["token"])) == 401


@pytest.mark.parametrize("value", [None, "yes", 1, []])
async def test_password_change_refuses_a_non_boolean_revoke_tokens(
    make_user: UserFactory, base_url: str, value: Any
) -> None:
    browser = await make_user("alice")
    token = await create_token(browser)
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD, "revoke_tokens": value}
    assert_error(await browser.post("/api/accounts/password", body), 400, "revoke_tokens")
    assert await me_status(Client(base_url, token=token["token"])) == 200
    assert (await login(Client(base_url), "alice")).status == 200


# --- 3. bodies before authentication ---------------------------------------------------------


async def test_unauthenticated_10_mib_login_body_is_refused_before_it_is_sent(
    base_url: str,
) -> None:
    """Stops anyone from making the server buffer a huge body before authentication."""
    declared = 10 * 1024 * 1024
    head = (
        "POST /api/accounts/login HTTP/1.1\r\n"
        f"Host: {urlsplit(base_url).netloc}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    # Only the first kilobyte is sent: the answer must come without the rest.
    status, headers, body = await raw_exchange(base_url, head + b'{"username": "' + b"a" * 1024)
    assert status == 413
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["reason"] == "too_large", answer
    assert str(BODY_LIMIT) in answer["message"], answer


async def test_chunked_body_over_the_limit_is_refused(base_url: str) -> None:
    """Stops a body without a declared length from getting past the limit."""
    size = BODY_LIMIT + 1
    head = (
        "POST /api/accounts/register HTTP/1.1\r\n"
        f"Host: {urlsplit(base_url).netloc}\r\n"
        "Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
    status, _, body = await raw_exchange(base_url, head + chunk)
    assert status == 413
    assert json.loads(body)["reason"] == "too_large"


async def test_json_endpoints_refuse_large_bodies_even_when_authenticated(
    make_user: UserFactory, base_url: str
) -> None:
    browser = await make_user("alice", email="alice@example.com")
    big = {"email": "x" * BODY_LIMIT}
    headers = {"Content-Type": "application/json", "Cookie": cookie_header(browser)}
    headers["X-XSRFToken"] = browser.cookies["_xsrf"]
    response = await fetch_expecting_continue(
        base_url, "PATCH", "/api/accounts/me", json.dumps(big).encode(), headers
    )
    assert_json_reason(response, 413, "too_large")
    assert (await me(browser)).json["email"] == "alice@example.com"


async def test_anonymous_upload_is_refused_before_its_body_is_read(
    make_token_client: TokenClientFactory, base_url: str
) -> None:
    """Stops anonymous callers from using the contents API's large upload limit."""
    api = await make_token_client("alice")
    workspace = (await api.post("/api/workspaces", {"name": "w"})).json["uuid"]
    model = {"type": "file", "format": "text", "content": "y" * (1024 * 1024)}
    response = await fetch_expecting_continue(
        base_url,
        "PUT",
        f"/w/{workspace}/api/contents/big.txt",
        json.dumps(model).encode(),
        {"Content-Type": "application/json", "Authorization": "token cep_not_a_real_token"},
    )
    assert_json_reason(response, 413, "too_large")
    assert await file_text(api, workspace, "big.txt") is None


@pytest.mark.parametrize("credentials", ["token", "cookie"])
async def test_authenticated_uploads_keep_the_large_limit(
    make_user: UserFactory, base_url: str, credentials: str
) -> None:
    browser = await make_user("alice")
    workspace = (await browser.post("/api/workspaces", {"name": "w"})).json["uuid"]
    if credentials == "token":
        headers = {"Authorization": f"token {(await create_token(browser))['token']}"}
    else:
        headers = {"Cookie": cookie_header(browser), "X-XSRFToken": browser.cookies["_xsrf"]}
    content = "z" * (1024 * 1024)
    model = {"type": "file", "format": "text", "content": content}
    response = await fetch_expecting_continue(
        base_url,
        "PUT",
        f"/w/{workspace}/api/contents/big.txt",
        json.dumps(model).encode(),
        {"Content-Type": "application/json", **headers},
    )
    assert response.status == 201, response.body[:300]
    assert await file_text(browser, workspace, "big.txt") == content


async def test_overlong_login_password_is_refused_unread(
    make_user: UserFactory, base_url: str
) -> None:
    await make_user("alice")
    password = PASSWORD + "x" * MAX_LOGIN_PASSWORD_BYTES
    assert_error(await login(Client(base_url), "alice", password), 400, "password")
    browser = await make_user("bob")
    body = {"old_password": password, "new_password": NEW_PASSWORD}
    assert_error(await browser.post("/api/accounts/password", body), 400, "old_password")


async def test_lone_surrogate_password_is_400_not_500(client: Client) -> None:
    for path, body in [
        ("/api/accounts/register", '{"username": "eve", "password": "\\ud800xxxxxxxx"}'),
        ("/api/accounts/login", '{"username": "eve", "password": "\\ud800"}'),
    ]:
        response = await client.post(
            path, raw_body=body.encode(), headers={"Content-Type": "application/json"}
        )
        assert_error(response, 400, "password")


def cookie_header(browser: Client) -> str:
    """The Cookie header a browser sends."""
    return "; ".join(f"{k}={v}" for k, v in browser.cookies.items())


# --- 4. XSRF bound to the login ----------------------------------------------------------------


async def test_planted_xsrf_cookie_and_header_from_another_browser_are_refused(
    make_user: UserFactory, base_url: str
) -> None:
    """Stops an attacker who can set cookies for the site (a sibling subdomain, plain HTTP)
    from planting their own _xsrf pair in a victim's browser."""
    alice = await make_user("alice", email="alice@example.com")
    workspace = (await alice.post("/api/workspaces", {"name": "w"})).json["uuid"]
    mallory = await make_user("mallory")
    second_alice = Client(base_url)
    assert (await login(second_alice, "alice")).status == 200
    for planted in (mallory.cookies["_xsrf"], second_alice.cookies["_xsrf"], "abcdef0123456789"):
        victim = Client(base_url, cookies={LOGIN_COOKIE: alice.cookies[LOGIN_COOKIE]})
        victim.cookies["_xsrf"] = planted  # the client sends it back as X-XSRFToken too
        response = await victim.patch("/api/accounts/me", {"email": "mallory@example.com"})
        assert_json_reason(response, 403, "xsrf")
        model = {"type": "file", "format": "text", "content": "planted"}
        response = await victim.request("PUT", f"/w/{workspace}/api/contents/x.txt", model)
        assert_json_reason(response, 403, "xsrf")
    assert (await me(alice)).json["email"] == "alice@example.com"
    assert await file_text(alice, workspace, "x.txt") is None
    # The browser's own pair passes.
    response = await alice.patch("/api/accounts/me", {"email": "new@example.com"})
    assert response.status == 200, response.body
    model = {"type": "file", "format": "text", "content": "mine"}
    response = await alice.request("PUT", f"/w/{workspace}/api/contents/x.txt", model)
    assert response.status == 201, response.body


async def test_xsrf_token_in_the_query_string_is_refused_on_writes(
    make_user: UserFactory, base_url: str
) -> None:
    """Stops ?_xsrf= (which can ride in a link or a form's action) from passing the check."""
    alice = await make_user("alice", email="alice@example.com")
    token = alice.cookies["_xsrf"]
    bare = Client(base_url, send_xsrf=False, cookies=dict(alice.cookies))
    for client in (bare, alice):  # without, and even with, the header
        for method in ("PATCH", "POST", "PUT", "DELETE"):
            path = f"/api/accounts/me?_xsrf={quote(token)}"
            response = await client.request(method, path, {"email": "evil@example.com"})
            assert_json_reason(response, 403, "xsrf")
    assert (await me(alice)).json["email"] == "alice@example.com"
    assert (await alice.patch("/api/accounts/me", {"email": "ok@example.com"})).status == 200


async def test_xsrf_cookie_is_renewed_for_the_login_on_each_page(
    make_user: UserFactory, base_url: str
) -> None:
    alice = await make_user("alice")
    alice.cookies["_xsrf"] = "abcdef0123456789"  # planted after the login
    response = await alice.get("/workspaces")
    assert response.status == 200
    assert alice.cookies["_xsrf"] != "abcdef0123456789"
    assert (await alice.patch("/api/accounts/me", {"email": "a@example.com"})).status == 200


async def test_login_and_save_in_the_ide_with_a_planted_xsrf_cookie(
    pages: Pages,  # noqa: F811
    make_user: UserFactory,
) -> None:
    """The IDE keeps working (it echoes the _xsrf cookie) when a cookie was planted before
    and after logging in: the login and every page load set this login's own token."""
    user, workspace = await workspace_of(make_user)
    context = await pages.context()
    planted = [{"name": "_xsrf", "value": "abcdef0123456789", "url": pages.base_url}]
    await context.add_cookies(planted)  # type: ignore[arg-type]
    page = await pages.page(context)
    await login_through_page(page, f"/w/{workspace}/")
    await expect(page).to_have_url(f"{pages.base_url}/w/{workspace}/")
    await context.add_cookies(planted)  # type: ignore[arg-type]
    await page.reload()
    await expect(terminal(page)).to_contain_text("$")
    await expect(editor_lines(page)).to_contain_text("Hello from your workspace")
    await paste_into_editor(page, 'print("saved")\n')
    await expect(tab(page, "main.py")).to_have_class(DIRTY)
    await page.keyboard.press("ControlOrMeta+S")
    await expect(tab(page, "main.py")).not_to_have_class(DIRTY)
    assert await file_text(user, workspace, "main.py") == 'print("saved")\n'


# --- 5. login throttling that cannot lock a user out ------------------------------------------


class TestKnownBrowsers:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Accounts": {"block_after_user": 3, "block_after_address": 6, "block_seconds": 600}}

    @staticmethod
    async def guess(base_url: str, username: str, times: int) -> None:
        for _ in range(times):
            response = await login(Client(base_url), username, "wrong password")
            assert response.status in {401, 429}, response.body

    async def test_guesses_for_a_user_do_not_lock_them_out_of_their_own_browser(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        """Stops anyone from locking a named user out by failing logins in their name."""
        alice = await make_user("alice")
        assert KNOWN_BROWSER_COOKIE in alice.cookies
        assert (await alice.post("/api/accounts/logout")).status == 204
        await self.guess(base_url, "alice", 3)
        # A browser alice never used is throttled, right password or not...
        stranger = Client(base_url)
        body = assert_error(await login(stranger, "alice"), 429, "Try again in")
        assert body["reason"] == "too_many_attempts"
        assert LOGIN_COOKIE not in stranger.cookies
        # ...her own browser logs in at once, and is still known afterwards.
        response = await login(alice, "alice")
        assert response.status == 200, response.body
        assert await me_status(alice) == 200
        assert KNOWN_BROWSER_COOKIE in alice.cookies
        # Her login did not lift the block for others.
        assert_error(await login(Client(base_url), "alice"), 429)

    async def test_guesses_from_a_shared_address_do_not_lock_out_known_browsers(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        """Stops failures from one address (a shared NAT, or a proxy without trust_xheaders)
        from locking out every user behind it."""
        alice = await make_user("alice")
        for name in ("ghost1", "ghost2", "ghost3"):
            await self.guess(base_url, name, 2)
        assert_error(await login(Client(base_url), "alice"), 429)
        assert (await login(alice, "alice")).status == 200

    async def test_a_known_browser_is_known_for_its_own_user_only(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        await make_user("alice")
        bob = await make_user("bob")
        await self.guess(base_url, "alice", 3)
        assert_error(await login(bob, "alice"), 429)
        # A forged (unsigned) cookie is no proof either.
        forged = Client(base_url, cookies={KNOWN_BROWSER_COOKIE: "1:forged"})
        assert_error(await login(forged, "alice"), 429)

    async def test_a_known_browser_is_throttled_by_its_own_failures(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        alice = await make_user("alice")
        for _ in range(3):
            assert_error(await login(alice, "alice", "wrong password"), 401)
        assert_error(await login(alice, "alice"), 429)
        # Those failures were the browser's: another browser is not blocked by them.
        assert (await login(Client(base_url), "alice")).status == 200


# --- 6. anonymous workspace API calls ----------------------------------------------------------


ANONYMOUS_CALLS = [
    *((method, "api/contents/main.py") for method in ("GET", "PUT", "PATCH", "DELETE", "POST")),
    ("GET", "api/contents"),
    ("POST", "api/contents"),
    ("GET", "api/contents/main.py/checkpoints"),
    ("POST", "api/contents/main.py/checkpoints"),
    ("GET", "api/terminals"),
    ("POST", "api/terminals"),
    ("GET", "api/kernels"),
    ("POST", "api/sessions"),
    ("GET", "api/kernelspecs"),
]


@pytest.mark.parametrize(("method", "path"), ANONYMOUS_CALLS)
async def test_anonymous_workspace_api_requests_are_401(
    make_token_client: TokenClientFactory, base_url: str, method: str, path: str
) -> None:
    """Stops anonymous callers from being told 403 (which clients read as "not allowed", not
    "log in") or reaching jupyter_server's XSRF message instead."""
    api = await make_token_client("alice")
    workspace = (await api.post("/api/workspaces", {"name": "w"})).json["uuid"]
    body = {"type": "file", "format": "text", "content": "x"} if method != "GET" else None
    anonymous = Client(base_url)
    response = await anonymous.request(method, f"/w/{workspace}/{path}", body)
    assert_json_reason(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].lower().startswith("token")
    assert await file_text(api, workspace, "main.py") is not None


@pytest.mark.parametrize(
    "path",
    [
        "api/events",
        "terminals/websocket/1",
        "api/kernels/00000000-0000-4000-8000-000000000000/channels",
    ],
)
async def test_anonymous_workspace_sockets_are_401_json(
    make_token_client: TokenClientFactory, base_url: str, path: str
) -> None:
    """Stops anonymous WebSocket upgrades from being told 403 in an HTML page instead of the
    API's JSON 401."""
    api = await make_token_client("alice")
    workspace = (await api.post("/api/workspaces", {"name": "w"})).json["uuid"]
    response = await Client(base_url).get(f"/w/{workspace}/{path}", headers=WEBSOCKET_UPGRADE)
    assert_json_reason(response, 401, "unauthenticated")


async def test_logged_out_browser_gets_401_from_contents_writes(
    make_user: UserFactory, base_url: str
) -> None:
    browser = await make_user("alice")
    workspace = (await browser.post("/api/workspaces", {"name": "w"})).json["uuid"]
    assert (await browser.post("/api/accounts/logout")).status == 204
    assert "_xsrf" in browser.cookies
    model = {"type": "file", "format": "text", "content": "x"}
    response = await browser.request("PUT", f"/w/{workspace}/api/contents/x.txt", model)
    assert_json_reason(response, 401, "unauthenticated")
