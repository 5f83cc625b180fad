"""Accounts as users see them: registration, logins, XSRF, tokens, admins and throttling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from http.cookies import Morsel, SimpleCookie
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.client import Client, Response
from tests.conftest import UserFactory

PASSWORD = "correct horse"
NEW_PASSWORD = "battery staple"
USER_FIELDS = {"id", "username", "email", "created_at", "is_admin"}
TOKEN_FIELDS = {"id", "name", "created_at", "last_used_at", "expires_at"}
LOGIN_COOKIE = "platform-login"


# --- helpers -------------------------------------------------------------------------------


async def register(
    client: Client, username: str, password: str = PASSWORD, **extra: Any
) -> Response:
    """POST a registration."""
    return await client.post(
        "/api/accounts/register", {"username": username, "password": password, **extra}
    )


async def login(client: Client, username: str, password: str = PASSWORD) -> Response:
    """POST a password login (the client keeps the cookies it gets)."""
    return await client.post("/api/accounts/login", {"username": username, "password": password})


async def can_login(base_url: str, username: str, password: str = PASSWORD) -> bool:
    """Whether a fresh browser can log in with these credentials."""
    response = await login(Client(base_url), username, password)
    assert response.status in {200, 401}, response.body
    return response.status == 200


async def me(client: Client) -> Response:
    """GET the caller's account."""
    return await client.get("/api/accounts/me")


async def me_status(client: Client) -> int:
    """The status of GET /api/accounts/me: 200 when the client is authenticated."""
    return (await me(client)).status


def assert_error(response: Response, status: int, *words: str) -> dict[str, Any]:
    """``response`` is a JSON error with this status whose message names every word."""
    assert response.status == status, (response.status, response.body)
    body = response.json
    assert isinstance(body, dict), response.body
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    for word in words:
        assert word in body["message"], (word, body)
    return body


def set_cookies(response: Response) -> dict[str, Morsel[str]]:
    """The cookies a response sets, by name."""
    cookies: dict[str, Morsel[str]] = {}
    for header in response.headers.get_list("Set-Cookie"):
        cookies.update(SimpleCookie(header))
    return cookies


def parse_time(value: str) -> datetime:
    """An ISO 8601 timestamp from the API, which must carry a time zone."""
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


async def create_token(client: Client, name: str = "laptop", **extra: Any) -> dict[str, Any]:
    """Create an API token; return the 201 body (with the secret)."""
    response = await client.post("/api/accounts/tokens", {"name": name, **extra})
    assert response.status == 201, response.body
    return dict(response.json)


async def list_tokens(client: Client) -> list[dict[str, Any]]:
    """The caller's tokens as the API lists them."""
    response = await client.get("/api/accounts/tokens")
    assert response.status == 200, response.body
    assert isinstance(response.json, list)
    return list(response.json)


async def sql_execute(database_url: str, query: LiteralString, params: list[Any]) -> None:
    """Run one statement directly in the test's database."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(query, params)


def without_xsrf(browser: Client) -> Client:
    """The same browser's cookies, sent by a page that cannot read the _xsrf cookie."""
    return Client(browser.base_url, send_xsrf=False, cookies=browser.cookies)


# --- registration --------------------------------------------------------------------------


async def test_register_returns_the_new_user(client: Client) -> None:
    before = datetime.now(UTC)
    response = await register(client, "alice", email="alice@example.com")
    assert response.status == 201, response.body
    body = response.json
    assert set(body) == USER_FIELDS
    assert isinstance(body["id"], int)
    assert body["username"] == "alice"
    assert body["email"] == "alice@example.com"
    assert body["is_admin"] is False
    created = parse_time(body["created_at"])
    assert before - timedelta(minutes=1) < created < datetime.now(UTC) + timedelta(minutes=1)
    assert "password" not in response.body.decode()


async def test_register_without_email_stores_none(client: Client) -> None:
    response = await register(client, "bob")
    assert response.status == 201, response.body
    assert response.json["email"] is None


async def test_registered_user_can_log_in(client: Client, base_url: str) -> None:
    assert (await register(client, "alice")).status == 201
    assert await can_login(base_url, "alice")
    assert not await can_login(base_url, "alice", "wrong password")


@pytest.mark.parametrize("username", ["abc", "a" * 32, "a.b-c_d", "user_01", "0.0"])
async def test_register_accepts_valid_usernames(client: Client, username: str) -> None:
    response = await register(client, username)
    assert response.status == 201, response.body
    assert response.json["username"] == username


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # too short
        "",
        "a" * 33,  # too long
        "al ice",
        "alice!",
        "al/ice",
        "élise",
        "alice@example.com",
        "alice\n",
        "\nalice",
        None,
        123,
        ["alice"],
    ],
)
async def test_register_rejects_bad_usernames(client: Client, base_url: str, username: Any) -> None:
    response = await client.post(
        "/api/accounts/register", {"username": username, "password": PASSWORD}
    )
    assert_error(response, 400, "username")
    if isinstance(username, str) and len(username) >= 3:
        assert not await can_login(base_url, username.strip())


async def test_register_lowercases_username(client: Client, base_url: str) -> None:
    response = await register(client, "Alice")
    assert response.status == 201, response.body
    assert response.json["username"] == "alice"
    assert await can_login(base_url, "alice")
    assert await can_login(base_url, "ALICE")


@pytest.mark.parametrize(
    ("first", "second"), [("alice", "Alice"), ("Alice", "alice"), ("bob", "BOB")]
)
async def test_usernames_are_unique_case_insensitively(
    client: Client, base_url: str, first: str, second: str
) -> None:
    assert (await register(client, first)).status == 201
    response = await register(client, second, "another password")
    assert_error(response, 409, second.lower())
    # The first account is untouched: its password still works, the second one does not.
    assert await can_login(base_url, first)
    assert not await can_login(base_url, first, "another password")


@pytest.mark.parametrize("password", ["", "short", "1234567", None, 12345678])
async def test_register_rejects_short_or_missing_password(client: Client, password: Any) -> None:
    response = await client.post(
        "/api/accounts/register", {"username": "alice", "password": password}
    )
    assert_error(response, 400, "password")
    assert (await register(client, "alice")).status == 201  # the name was not taken


async def test_register_accepts_eight_character_password(client: Client, base_url: str) -> None:
    assert (await register(client, "alice", "12345678")).status == 201
    assert await can_login(base_url, "alice", "12345678")


async def test_register_rejects_password_longer_than_bcrypt_reads(client: Client) -> None:
    response = await register(client, "alice", "x" * 73)
    assert_error(response, 400, "password")


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "alice@",
        "@example.com",
        "alice@example",
        "al ice@example.com",
        "alice@@example.com",
        "alice@example.com\n",
        "a" * 250 + "@example.com",
        42,
        ["alice@example.com"],
    ],
)
async def test_register_rejects_invalid_email(client: Client, base_url: str, email: Any) -> None:
    response = await register(client, "alice", email=email)
    assert_error(response, 400, "email")
    assert not await can_login(base_url, "alice")
    assert (await register(client, "alice")).status == 201  # the name was not taken


async def test_register_rejects_unknown_fields(client: Client, base_url: str) -> None:
    response = await register(client, "alice", is_admin=True)
    assert_error(response, 400, "is_admin")
    assert not await can_login(base_url, "alice")


@pytest.mark.parametrize(
    ("raw_body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"", "application/json", 400),
        (b'["alice", "correct horse"]', "application/json", 400),
        (b'"alice"', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"username": "alice", "password": "correct horse"}', "text/plain", 415),
        (
            b"username=alice&password=correct+horse",
            "application/x-www-form-urlencoded",
            415,
        ),
    ],
)
async def test_register_needs_a_json_object_body(
    client: Client, base_url: str, raw_body: bytes, content_type: str, status: int
) -> None:
    response = await client.post(
        "/api/accounts/register", raw_body=raw_body, headers={"Content-Type": content_type}
    )
    assert_error(response, status)
    assert not await can_login(base_url, "alice")


async def test_register_accepts_json_with_charset(client: Client) -> None:
    response = await client.post(
        "/api/accounts/register",
        raw_body=b'{"username": "alice", "password": "correct horse"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 201, response.body


class TestRegistrationClosed:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Accounts": {"allow_registration": False}}

    async def test_registration_is_refused(self, client: Client, base_url: str) -> None:
        response = await register(client, "alice")
        assert_error(response, 403)
        assert not await can_login(base_url, "alice")


# --- login and logout ----------------------------------------------------------------------


async def test_login_sets_httponly_login_cookie_and_xsrf_cookie(client: Client) -> None:
    assert (await register(client, "alice", email="alice@example.com")).status == 201
    response = await login(client, "alice")
    assert response.status == 200, response.body
    assert set(response.json) == USER_FIELDS
    assert response.json["username"] == "alice"
    assert response.json["email"] == "alice@example.com"
    cookies = set_cookies(response)
    assert LOGIN_COOKIE in cookies
    assert cookies[LOGIN_COOKIE].value
    assert cookies[LOGIN_COOKIE]["httponly"]
    assert cookies[LOGIN_COOKIE]["samesite"].lower() == "lax"
    assert PASSWORD not in cookies[LOGIN_COOKIE].value
    assert "_xsrf" in cookies
    assert cookies["_xsrf"].value
    # The browser is now logged in.
    response = await me(client)
    assert response.status == 200, response.body
    assert response.json["username"] == "alice"


async def test_login_accepts_any_case_of_the_username(client: Client) -> None:
    assert (await register(client, "alice")).status == 201
    response = await login(client, "ALICE")
    assert response.status == 200, response.body
    assert response.json["username"] == "alice"


async def test_login_failures_do_not_say_which_part_was_wrong(
    client: Client, base_url: str
) -> None:
    assert (await register(client, "alice")).status == 201
    wrong_password = assert_error(await login(Client(base_url), "alice", "wrong password"), 401)
    unknown_user = assert_error(await login(Client(base_url), "nobody", PASSWORD), 401)
    assert wrong_password == unknown_user


async def test_failed_login_sets_no_login_cookie(client: Client) -> None:
    assert (await register(client, "alice")).status == 201
    response = await login(client, "alice", "wrong password")
    assert_error(response, 401)
    assert LOGIN_COOKIE not in set_cookies(response)
    assert await me_status(client) == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "alice"}, "password"),
        ({"password": PASSWORD}, "username"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "alice", "password": ""}, "password"),
        ({"username": 5, "password": PASSWORD}, "username"),
        ({"username": "alice", "password": PASSWORD, "remember": True}, "remember"),
    ],
)
async def test_login_rejects_malformed_bodies(
    client: Client, body: dict[str, Any], field: str
) -> None:
    assert (await register(client, "alice")).status == 201
    assert_error(await client.post("/api/accounts/login", body), 400, field)
    assert await me_status(client) == 401


async def test_logout_revokes_the_login_server_side(make_user: UserFactory, base_url: str) -> None:
    browser = await make_user("alice")
    saved = dict(browser.cookies)
    assert LOGIN_COOKIE in saved
    response = await browser.post("/api/accounts/logout")
    assert response.status == 204, response.body
    assert not response.body
    assert LOGIN_COOKIE not in browser.cookies  # the browser was told to drop it
    assert await me_status(browser) == 401
    # A copy of the old cookie (stolen, or kept by a misbehaving browser) is dead too.
    replay = Client(base_url, cookies=saved)
    assert_error(await me(replay), 401)
    # Logging in again works.
    assert (await login(browser, "alice")).status == 200
    assert await me_status(browser) == 200


async def test_writes_after_logout_are_401(make_user: UserFactory) -> None:
    # The browser still holds a valid _xsrf cookie and sends the header, so only the
    # missing login can be the problem: it must be told to log in again (401).
    browser = await make_user("alice")
    assert (await browser.post("/api/accounts/logout")).status == 204
    assert "_xsrf" in browser.cookies
    assert_error(await browser.patch("/api/accounts/me", {"email": "x@example.com"}), 401)
    assert_error(await browser.post("/api/accounts/tokens", {"name": "x"}), 401)


async def test_logout_ends_only_that_login(make_user: UserFactory, base_url: str) -> None:
    first = await make_user("alice")
    second = Client(base_url)
    assert (await login(second, "alice")).status == 200
    assert (await first.post("/api/accounts/logout")).status == 204
    assert await me_status(first) == 401
    assert await me_status(second) == 200


async def test_logout_needs_a_login(client: Client) -> None:
    response = await client.post("/api/accounts/logout")
    assert response.status in {401, 403}, response.body


async def test_tampered_login_cookie_is_refused(make_user: UserFactory, base_url: str) -> None:
    browser = await make_user("alice")
    cookies = dict(browser.cookies)
    cookies[LOGIN_COOKIE] = cookies[LOGIN_COOKIE][:-4] + "AAAA"
    assert await me_status(Client(base_url, cookies=cookies)) == 401
    cookies[LOGIN_COOKIE] = "garbage"
    assert await me_status(Client(base_url, cookies=cookies)) == 401


# --- /api/accounts/me ----------------------------------------------------------------------


async def test_me_needs_authentication(client: Client) -> None:
    body = assert_error(await me(client), 401)
    assert "log in" in body["message"].lower() or "token" in body["message"].lower()


async def test_unauthenticated_response_says_how_to_authenticate(client: Client) -> None:
    # RFC 9110: a 401 response must carry a WWW-Authenticate challenge.
    response = await me(client)
    assert response.status == 401
    assert "WWW-Authenticate" in response.headers
    assert response.headers["WWW-Authenticate"].lower().startswith("token")


async def test_me_with_unknown_token_is_401(base_url: str) -> None:
    api = Client(base_url, token="cep_" + "x" * 43)
    assert_error(await me(api), 401)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/accounts/tokens", {"name": "ci"}),
        ("PATCH", "/api/accounts/me", {"email": "x@example.com"}),
        ("DELETE", "/api/accounts/tokens/1", None),
        ("POST", "/api/accounts/password", {"old_password": PASSWORD, "new_password": "x" * 10}),
    ],
)
async def test_writes_with_an_unknown_token_are_401(
    base_url: str, method: str, path: str, body: Any
) -> None:
    # An API client whose token was revoked or expired must be told to authenticate,
    # not that it lacks an XSRF token it never needs.
    api = Client(base_url, token="cep_" + "x" * 43)
    assert_error(await api.request(method, path, body), 401)


async def test_me_with_cookie(make_user: UserFactory) -> None:
    browser = await make_user("alice", email="alice@example.com")
    response = await me(browser)
    assert response.status == 200, response.body
    assert set(response.json) == USER_FIELDS
    assert response.json["username"] == "alice"
    assert response.json["email"] == "alice@example.com"
    assert response.json["is_admin"] is False


async def test_me_with_token(make_token_client: UserFactory) -> None:
    api = await make_token_client("alice")
    response = await me(api)
    assert response.status == 200, response.body
    assert set(response.json) == USER_FIELDS
    assert response.json["username"] == "alice"


async def test_patch_me_updates_email(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    response = await browser.patch("/api/accounts/me", {"email": "new@example.com"})
    assert response.status == 200, response.body
    assert set(response.json) == USER_FIELDS
    assert response.json["email"] == "new@example.com"
    assert (await me(browser)).json["email"] == "new@example.com"


async def test_patch_me_with_token(make_token_client: UserFactory) -> None:
    api = await make_token_client("alice")
    response = await api.patch("/api/accounts/me", {"email": "api@example.com"})
    assert response.status == 200, response.body
    assert (await me(api)).json["email"] == "api@example.com"


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "a b@example.com", "alice@example.com\n", 7, True]
)
async def test_patch_me_rejects_invalid_email(make_user: UserFactory, email: Any) -> None:
    browser = await make_user("alice", email="old@example.com")
    assert_error(await browser.patch("/api/accounts/me", {"email": email}), 400, "email")
    assert (await me(browser)).json["email"] == "old@example.com"


@pytest.mark.parametrize("empty", [None, ""])
async def test_patch_me_clears_email(make_user: UserFactory, empty: str | None) -> None:
    browser = await make_user("alice", email="old@example.com")
    response = await browser.patch("/api/accounts/me", {"email": empty})
    assert response.status == 200, response.body
    assert response.json["email"] is None
    assert (await me(browser)).json["email"] is None


@pytest.mark.parametrize(
    "body", [{}, {"username": "mallory"}, {"is_admin": True}, {"email": "x@example.com", "a": 1}]
)
async def test_patch_me_rejects_other_bodies(make_user: UserFactory, body: dict[str, Any]) -> None:
    browser = await make_user("alice", email="old@example.com")
    assert_error(await browser.patch("/api/accounts/me", body), 400)
    after = (await me(browser)).json
    assert after["username"] == "alice"
    assert after["email"] == "old@example.com"
    assert after["is_admin"] is False


# --- XSRF ----------------------------------------------------------------------------------


async def test_cookie_patch_without_xsrf_is_refused(make_user: UserFactory) -> None:
    browser = await make_user("alice", email="old@example.com")
    response = await without_xsrf(browser).patch("/api/accounts/me", {"email": "evil@example.com"})
    assert_error(response, 403, "XSRF")
    assert (await me(browser)).json["email"] == "old@example.com"
    # The same request from the real page (with the header) works.
    response = await browser.patch("/api/accounts/me", {"email": "new@example.com"})
    assert response.status == 200, response.body
    assert (await me(browser)).json["email"] == "new@example.com"


async def test_cookie_patch_with_wrong_xsrf_is_refused(make_user: UserFactory) -> None:
    browser = await make_user("alice", email="old@example.com")
    response = await browser.patch(
        "/api/accounts/me", {"email": "evil@example.com"}, headers={"X-XSRFToken": "forged"}
    )
    assert_error(response, 403)
    assert (await me(browser)).json["email"] == "old@example.com"


async def test_cookie_token_creation_without_xsrf_is_refused(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    response = await without_xsrf(browser).post("/api/accounts/tokens", {"name": "stolen"})
    assert_error(response, 403)
    assert await list_tokens(browser) == []
    await create_token(browser, "mine")
    assert [t["name"] for t in await list_tokens(browser)] == ["mine"]


async def test_cookie_token_deletion_without_xsrf_is_refused(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    token = await create_token(browser)
    response = await without_xsrf(browser).delete(f"/api/accounts/tokens/{token['id']}")
    assert_error(response, 403)
    assert [t["id"] for t in await list_tokens(browser)] == [token["id"]]
    assert (await browser.delete(f"/api/accounts/tokens/{token['id']}")).status == 204
    assert await list_tokens(browser) == []


async def test_cookie_password_change_without_xsrf_is_refused(
    make_user: UserFactory, base_url: str
) -> None:
    browser = await make_user("alice")
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert_error(await without_xsrf(browser).post("/api/accounts/password", body), 403)
    assert await can_login(base_url, "alice", PASSWORD)
    assert not await can_login(base_url, "alice", NEW_PASSWORD)


async def test_cookie_logout_without_xsrf_is_refused(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    assert_error(await without_xsrf(browser).post("/api/accounts/logout"), 403)
    assert await me_status(browser) == 200


async def test_cookie_get_needs_no_xsrf(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    assert await me_status(without_xsrf(browser)) == 200


async def test_token_requests_need_no_xsrf(make_token_client: UserFactory) -> None:
    api = await make_token_client("alice")
    assert "_xsrf" not in api.cookies
    response = await api.patch("/api/accounts/me", {"email": "api@example.com"})
    assert response.status == 200, response.body
    token = await create_token(api, "from-api")
    assert (await api.delete(f"/api/accounts/tokens/{token['id']}")).status == 204
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await api.post("/api/accounts/password", body)
    assert response.status == 200, response.body


# --- password change -----------------------------------------------------------------------


async def test_password_change_with_wrong_old_password(
    make_user: UserFactory, base_url: str
) -> None:
    browser = await make_user("alice")
    body = {"old_password": "not my password", "new_password": NEW_PASSWORD}
    assert_error(await browser.post("/api/accounts/password", body), 400, "old_password")
    assert await me_status(browser) == 200
    assert await can_login(base_url, "alice", PASSWORD)
    assert not await can_login(base_url, "alice", NEW_PASSWORD)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"old_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"old_password": PASSWORD}, "new_password"),
        ({"new_password": NEW_PASSWORD}, "old_password"),
        ({"old_password": PASSWORD, "new_password": NEW_PASSWORD, "x": 1}, "x"),
    ],
)
async def test_password_change_rejects_bad_bodies(
    make_user: UserFactory, base_url: str, body: dict[str, Any], field: str
) -> None:
    browser = await make_user("alice")
    assert_error(await browser.post("/api/accounts/password", body), 400, field)
    assert await can_login(base_url, "alice", PASSWORD)


async def test_password_change_revokes_other_logins(make_user: UserFactory, base_url: str) -> None:
    browser = await make_user("alice")
    other_browser = Client(base_url)
    assert (await login(other_browser, "alice")).status == 200
    third_browser = Client(base_url)
    assert (await login(third_browser, "alice")).status == 200
    bystander = await make_user("bob")

    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = await browser.post("/api/accounts/password", body)
    assert response.status == 200, response.body
    assert response.json == {"revoked_logins": 2, "revoked_tokens": 0}

    assert await me_status(browser) == 200  # the login that changed it keeps working
    assert await me_status(other_browser) == 401
    assert await me_status(third_browser) == 401
    assert await me_status(bystander) == 200  # other users are not affected
    assert await can_login(base_url, "alice", NEW_PASSWORD)
    assert not await can_login(base_url, "alice", PASSWORD)


async def test_password_change_keeps_api_tokens_when_asked(
    make_user: UserFactory, base_url: str
) -> None:
    browser = await make_user("alice")
    token = await create_token(browser)
    body = {"old_password": PASSWORD, "new_password": NEW_PASSWORD, "revoke_tokens": False}
    response = await browser.post("/api/accounts/password", body)
    assert response.json == {"revoked_logins": 0, "revoked_tokens": 0}
    assert await me_status(Client(base_url, token=token["token"])) == 200


# --- API tokens ----------------------------------------------------------------------------


async def test_create_token_shows_the_secret_once(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    response = await browser.post("/api/accounts/tokens", {"name": "laptop"})
    assert response.status == 201, response.body
    body = response.json
    assert set(body) == TOKEN_FIELDS | {"token"}
    assert body["name"] == "laptop"
    assert isinstance(body["id"], int)
    assert isinstance(body["token"], str)
    assert len(body["token"]) >= 32
    assert body["last_used_at"] is None
    assert body["expires_at"] is None
    parse_time(body["created_at"])

    listed = await list_tokens(browser)
    assert len(listed) == 1
    assert set(listed[0]) == TOKEN_FIELDS
    assert listed[0]["id"] == body["id"]
    assert listed[0]["name"] == "laptop"
    assert listed[0]["created_at"] == body["created_at"]
    listing = (await browser.get("/api/accounts/tokens")).body.decode()
    assert body["token"] not in listing
    assert "hash" not in listing


async def test_tokens_are_listed_newest_first_and_per_user(make_user: UserFactory) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    first = await create_token(alice, "first")
    second = await create_token(alice, "second")
    await create_token(bob, "bobs")
    assert [t["id"] for t in await list_tokens(alice)] == [second["id"], first["id"]]
    assert [t["name"] for t in await list_tokens(bob)] == ["bobs"]


async def test_token_names_are_trimmed(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    token = await create_token(browser, "  laptop  ")
    assert token["name"] == "laptop"


async def test_token_with_expiry(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    token = await create_token(browser, expires_in_days=30)
    expires = parse_time(token["expires_at"])
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs(expires - expected) < timedelta(minutes=5)
    assert (await list_tokens(browser))[0]["expires_at"] == token["expires_at"]


@pytest.mark.parametrize("days", [1, 3650, None])
async def test_token_expiry_bounds_are_accepted(make_user: UserFactory, days: int | None) -> None:
    browser = await make_user("alice")
    await create_token(browser, expires_in_days=days)


@pytest.mark.parametrize("scheme", ["token", "bearer", "Bearer", None])
async def test_token_authenticates_every_documented_way(
    make_user: UserFactory, base_url: str, scheme: str | None
) -> None:
    """``Authorization: token <t>``, ``Authorization: Bearer <t>`` and ``?token=<t>``."""
    browser = await make_user("alice")
    secret = (await create_token(browser))["token"]
    if scheme is None:
        response = await Client(base_url).get(f"/api/accounts/me?token={secret}")
    else:
        response = await me(Client(base_url, token=secret, token_scheme=scheme))
    assert response.status == 200, response.body
    assert response.json["username"] == "alice"


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 101, "tab\there", "new\nline", "del\x7f", None, 5, ["a"]]
)
async def test_create_token_rejects_bad_names(make_user: UserFactory, name: Any) -> None:
    browser = await make_user("alice")
    response = await browser.post("/api/accounts/tokens", {"name": name})
    assert_error(response, 400, "name")
    assert await list_tokens(browser) == []


async def test_create_token_without_name_is_refused(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    assert_error(await browser.post("/api/accounts/tokens", {}), 400, "name")
    assert await list_tokens(browser) == []


@pytest.mark.parametrize("days", [0, -1, "3", True, False, 99999, 3651, 1.5, [1]])
async def test_create_token_rejects_bad_expiry(make_user: UserFactory, days: Any) -> None:
    browser = await make_user("alice")
    response = await browser.post("/api/accounts/tokens", {"name": "x", "expires_in_days": days})
    assert_error(response, 400, "expires_in_days")
    assert await list_tokens(browser) == []


async def test_create_token_rejects_unknown_fields(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    response = await browser.post("/api/accounts/tokens", {"name": "x", "scopes": ["all"]})
    assert_error(response, 400, "scopes")
    assert await list_tokens(browser) == []


async def test_expired_token_is_refused(
    make_user: UserFactory, base_url: str, database_url: str
) -> None:
    browser = await make_user("alice")
    token = await create_token(browser, expires_in_days=1)
    api = Client(base_url, token=token["token"])
    assert await me_status(api) == 200
    await sql_execute(
        database_url,
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = %s",
        [token["id"]],
    )
    assert_error(await me(api), 401)
    query_api = Client(base_url)
    assert await me_status(query_api) == 401
    assert (await query_api.get(f"/api/accounts/me?token={token['token']}")).status == 401
    # The browser login is separate and still works.
    assert await me_status(browser) == 200


async def test_revoked_token_is_refused_at_once(make_user: UserFactory, base_url: str) -> None:
    browser = await make_user("alice")
    keep = await create_token(browser, "keep")
    revoke = await create_token(browser, "revoke")
    api = Client(base_url, token=revoke["token"])
    assert await me_status(api) == 200

    response = await browser.delete(f"/api/accounts/tokens/{revoke['id']}")
    assert response.status == 204, response.body
    assert not response.body
    assert_error(await me(api), 401)
    assert [t["id"] for t in await list_tokens(browser)] == [keep["id"]]
    assert await me_status(Client(base_url, token=keep["token"])) == 200
    # Revoking it again: it no longer exists.
    assert_error(await browser.delete(f"/api/accounts/tokens/{revoke['id']}"), 404)


async def test_token_can_revoke_itself(make_user: UserFactory, base_url: str) -> None:
    browser = await make_user("alice")
    token = await create_token(browser)
    api = Client(base_url, token=token["token"])
    assert (await api.delete(f"/api/accounts/tokens/{token['id']}")).status == 204
    assert await me_status(api) == 401


async def test_cannot_delete_another_users_token(make_user: UserFactory, base_url: str) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    alices = await create_token(alice)
    response = await bob.delete(f"/api/accounts/tokens/{alices['id']}")
    assert_error(response, 404)
    assert await me_status(Client(base_url, token=alices["token"])) == 200
    assert [t["id"] for t in await list_tokens(alice)] == [alices["id"]]


async def test_deleting_unknown_token_is_404(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    assert_error(await browser.delete("/api/accounts/tokens/999999"), 404)


async def test_token_of_one_user_does_not_list_anothers(
    make_user: UserFactory, base_url: str
) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    await create_token(alice, "alices")
    bobs = await create_token(bob, "bobs")
    api = Client(base_url, token=bobs["token"])
    assert [t["name"] for t in await list_tokens(api)] == ["bobs"]
    assert (await me(api)).json["username"] == "bob"


async def test_last_used_at_is_set_after_use(make_user: UserFactory, base_url: str) -> None:
    browser = await make_user("alice")
    token = await create_token(browser)
    assert (await list_tokens(browser))[0]["last_used_at"] is None
    before = datetime.now(UTC)
    assert await me_status(Client(base_url, token=token["token"])) == 200
    used = (await list_tokens(browser))[0]["last_used_at"]
    assert used is not None
    used_at = parse_time(used)
    assert before - timedelta(minutes=1) < used_at < datetime.now(UTC) + timedelta(minutes=1)


async def test_wrong_token_does_not_hide_a_valid_cookie(make_user: UserFactory) -> None:
    browser = await make_user("alice")
    response = await browser.get("/api/accounts/me", headers={"Authorization": "token cep_nope"})
    assert response.status == 200, response.body


class TestTokenLimit:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Accounts": {"max_tokens_per_user": 2}}

    async def test_tokens_beyond_the_limit_are_refused(self, make_user: UserFactory) -> None:
        browser = await make_user("alice")
        first = await create_token(browser, "one")
        await create_token(browser, "two")
        assert_error(await browser.post("/api/accounts/tokens", {"name": "three"}), 409)
        assert len(await list_tokens(browser)) == 2
        assert (await browser.delete(f"/api/accounts/tokens/{first['id']}")).status == 204
        await create_token(browser, "three")


# --- timestamps ----------------------------------------------------------------------------


class TestTimestampsAreUtc:
    """The API writes UTC with a 'Z' whatever the PostgreSQL server's time zone."""

    @pytest.fixture
    def database_url(self, database_url: str) -> str:
        name = conninfo_to_dict(database_url)["dbname"]
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET timezone TO 'America/New_York'").format(
                    sql.Identifier(str(name))
                )
            )
        return database_url

    async def test_timestamps_end_with_z(self, make_user: UserFactory, base_url: str) -> None:
        browser = await make_user("alice")
        created_at = (await me(browser)).json["created_at"]
        assert created_at.endswith("Z"), created_at
        token = await create_token(browser, expires_in_days=1)
        for field in ("created_at", "expires_at"):
            assert token[field].endswith("Z"), (field, token[field])
        assert await me_status(Client(base_url, token=token["token"])) == 200
        listed = (await list_tokens(browser))[0]
        for field in ("created_at", "last_used_at", "expires_at"):
            assert listed[field].endswith("Z"), (field, listed[field])


# --- administrators and disabled users -----------------------------------------------------


class TestAdministration:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Accounts": {"admin_users": ["root"]}}

    async def test_configured_admin_is_admin(self, make_user: UserFactory) -> None:
        root = await make_user("root")
        assert (await me(root)).json["is_admin"] is True
        alice = await make_user("alice")
        assert (await me(alice)).json["is_admin"] is False

    async def test_non_admin_is_refused(self, make_user: UserFactory, base_url: str) -> None:
        await make_user("root")
        alice = await make_user("alice")
        assert_error(await alice.get("/api/admin/users"), 403)
        response = await alice.patch("/api/admin/users/root", {"disabled": True})
        assert_error(response, 403)
        assert await can_login(base_url, "root")
        response = await alice.patch("/api/admin/users/alice", {"is_admin": True})
        assert_error(response, 403)
        assert (await me(alice)).json["is_admin"] is False

    async def test_non_admin_token_is_refused(self, make_token_client: UserFactory) -> None:
        api = await make_token_client("alice")
        assert_error(await api.get("/api/admin/users"), 403)

    async def test_anonymous_is_refused(self, client: Client) -> None:
        assert_error(await client.get("/api/admin/users"), 401)

    async def test_admin_lists_users(self, make_user: UserFactory) -> None:
        root = await make_user("root")
        await make_user("alice", email="alice@example.com")
        response = await root.get("/api/admin/users")
        assert response.status == 200, response.body
        users = {u["username"]: u for u in response.json}
        assert set(users) == {"root", "alice"}
        for user in users.values():
            assert set(user) == USER_FIELDS | {"disabled"}
            assert user["disabled"] is False
            assert "password" not in str(user)
        assert users["root"]["is_admin"] is True
        assert users["alice"]["is_admin"] is False
        assert users["alice"]["email"] == "alice@example.com"

    async def test_disabling_cuts_off_cookie_and_token_at_once(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        root = await make_user("root")
        alice = await make_user("alice")
        token = await create_token(alice)
        api = Client(base_url, token=token["token"])
        assert await me_status(alice) == 200
        assert await me_status(api) == 200

        response = await root.patch("/api/admin/users/alice", {"disabled": True})
        assert response.status == 200, response.body
        assert response.json["username"] == "alice"
        assert response.json["disabled"] is True

        assert_error(await me(alice), 401)
        assert_error(await me(api), 401)
        listed = {u["username"]: u for u in (await root.get("/api/admin/users")).json}
        assert listed["alice"]["disabled"] is True
        assert await me_status(root) == 200  # the admin is unaffected

    async def test_disabled_user_cannot_log_in(self, make_user: UserFactory, base_url: str) -> None:
        root = await make_user("root")
        await make_user("alice")
        assert (await root.patch("/api/admin/users/alice", {"disabled": True})).status == 200
        disabled = assert_error(await login(Client(base_url), "alice"), 401)
        unknown = assert_error(await login(Client(base_url), "nobody"), 401)
        assert disabled == unknown  # the response does not reveal the account exists

    async def test_reenabling_restores_tokens_but_not_old_logins(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        root = await make_user("root")
        alice = await make_user("alice")
        token = await create_token(alice)
        api = Client(base_url, token=token["token"])
        assert (await root.patch("/api/admin/users/alice", {"disabled": True})).status == 200
        assert await me_status(api) == 401

        response = await root.patch("/api/admin/users/alice", {"disabled": False})
        assert response.status == 200, response.body
        assert response.json["disabled"] is False
        assert await me_status(api) == 200
        # Disabling revoked the browser login; the user logs in again.
        assert await me_status(alice) == 401
        assert await can_login(base_url, "alice")

    async def test_admin_with_token_needs_no_xsrf(
        self, make_token_client: UserFactory, make_user: UserFactory
    ) -> None:
        admin_api = await make_token_client("root")
        alice = await make_user("alice")
        response = await admin_api.patch("/api/admin/users/alice", {"disabled": True})
        assert response.status == 200, response.body
        assert await me_status(alice) == 401

    async def test_admin_cookie_patch_without_xsrf_is_refused(self, make_user: UserFactory) -> None:
        root = await make_user("root")
        alice = await make_user("alice")
        response = await without_xsrf(root).patch("/api/admin/users/alice", {"disabled": True})
        assert_error(response, 403)
        assert await me_status(alice) == 200

    async def test_admin_cannot_disable_or_demote_themself(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        root = await make_user("root")
        assert_error(await root.patch("/api/admin/users/root", {"disabled": True}), 409)
        assert_error(await root.patch("/api/admin/users/root", {"is_admin": False}), 409)
        assert await me_status(root) == 200
        assert (await me(root)).json["is_admin"] is True
        assert await can_login(base_url, "root")

    async def test_unknown_user_is_404(self, make_user: UserFactory) -> None:
        root = await make_user("root")
        response = await root.patch("/api/admin/users/nobody", {"disabled": True})
        assert_error(response, 404, "nobody")

    async def test_username_in_path_is_case_insensitive(self, make_user: UserFactory) -> None:
        root = await make_user("root")
        alice = await make_user("alice")
        response = await root.patch("/api/admin/users/ALICE", {"disabled": True})
        assert response.status == 200, response.body
        assert response.json["username"] == "alice"
        assert await me_status(alice) == 401

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            ({}, ()),
            ({"disabled": "yes"}, ("disabled",)),
            ({"disabled": 1}, ("disabled",)),
            ({"disabled": None}, ("disabled",)),
            ({"is_admin": "true"}, ("is_admin",)),
            ({"disabled": True, "password": "x"}, ("password",)),
            ({"username": "bob"}, ("username",)),
        ],
    )
    async def test_bad_admin_bodies_are_400(
        self, make_user: UserFactory, body: dict[str, Any], words: tuple[str, ...]
    ) -> None:
        root = await make_user("root")
        alice = await make_user("alice")
        assert_error(await root.patch("/api/admin/users/alice", body), 400, *words)
        assert await me_status(alice) == 200
        listed = {u["username"]: u for u in (await root.get("/api/admin/users")).json}
        assert listed["alice"]["disabled"] is False
        assert listed["alice"]["is_admin"] is False

    async def test_admin_body_must_be_json(self, make_user: UserFactory) -> None:
        root = await make_user("root")
        await make_user("alice")
        response = await root.patch(
            "/api/admin/users/alice",
            raw_body=b"disabled=true",
            headers={"Content-Type": "application/json"},
        )
        assert_error(response, 400)

    async def test_promoted_user_becomes_admin_and_can_be_demoted(
        self, make_user: UserFactory
    ) -> None:
        root = await make_user("root")
        alice = await make_user("alice")
        response = await root.patch("/api/admin/users/alice", {"is_admin": True})
        assert response.status == 200, response.body
        assert response.json["is_admin"] is True
        assert (await me(alice)).json["is_admin"] is True
        assert (await alice.get("/api/admin/users")).status == 200

        response = await root.patch("/api/admin/users/alice", {"is_admin": False})
        assert response.status == 200, response.body
        assert response.json["is_admin"] is False
        assert_error(await alice.get("/api/admin/users"), 403)


# --- login throttling ----------------------------------------------------------------------


class TestUsernameThrottling:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {
            "Accounts": {"block_after_user": 3, "block_seconds": 60, "block_after_address": 1000}
        }

    @staticmethod
    async def fail(base_url: str, username: str, times: int) -> None:
        for _ in range(times):
            assert_error(await login(Client(base_url), username, "wrong password"), 401)

    async def test_blocked_after_three_failures_even_with_right_password(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        await make_user("alice")
        await self.fail(base_url, "alice", 3)
        browser = Client(base_url)
        response = await login(browser, "alice")
        body = assert_error(response, 429, "Try again in")
        assert LOGIN_COOKIE not in browser.cookies
        assert body["reason"] == "too_many_attempts"
        # Another spelling of the same name is the same account, so it is blocked too.
        assert_error(await login(Client(base_url), "ALICE"), 429)

    async def test_block_says_when_to_retry(self, make_user: UserFactory, base_url: str) -> None:
        await make_user("alice")
        await self.fail(base_url, "alice", 3)
        response = await login(Client(base_url), "alice")
        assert response.status == 429, response.body
        assert "Retry-After" in response.headers, dict(response.headers.get_all())
        retry_after = response.headers["Retry-After"]
        assert retry_after.isdigit(), retry_after
        assert 0 < int(retry_after) <= 60

    async def test_existing_logins_survive_a_block(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        alice = await make_user("alice")
        await self.fail(base_url, "alice", 3)
        assert_error(await login(Client(base_url), "alice"), 429)
        assert await me_status(alice) == 200

    async def test_unknown_usernames_are_blocked_too(self, base_url: str) -> None:
        await self.fail(base_url, "ghost", 3)
        assert_error(await login(Client(base_url), "ghost", "anything at all"), 429)

    async def test_other_usernames_from_the_same_address_still_log_in(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        await make_user("alice")
        await make_user("bob")
        await self.fail(base_url, "alice", 3)
        assert_error(await login(Client(base_url), "alice"), 429)
        assert await can_login(base_url, "bob")

    async def test_successful_login_resets_the_count(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        await make_user("alice")
        await self.fail(base_url, "alice", 2)
        assert await can_login(base_url, "alice")
        await self.fail(base_url, "alice", 2)
        assert await can_login(base_url, "alice")
        await self.fail(base_url, "alice", 2)
        assert await can_login(base_url, "alice")

    async def test_block_expires(
        self, make_user: UserFactory, base_url: str, database_url: str
    ) -> None:
        await make_user("alice")
        await self.fail(base_url, "alice", 3)
        assert_error(await login(Client(base_url), "alice"), 429)
        await sql_execute(
            database_url,
            "UPDATE login_failures SET blocked_until = now() - interval '1 second'",
            [],
        )
        assert await can_login(base_url, "alice")


class TestAddressThrottling:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {
            "Accounts": {"block_after_user": 100, "block_after_address": 3, "block_seconds": 60}
        }

    async def test_address_is_blocked_across_usernames(
        self, make_user: UserFactory, base_url: str
    ) -> None:
        await make_user("alice")
        for name in ("ghost1", "ghost2", "ghost3"):
            assert_error(await login(Client(base_url), name, "wrong password"), 401)
        assert_error(await login(Client(base_url), "alice"), 429, "Try again in")
