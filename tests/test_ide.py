"""The IDE in a real browser: Debian's Chromium driven by Playwright, against a real PlatformApp
with real sandboxes. One journey per user story."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    WebSocketRoute,
    async_playwright,
    expect,
)

from tests.client import Client
from tests.waiting import until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: the machine is shared, and a sandbox may have to start first.
WAIT = 45_000
PASSWORD = "correct horse"
DIRTY = re.compile(r"\bdirty\b")
PROGRAM = '''"""Squares, printed by the IDE's Run button."""


def squares(n: int) -> list[int]:
    return [i * i for i in range(1, n + 1)]


if __name__ == "__main__":
    values = squares(6)
    print("squares:", values)
    print("sum is", sum(values))
'''

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=WAIT)


@dataclass
class Pages:
    """Opens browser pages and remembers what went wrong in them."""

    browser: Browser
    base_url: str
    contexts: list[BrowserContext] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def context(self, client: Client | None = None, **options: Any) -> BrowserContext:
        """A fresh browser profile, logged in as ``client`` if given."""
        context = await self.browser.new_context(
            viewport={"width": 1280, "height": 800}, base_url=self.base_url, **options
        )
        context.set_default_timeout(WAIT)
        # Terminal text is read from the DOM renderer (WebGL draws on a canvas).
        await context.add_init_script("localStorage.setItem('ide:terminal-renderer', 'dom')")
        if client is not None:
            await context.add_cookies(
                [{"name": k, "value": v, "url": self.base_url} for k, v in client.cookies.items()]
            )
        self.contexts.append(context)
        return context

    async def page(self, context: BrowserContext | None = None) -> Page:
        """A page that reports script errors and CSP violations."""
        page = await (context or await self.context()).new_page()

        def console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text or "Refused to" in message.text:
                self.problems.append(f"CSP: {message.text}")

        page.on("console", console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        return page


@pytest.fixture
def pages(jp_asyncio_loop: asyncio.AbstractEventLoop, base_url: str) -> Iterator[Pages]:
    """Chromium for one test (never a downloaded browser: Debian's, as CI installs it)."""
    assert Path(CHROMIUM).exists(), "Chromium is needed: apt-get install chromium"

    async def launch() -> tuple[Playwright, Browser]:
        playwright = await async_playwright().start()
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        return playwright, browser

    playwright, browser = jp_asyncio_loop.run_until_complete(launch())
    opened = Pages(browser, base_url.rstrip("/"))
    yield opened

    async def close() -> None:
        for context in opened.contexts:
            await context.close()
        await browser.close()
        await playwright.stop()

    jp_asyncio_loop.run_until_complete(close())
    assert not opened.problems, opened.problems


# --- helpers --------------------------------------------------------------------------------


def row(page: Page, path: str) -> Locator:
    """A file tree row."""
    return page.locator(f'.tree-row[data-path="{path}"]')


def tab(page: Page, path: str) -> Locator:
    """An editor tab."""
    return page.locator(f'#editor-tabs .tab[data-path="{path}"]')


def terminal(page: Page) -> Locator:
    """The text of the visible terminal."""
    return page.locator(".terminal-view.active .xterm-rows")


def editor_lines(page: Page) -> Locator:
    """The editor's visible text."""
    return page.locator("#editor .view-lines")


async def paste_into_editor(page: Page, text: str) -> None:
    """Replace the editor's text as a person pasting would (typing would auto-indent)."""
    await editor_lines(page).click()
    await page.keyboard.press("ControlOrMeta+A")
    await page.evaluate(
        """(text) => {
          const data = new DataTransfer();
          data.setData('text/plain', text);
          document.activeElement.dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        text,
    )


async def type_in_terminal(page: Page, command: str) -> None:
    """Type a command line into the visible terminal."""
    await page.locator(".terminal-view.active .xterm-screen").click()
    await page.keyboard.type(command)
    await page.keyboard.press("Enter")


async def workspace_of(
    make_user: Any, name: str = "demo", username: str = "alice"
) -> tuple[Client, str]:
    """A logged-in user with one workspace; returns the client and the workspace's uuid."""
    user = await make_user(username)
    created = await user.post("/api/workspaces", {"name": name})
    assert created.status == 201, created.body
    return user, created.json["uuid"]


async def open_ide(pages: Pages, user: Client, workspace: str) -> Page:
    """The IDE of a workspace, with its first terminal ready."""
    page = await pages.page(await pages.context(user))
    await page.goto(f"/w/{workspace}/")
    await expect(terminal(page)).to_contain_text("$")
    return page


async def file_text(user: Client, workspace: str, path: str) -> str | None:
    """A file's text through the Contents API (None if it does not exist)."""
    response = await user.get(f"/w/{workspace}/api/contents/{path}")
    return None if response.status == 404 else str(response.json["content"])


# --- journeys -------------------------------------------------------------------------------


async def test_register_login_create_open_edit_save_run(pages: Pages, tmp_path: Path) -> None:
    page = await pages.page()
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login$"))

    # Register (with a mistake first: errors are shown next to their field).
    await page.click("#to-register")
    await page.fill("#field-username", "ada")
    await page.fill("#field-password", PASSWORD)
    await page.fill("#field-confirm", "something else")
    await page.click("#submit")
    await expect(page.locator("#field-confirm-error")).to_have_text("The passwords differ.")
    await page.fill("#field-confirm", PASSWORD)
    await page.click("#submit")
    await expect(page).to_have_url(re.compile(r"/workspaces$"))
    await expect(page.locator("#username")).to_have_text("ada")

    # Log out, then log in (a wrong password is said in words).
    await page.click("#logout")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.fill("#field-username", "ada")
    await page.fill("#field-password", "wrong password")
    await page.click("#submit")
    await expect(page.locator("#form-error")).to_have_text("Invalid username or password.")
    await page.fill("#field-password", PASSWORD)
    await page.click("#submit")
    await expect(page).to_have_url(re.compile(r"/workspaces$"))

    # Create a workspace and open it.
    await page.fill("#new-workspace-name", "demo")
    await page.click("#create-workspace")
    workspace_row = page.locator("#workspace-rows tr", has_text="demo")
    await expect(workspace_row.locator(".badge")).to_have_text("Stopped")
    uuid = await workspace_row.get_attribute("data-uuid")
    assert uuid
    # Some files, so the picture shows a tree (written the way any Jupyter client would).
    xsrf = next(c["value"] for c in await page.context.cookies() if c["name"] == "_xsrf")
    for path, body in [
        ("data", {"type": "directory"}),
        ("data/numbers.csv", {"type": "file", "format": "text", "content": "n\n1\n2\n3\n"}),
        ("README.md", {"type": "file", "format": "text", "content": "# Demo\n"}),
    ]:
        saved = await page.request.put(
            f"/w/{uuid}/api/contents/{path}", data=body, headers={"X-XSRFToken": xsrf}
        )
        assert saved.status in {200, 201}, await saved.text()
    await workspace_row.get_by_role("link", name="Open").click()
    await expect(page).to_have_url(re.compile(rf"/w/{uuid}/$"))

    # main.py is open; edit it, see it dirty, save with Ctrl+S. (Once the terminal is up: a
    # save while the sandbox is still starting may miss it, a back-end race reported.)
    await expect(terminal(page)).to_contain_text("$")
    await expect(tab(page, "main.py")).to_have_class(re.compile(r"\bactive\b"))
    await expect(editor_lines(page)).to_contain_text("Hello from your workspace")
    await paste_into_editor(page, PROGRAM)
    await expect(tab(page, "main.py")).to_have_class(DIRTY)
    await page.keyboard.press("ControlOrMeta+S")
    await expect(tab(page, "main.py")).not_to_have_class(DIRTY)
    saved_text = await page.request.get(f"/w/{uuid}/api/contents/main.py")
    assert (await saved_text.json())["content"] == PROGRAM

    # Run: the output shows in the terminal; the sandbox runs.
    await page.click("#run")
    await expect(terminal(page)).to_contain_text("sum is 91")
    await expect(terminal(page)).to_contain_text("squares: [1, 4, 9, 16, 25, 36]")
    await expect(page.locator("#sandbox-state")).to_have_attribute("data-state", "running")
    await expect(page.locator("#cursor-info")).to_contain_text("Python")
    await row(page, "data").click()
    await expect(row(page, "data/numbers.csv")).to_be_visible()
    # The picture in the README (IDE_SCREENSHOT=docs/images/ide.png refreshes it).
    await page.locator("#editor").click()
    await page.screenshot(path=os.environ.get("IDE_SCREENSHOT") or tmp_path / "ide.png")

    # Back in the workspace list, the workspace's sandbox shows as running.
    await page.click("a.brand")
    await expect(page).to_have_url(re.compile(r"/workspaces$"))
    workspace_row = page.locator("#workspace-rows tr", has_text="demo")
    await expect(workspace_row.locator(".badge")).to_have_text("Running")


@pytest.mark.parametrize(
    "jp_server_config",
    [{"Accounts": {"block_after_user": 2, "slow_down_after": 100, "block_seconds": 600}}],
)
async def test_login_and_register_errors_are_said_in_words(pages: Pages, make_user: Any) -> None:
    await make_user("taken")
    page = await pages.page()
    await page.goto("/register")
    await page.fill("#field-username", "taken")
    await page.fill("#field-password", PASSWORD)
    await page.fill("#field-confirm", PASSWORD)
    await page.click("#submit")
    await expect(page.locator("#field-username-error")).not_to_be_empty()
    await page.fill("#field-username", "x")
    await page.click("#submit")
    await expect(page.locator("#field-username-error")).to_contain_text("3-32 characters")

    await page.click("#to-login")
    for _ in range(2):
        await page.fill("#field-username", "taken")
        await page.fill("#field-password", "not the password")
        await page.click("#submit")
        await expect(page.locator("#form-error")).to_have_text("Invalid username or password.")
    await page.click("#submit")
    await expect(page.locator("#form-error")).to_have_text(
        re.compile(r"Too many failed attempts: try again in \d+ s\.")
    )
    await expect(page.locator("#submit")).to_be_disabled()


async def test_workspace_list_create_rename_delete(pages: Pages, make_user: Any) -> None:
    user = await make_user()
    # A visitor is sent to the login page, and comes back after logging in.
    page = await pages.page()
    await page.goto("/workspaces")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fworkspaces$"))
    await page.fill("#field-username", "alice")
    await page.fill("#field-password", PASSWORD)
    await page.click("#submit")
    await expect(page).to_have_url(re.compile(r"/workspaces$"))
    await expect(page.locator("#no-workspaces")).to_be_visible()
    await page.click("#create-workspace")
    await expect(page.locator("#create-error")).to_have_text("Enter a name for the new workspace.")
    for name in ["one", "two"]:
        await page.fill("#new-workspace-name", name)
        await page.click("#create-workspace")
        await expect(page.locator("#workspace-rows tr", has_text=name)).to_be_visible()
    rows = page.locator("#workspace-rows tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first.locator(".activity")).to_have_text(re.compile(r"now|second"))

    uuid = await page.locator("#workspace-rows tr", has_text="one").get_attribute("data-uuid")
    one = page.locator(f'#workspace-rows tr[data-uuid="{uuid}"]')
    await one.get_by_role("button", name="Rename").click()
    await one.locator(".rename-input").fill("first")
    await one.locator(".rename-input").press("Enter")
    await expect(page.locator("#workspace-rows tr", has_text="first")).to_be_visible()

    two = page.locator("#workspace-rows tr", has_text="two")
    await two.get_by_role("button", name="Delete").click()
    await expect(page.locator(".dialog")).to_contain_text("Delete “two” and all its files?")
    await page.locator(".dialog").get_by_role("button", name="Cancel").click()
    await expect(rows).to_have_count(2)
    await two.get_by_role("button", name="Delete").click()
    await page.locator(".dialog").get_by_role("button", name="Delete").click()
    await expect(rows).to_have_count(1)

    listed = await user.get("/api/workspaces")
    assert [w["name"] for w in listed.json] == ["first"]


async def test_tree_create_rename_move_delete(pages: Pages, make_user: Any) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    await expect(row(page, "main.py")).to_be_visible()

    # New folder, then a new file at the top (clicking empty space selects nothing).
    await page.click("#tree-new-folder")
    await page.locator(".tree-input").fill("src")
    await page.locator(".tree-input").press("Enter")
    await expect(row(page, "src")).to_be_visible()
    await page.locator("#file-tree").click(position={"x": 100, "y": 300})
    await page.click("#tree-new-file")
    await page.locator(".tree-input").fill("a/b")
    await page.locator(".tree-input").press("Enter")
    await expect(page.locator(".tree-input-error")).to_contain_text("cannot contain")
    await page.locator(".tree-input").fill("main.py")
    await page.locator(".tree-input").press("Enter")
    await expect(page.locator(".tree-input-error")).to_contain_text("already exists")
    await page.locator(".tree-input").fill("notes.txt")
    await page.locator(".tree-input").press("Enter")
    await expect(row(page, "notes.txt")).to_be_visible()
    await expect(tab(page, "notes.txt")).to_have_class(re.compile(r"\bactive\b"))
    await page.click("#run")
    await expect(page.locator(".toast-error").last).to_contain_text(
        "Run works on Python files: “notes.txt” is not one."
    )

    # Rename in place (the open tab follows).
    await row(page, "notes.txt").click(button="right")
    await page.locator("#tree-menu").get_by_role("menuitem", name="Rename").click()
    await expect(page.locator(".tree-input")).to_have_value("notes.txt")
    await page.locator(".tree-input").fill("todo.txt")
    await page.locator(".tree-input").press("Enter")
    await expect(row(page, "todo.txt")).to_be_visible()
    await expect(row(page, "notes.txt")).to_have_count(0)
    await expect(tab(page, "todo.txt")).to_be_visible()

    # Drag it into the folder.
    await row(page, "todo.txt").drag_to(row(page, "src"))
    await expect(row(page, "src/todo.txt")).to_be_visible()
    await expect(row(page, "todo.txt")).to_have_count(0)
    await expect(tab(page, "src/todo.txt")).to_be_visible()

    # Delete, after confirmation (its tab closes).
    await row(page, "src/todo.txt").click(button="right")
    await page.locator("#tree-menu").get_by_role("menuitem", name="Delete").click()
    await expect(page.locator(".dialog")).to_contain_text("Delete “src/todo.txt”?")
    await page.locator(".dialog").get_by_role("button", name="Delete").click()
    await expect(row(page, "src/todo.txt")).to_have_count(0)
    await expect(tab(page, "src/todo.txt")).to_have_count(0)

    root = await user.get(f"/w/{ws}/api/contents")
    assert sorted(item["name"] for item in root.json["content"]) == ["main.py", "src"]
    assert (await user.get(f"/w/{ws}/api/contents/src")).json["content"] == []


async def test_upload_with_progress_and_download(pages: Pages, make_user: Any) -> None:
    user, ws = await workspace_of(make_user)
    context = await pages.context(user)
    # Note the chunk numbers of the uploads (the browser does not report large bodies).
    await context.add_init_script("""
      window.uploadChunks = [];
      const fetchFromPage = window.fetch;
      window.fetch = async function (input, init) {
        if (input instanceof Request && input.method === 'PUT' && input.url.includes('/big.bin')) {
          window.uploadChunks.push((await input.clone().json()).chunk ?? null);
        }
        return fetchFromPage.call(this, input, init);
      };
    """)
    page = await pages.page(context)
    await page.goto(f"/w/{ws}/")
    await expect(terminal(page)).to_contain_text("$")

    small = b"a,b\n1,2\n"
    await page.set_input_files(
        "#upload-input", files=[{"name": "data.csv", "mimeType": "text/csv", "buffer": small}]
    )
    await expect(row(page, "data.csv")).to_be_visible()

    # Past 15 MB: 1 MiB chunks numbered 1..N, the last one -1, as JupyterLab sends them.
    big = hashlib.sha256(b"seed").digest() * (16 * 1024 * 1024 // 32) + b"tail" * 25
    await page.set_input_files(
        "#upload-input",
        files=[{"name": "big.bin", "mimeType": "application/octet-stream", "buffer": big}],
    )
    await expect(page.locator('.upload[data-path="big.bin"]')).to_be_visible()
    await expect(row(page, "big.bin")).to_be_visible(timeout=120_000)
    assert await page.evaluate("window.uploadChunks") == [*range(1, 17), -1]
    stat = await user.get(f"/w/{ws}/api/contents/big.bin?content=0")
    assert stat.json["size"] == len(big)
    await row(page, "big.bin").click()
    await expect(page.locator("#editor-placeholder")).to_contain_text("too large to edit")

    for path, expected in [("data.csv", small), ("big.bin", big)]:
        await row(page, path).click(button="right")
        async with page.expect_download() as download_info:
            await page.locator("#tree-menu").get_by_role("menuitem", name="Download").click()
        download = await download_info.value
        assert download.suggested_filename == path
        saved = await download.path()
        assert await asyncio.to_thread(Path(saved).read_bytes) == expected


async def block_events_socket(page: Page) -> None:
    """Make ``WS /w/<uuid>/api/events`` unavailable, as before the server had it."""

    async def refuse(ws: WebSocketRoute) -> None:
        await ws.close(code=1011, reason="unavailable")

    await page.route_web_socket(re.compile(r"/api/events$"), refuse)


@pytest.mark.parametrize("feed", ["live", "polling"])
async def test_changes_made_in_the_terminal_reach_the_tree_and_tabs(
    pages: Pages, make_user: Any, feed: str
) -> None:
    user, ws = await workspace_of(make_user)
    page = await pages.page(await pages.context(user))
    if feed == "polling":
        await block_events_socket(page)
    await page.goto(f"/w/{ws}/")
    await expect(terminal(page)).to_contain_text("$")
    await expect(page.locator("#sync-mode")).to_have_attribute("data-mode", feed)
    await expect(editor_lines(page)).to_contain_text("Hello from your workspace")

    # A file written by a program appears in the tree.
    await type_in_terminal(page, "echo made > made-by-terminal.txt")
    await expect(row(page, "made-by-terminal.txt")).to_be_visible()

    # The open (clean) file changes underneath: the tab reloads silently.
    await type_in_terminal(page, "echo 'print(\"from the terminal\")' > main.py")
    await expect(editor_lines(page)).to_contain_text('print("from the terminal")')
    await expect(page.locator("#editor-banner")).to_be_hidden()
    await expect(tab(page, "main.py")).not_to_have_class(DIRTY)

    # Under a dirty tab: the IDE asks instead of overwriting either side.
    await paste_into_editor(page, "mine = 1\n")
    await expect(tab(page, "main.py")).to_have_class(DIRTY)
    await type_in_terminal(page, "echo '# theirs' >> main.py")
    await expect(page.locator("#editor-banner")).to_contain_text("changed on disk")
    await expect(editor_lines(page)).to_contain_text("mine = 1")
    await page.locator("#editor-banner").get_by_role("button", name="Reload from disk").click()
    await expect(editor_lines(page)).to_contain_text("# theirs")
    await expect(tab(page, "main.py")).not_to_have_class(DIRTY)

    # A file deleted by a program is struck out in its tab, and leaves the tree.
    await type_in_terminal(page, "rm main.py")
    await expect(row(page, "main.py")).to_have_count(0)
    await expect(tab(page, "main.py")).to_have_class(re.compile(r"\bdeleted\b"))


async def test_second_tab_reloads_after_a_save_elsewhere(pages: Pages, make_user: Any) -> None:
    user, ws = await workspace_of(make_user)
    context = await pages.context(user)
    first = await pages.page(context)
    await first.goto(f"/w/{ws}/")
    second = await pages.page(context)
    await second.goto(f"/w/{ws}/")
    for page in (first, second):
        await expect(editor_lines(page)).to_contain_text("Hello from your workspace")

    await paste_into_editor(first, 'print("saved in the first tab")\n')
    await first.keyboard.press("ControlOrMeta+S")
    await expect(tab(first, "main.py")).not_to_have_class(DIRTY)
    await expect(editor_lines(second)).to_contain_text("saved in the first tab")
    await expect(tab(second, "main.py")).not_to_have_class(DIRTY)

    # Closing a dirty tab asks first; Cancel keeps it, "Don't save" drops the edit.
    await paste_into_editor(second, "unsaved = True\n")
    await tab(second, "main.py").hover()
    await tab(second, "main.py").locator(".tab-close").click()
    await expect(second.locator(".dialog")).to_contain_text("Save the changes to “main.py”")
    await second.locator(".dialog").get_by_role("button", name="Cancel").click()
    await expect(tab(second, "main.py")).to_have_class(DIRTY)
    await tab(second, "main.py").hover()
    await tab(second, "main.py").locator(".tab-close").click()
    await second.locator(".dialog").get_by_role("button", name="Don't save").click()
    await expect(tab(second, "main.py")).to_have_count(0)
    assert await file_text(user, ws, "main.py") == 'print("saved in the first tab")\n'

    # Leaving a page with unsaved changes asks too.
    await paste_into_editor(first, "unsaved = True\n")
    await expect(tab(first, "main.py")).to_have_class(DIRTY)
    asked: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        asked.append(dialog.type)
        await dialog.dismiss()

    first.on("dialog", on_dialog)
    await first.close(run_before_unload=True)

    async def was_asked() -> bool:
        return bool(asked)

    await until(was_asked, "the unsaved-changes question", within=45, interval=0.2)
    assert asked == ["beforeunload"]
    assert not first.is_closed()


async def test_terminal_reconnects_and_shows_what_it_missed(pages: Pages, make_user: Any) -> None:
    user, ws = await workspace_of(make_user)
    page = await pages.page(await pages.context(user))
    sockets: list[WebSocketRoute] = []
    cut = asyncio.Event()

    async def relay(ws_route: WebSocketRoute) -> None:
        if cut.is_set():
            await ws_route.close(code=1011, reason="network down")
            return
        ws_route.connect_to_server()
        sockets.append(ws_route)

    await page.route_web_socket(re.compile(r"/terminals/websocket/"), relay)
    await page.goto(f"/w/{ws}/")
    await expect(terminal(page)).to_contain_text("$")
    await expect(page.locator("#terminal-tabs .tab[data-name]")).to_have_count(1)

    # The connection drops while a program is still printing.
    await type_in_terminal(page, "sleep 1; echo missed-$((40+2)); touch printed.flag")
    cut.set()
    await sockets[-1].close(code=4000, reason="cut")
    await expect(page.locator(".terminal-view.active .terminal-status")).to_contain_text(
        "reconnecting"
    )

    async def printed() -> bool:
        return await file_text(user, ws, "printed.flag") is not None

    await until(
        printed, "the program to finish while the terminal was cut off", within=45, interval=0.2
    )
    cut.clear()
    # Reconnected with back-off: the replayed scrollback shows what was printed meanwhile.
    await expect(terminal(page)).to_contain_text("missed-42")
    await expect(page.locator(".terminal-view.active .terminal-status")).to_be_hidden()
    await type_in_terminal(page, "echo after-$((20+3))")
    await expect(terminal(page)).to_contain_text("after-23")
    assert len(sockets) >= 2


async def test_terminals_layout_and_theme(pages: Pages, make_user: Any) -> None:
    user, ws = await workspace_of(make_user)
    context = await pages.context(user, color_scheme="dark")
    page = await pages.page(context)
    await page.goto(f"/w/{ws}/")
    await expect(terminal(page)).to_contain_text("$")
    await expect(page.locator("#editor .monaco-editor")).to_have_class(re.compile(r"\bvs-dark\b"))
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(30, 30, 30)"

    # The terminal is told its size, again after the panel is resized.
    await type_in_terminal(page, "echo SIZE1 $(stty size)")
    await expect(terminal(page)).to_contain_text(re.compile(r"SIZE1 \d+ \d+"))
    bar = page.locator(".splitter-horizontal")
    box = await bar.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + 200, box["y"] + 1)
    await page.mouse.down()
    await page.mouse.move(box["x"] + 200, box["y"] - 150, steps=5)
    await page.mouse.up()
    await type_in_terminal(page, "echo SIZE2 $(stty size)")
    await expect(terminal(page)).to_contain_text(re.compile(r"SIZE2 \d+ \d+"))
    text = await terminal(page).inner_text()
    rows1 = int(re.findall(r"SIZE1 (\d+) \d+", text)[-1])
    rows2 = int(re.findall(r"SIZE2 (\d+) \d+", text)[-1])
    assert rows2 > rows1

    # F5 saves and runs the current Python file.
    await editor_lines(page).click()
    await page.keyboard.press("F5")
    await expect(terminal(page)).to_contain_text("Hello from your workspace!")

    # Several terminals: new, switch, close.
    await page.click("#new-terminal")
    await expect(page.locator("#terminal-tabs .tab.active")).to_have_attribute("data-name", "2")
    await expect(terminal(page)).to_contain_text("$")
    await type_in_terminal(page, "echo in-second")
    await expect(terminal(page)).to_contain_text("in-second")
    await page.locator('#terminal-tabs .tab[data-name="1"]').click()
    await expect(terminal(page)).to_contain_text("SIZE2")
    await page.locator('#terminal-tabs .tab[data-name="2"]').hover()
    await page.locator('#terminal-tabs .tab[data-name="2"] .tab-close').click()
    await expect(page.locator("#terminal-tabs .tab")).to_have_count(1)
    listed = await user.get(f"/w/{ws}/api/terminals")
    assert [t["name"] for t in listed.json] == ["1"]

    # The split is remembered for this workspace.
    sidebar = page.locator('.sidebar[aria-label="Explorer"]')
    width = (await sidebar.bounding_box() or {"width": 0})["width"]
    splitter = await page.locator(".splitter-vertical").bounding_box()
    assert splitter
    await page.mouse.move(splitter["x"] + 1, splitter["y"] + 100)
    await page.mouse.down()
    await page.mouse.move(splitter["x"] + 121, splitter["y"] + 100, steps=5)
    await page.mouse.up()
    await expect(sidebar).to_have_css("width", f"{round(width) + 120}px")
    await page.reload()
    await expect(sidebar).to_have_css("width", f"{round(width) + 120}px")
