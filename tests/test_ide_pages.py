"""The IDE's pages as HTTP sees them: redirects, 404 pages, CSP, caching and hashed assets."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient

from extensions.ide.assets import AssetManifest, is_hashed
from extensions.ide.handlers import safe_next
from extensions.ide.pages import content_security_policy, page_html, script_json
from tests.client import Client

STATIC = Path(__file__).parent.parent / "platform_server" / "static"
SCRIPT = re.compile(r'<script type="module" src="([^"]+)">')
STYLESHEET = re.compile(r'<link rel="stylesheet" href="([^"]+)">')
CONFIG = re.compile(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>')


@pytest.fixture(autouse=True)
def built_front_end() -> None:
    """These tests read the real build (made by `make install`)."""
    assert (STATIC / "manifest.json").exists(), "the front end is not built: run `make install`"


def directives(policy: str) -> dict[str, str]:
    """A CSP header as {directive: sources}."""
    parts = (p.strip().split(" ", 1) for p in policy.split(";") if p.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


def page_config(body: bytes) -> dict[str, Any]:
    """The page's jupyter-config-data."""
    match = CONFIG.search(body.decode())
    assert match, body[:500]
    config: dict[str, Any] = json.loads(match.group(1))
    return config


async def test_root_goes_to_login_then_to_workspaces(client: Client, make_user: Any) -> None:
    response = await client.get("/")
    assert response.status == 302
    assert response.headers["Location"] == "/login"
    browser = await make_user()
    response = await browser.get("/")
    assert response.status == 302
    assert response.headers["Location"] == "/workspaces"


@pytest.mark.parametrize("path", ["/workspaces", "/w/6f1e3b9e-1111-4b1c-9c1e-000000000000/"])
async def test_pages_send_visitors_to_login_with_next(client: Client, path: str) -> None:
    # jupyter_server's own login redirect (ServerApp.login_url) lands on the IDE's /login.
    response = await client.get(path)
    assert response.status == 302
    assert response.headers["Location"] == f"/login?next={quote(path, safe='')}"
    login = await client.get(response.headers["Location"])
    assert login.status == 200
    assert page_config(login.body)["page"] == "login"


async def test_login_and_register_pages(client: Client, make_user: Any) -> None:
    for path, page in [("/login", "login"), ("/register", "register")]:
        response = await client.get(path)
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
        config = page_config(response.body)
        assert config["page"] == page
        assert config["allowRegistration"] is True
    browser = await make_user()
    response = await browser.get("/login?next=%2Fw%2Fabc%2F")
    assert response.status == 302
    assert response.headers["Location"] == "/w/abc/"
    for unsafe in ["//evil.example/", "https://evil.example/", "/\\evil.example"]:
        response = await browser.get(f"/login?next={quote(unsafe, safe='')}")
        assert response.headers["Location"] == "/workspaces", unsafe


@pytest.mark.parametrize("jp_server_config", [{"Accounts": {"allow_registration": False}}])
async def test_login_page_knows_when_registration_is_closed(client: Client) -> None:
    response = await client.get("/login")
    assert page_config(response.body)["allowRegistration"] is False


async def test_headers_of_pages(client: Client, make_user: Any) -> None:
    browser = await make_user()
    workspace = (await browser.post("/api/workspaces", {"name": "w"})).json
    for who, path in [
        (client, "/login"),
        (client, "/register"),
        (browser, "/workspaces"),
        (browser, f"/w/{workspace['uuid']}/"),
    ]:
        response = await who.get(path)
        assert response.status == 200, path
        assert response.headers["Cache-Control"] == "no-cache", path
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        csp = directives(response.headers["Content-Security-Policy"])
        assert csp["default-src"] == "'self'"
        assert csp["script-src"] == "'self'"
        assert csp["style-src"] == "'self' 'unsafe-inline'"
        assert csp["worker-src"] == "'self'"
        assert csp["img-src"] == "'self' data: blob:"
        assert csp["frame-src"] == "'none'"
        assert csp["frame-ancestors"] == "'none'"
        assert csp["object-src"] == "'none'"
        host = browser.base_url.split("://", 1)[1].rstrip("/")
        assert csp["connect-src"] == f"'self' ws://{host} wss://{host}"
        # Nothing may come from another origin: every source is 'self', data:, blob: or ws(s) here.
        for sources in csp.values():
            for source in sources.split():
                assert source in {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"} or (
                    source in {f"ws://{host}", f"wss://{host}"}
                ), source


async def test_assets_are_hashed_and_cached_for_a_year(client: Client) -> None:
    page = await client.get("/login")
    body = page.body.decode()
    urls = SCRIPT.findall(body) + STYLESHEET.findall(body)
    urls += re.findall(r'<link rel="modulepreload" href="([^"]+)">', body)
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith("/assets/")
        assert is_hashed(url), url
        response = await client.get(url)
        assert response.status == 200, url
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        expected = "text/css" if url.endswith(".css") else "javascript"
        assert expected in response.headers["Content-Type"], url
    # Large files go compressed to browsers that take gzip (precompressed by the build).
    script = client.base_url.rstrip("/") + SCRIPT.findall(body)[0]
    plain = await AsyncHTTPClient().fetch(script, decompress_response=False)
    assert "Content-Encoding" not in plain.headers
    packed = await AsyncHTTPClient().fetch(
        script,
        headers={"Accept-Encoding": "gzip"},
        decompress_response=False,
    )
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["Vary"] == "Accept-Encoding"
    assert "javascript" in packed.headers["Content-Type"]
    assert gzip.decompress(packed.body) == plain.body
    manifest = await client.get("/assets/manifest.json")
    assert manifest.headers["Cache-Control"] == "no-cache"
    assert (await client.get("/assets/no-such-file-ABCDEFGH.js")).status == 404
    assert (await client.get("/assets/../setup.cfg")).status in {403, 404}


async def test_ide_page_names_its_workspace_and_workers(make_user: Any) -> None:
    browser = await make_user()
    workspace = (await browser.post("/api/workspaces", {"name": "</script><b>x"})).json
    response = await browser.get(f"/w/{workspace['uuid']}/")
    assert response.status == 200
    assert "</script><b>" not in response.body.decode()
    config = page_config(response.body)
    assert config["page"] == "ide"
    assert config["baseUrl"] == f"/w/{workspace['uuid']}/"
    assert config["terminalsAvailable"] == "true"
    assert config["workspace"]["name"] == "</script><b>x"
    assert config["user"] == {"username": "alice"}
    assert set(config["workers"]) >= {"editor", "json", "css", "html", "typescript"}
    for url in config["workers"].values():
        worker = await browser.get(url)
        assert worker.status == 200
        assert worker.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # Without the trailing slash: redirected to the canonical URL.
    response = await browser.get(f"/w/{workspace['uuid']}")
    assert response.status == 302
    assert response.headers["Location"] == f"/w/{workspace['uuid']}/"


async def test_ide_page_redirect_of_any_workspace_id_is_a_redirect(make_user: Any) -> None:
    browser = await make_user()
    # A control character or non-ASCII in the id: redirected (then a 404 page), never a 500.
    response = await browser.get("/w/%07%C3%A9x")
    assert response.status == 302
    assert response.headers["Location"] == "/w/%07%C3%A9x/"
    page = await browser.get(response.headers["Location"])
    assert page.status == 404
    assert page.headers["Content-Type"] == "text/html; charset=UTF-8"


async def test_ide_page_of_a_workspace_not_yours_is_a_404_page(make_user: Any) -> None:
    alice = await make_user()
    workspace = (await alice.post("/api/workspaces", {"name": "secret"})).json
    mallory = await make_user("mallory")
    for path in [f"/w/{workspace['uuid']}/", "/w/not-a-uuid/"]:
        response = await mallory.get(path)
        assert response.status == 404, path
        assert response.headers["Content-Type"].startswith("text/html")
        assert "Workspace not found" in response.body.decode()
        assert "secret" not in response.body.decode()
        assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("jp_server_config", [{"IdeApp": {"static_dir": "/nonexistent/ide"}}])
async def test_an_unbuilt_front_end_says_how_to_build_it(client: Client) -> None:
    response = await client.get("/login")
    assert response.status == 503
    assert "make install" in response.body.decode()


def test_unsafe_next_urls_are_refused() -> None:
    assert safe_next("/w/x/") == "/w/x/"
    assert safe_next("/workspaces?x=1") == "/workspaces?x=1"
    for bad in [None, "", "//evil", "/\\evil", "https://evil", "evil", "/a\nb", "/\x00"]:
        assert safe_next(bad) is None, bad


def test_policy_leaves_out_a_strange_host() -> None:
    assert "ws://h:1 wss://h:1" in content_security_policy("h:1")
    assert "ws://[::1]:8 " in content_security_policy("[::1]:8")
    policy = content_security_policy("evil; script-src *")
    assert "evil" not in policy
    assert directives(policy)["connect-src"] == "'self'"


def test_config_json_cannot_close_its_script() -> None:
    text = script_json({"name": "</script><!-- & -->"})
    for character in "<>&":
        assert character not in text
    assert json.loads(text) == {"name": "</script><!-- & -->"}


def test_manifest_names_built_pages(tmp_path: Path) -> None:
    manifest = AssetManifest(STATIC).load()
    assert set(manifest.pages) == {"auth", "workspaces", "ide"}
    for page in manifest.pages.values():
        assert is_hashed(page.js)
        assert (STATIC / page.js).exists()
    html = page_html("t", manifest.pages["ide"], "/assets/", {"page": "ide"})
    assert f'src="/assets/{manifest.pages["ide"].js}"' in html
    missing = AssetManifest(tmp_path)
    with pytest.raises(Exception, match="make install"):
        missing.load()


def test_platform_loads_the_ide_extension() -> None:
    from platform_server.app import PLATFORM_EXTENSIONS

    assert "extensions.ide" in PLATFORM_EXTENSIONS
