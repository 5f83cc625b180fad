"""Co-editing in the IDE: two people in one file, in real browsers against a real PlatformApp
with a real sandbox, and two browsers on two platform replicas."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.client import Client
from tests.test_ide import (  # noqa: F401  (pages: fixture)
    DIRTY,
    WAIT,
    Pages,
    editor_lines,
    file_text,
    pages,
    row,
    tab,
    terminal,
    type_in_terminal,
    workspace_of,
)
from tests.test_restart import Platform, data_dir  # noqa: F401  (fixture)
from tests.waiting import until

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=WAIT)
START = "first line\n"


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """No save by itself while the tests look: typing stays unsaved until Ctrl+S."""
    return {"Collaboration": {"save_delay": 3600, "close_delay": 1}}


async def editor_text(page: Page) -> str:
    """The editor's visible lines, top to bottom (Monaco reuses line elements out of order),
    with its non-breaking spaces as spaces."""
    text: str = await page.evaluate(
        """() => [...document.querySelectorAll('#editor .view-line')]
            .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
            .map((line) => line.textContent).join('\\n')"""
    )
    return text.replace("\u00a0", " ")


async def two_people(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> tuple[Client, str, Page, Page]:
    """Alice's workspace shared with bob (an editor), shared.txt open in both their IDEs."""
    alice, ws = await workspace_of(make_user)
    bob = await make_user("bob")
    added = await alice.post(f"/api/workspaces/{ws}/members", {"username": "bob", "role": "editor"})
    assert added.status == 201, added.body
    model = {"type": "file", "format": "text", "content": START}
    assert (await alice.request("PUT", f"/w/{ws}/api/contents/shared.txt", model)).status == 201
    # ?collaborate=1 shares the tabs whether or not the page knows the workspace is shared.
    alice_page = await pages.page(await pages.context(alice))
    bob_page = await pages.page(await pages.context(bob))
    for page in (alice_page, bob_page):
        await page.goto(f"/w/{ws}/?collaborate=1")
        await row(page, "shared.txt").click()
        await expect(tab(page, "shared.txt")).to_contain_text("Saved")
        await expect(editor_lines(page)).to_contain_text("first line")
    for page in (alice_page, bob_page):
        presence = page.locator("#collab-presence")
        await expect(presence.locator('[data-name="alice"]')).to_be_visible()
        await expect(presence.locator('[data-name="bob"]')).to_be_visible()
    return alice, ws, alice_page, bob_page


async def type_at(page: Page, key: str, text: str) -> None:
    """Type ``text`` after pressing ``key`` (ControlOrMeta+Home or +End) in the editor."""
    await editor_lines(page).click()
    await page.keyboard.press(key)
    await page.keyboard.type(text)


async def type_at_once(one: Page, two: Page, first: str, second: str) -> None:
    """``one`` types ``first`` at the start of the file while ``two`` types ``second`` at its
    end; both editors end showing the same text, with both."""
    await asyncio.gather(
        type_at(one, "ControlOrMeta+Home", first), type_at(two, "ControlOrMeta+End", second)
    )
    for page in (one, two):
        await expect(editor_lines(page)).to_contain_text(first.strip())
        await expect(editor_lines(page)).to_contain_text(second.strip())

    async def same() -> bool:
        return await editor_text(one) == await editor_text(two)

    await until(same, "both editors show the same text")


async def test_two_people_type_at_once_and_see_each_other(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    alice, ws, alice_page, bob_page = await two_people(pages, make_user)
    await expect(alice_page.locator("#collab-presence")).to_contain_text("alice (you)")

    await type_at_once(alice_page, bob_page, "alice types here. ", "bob types there. ")

    # Not saved yet: the tab says so instead of a dirty marker.
    await expect(tab(alice_page, "shared.txt")).to_contain_text("Saving…")
    await expect(tab(alice_page, "shared.txt")).not_to_have_class(DIRTY)

    # Each sees the other's cursor, labelled with the name.
    head = alice_page.locator(".yRemoteSelectionHead")
    await expect(head).to_have_count(1)
    label = await head.evaluate("(e) => getComputedStyle(e, '::after').content")
    assert label == '"bob"'
    label = await bob_page.locator(".yRemoteSelectionHead").evaluate(
        "(e) => getComputedStyle(e, '::after').content"
    )
    assert label == '"alice"'

    # Ctrl+S saves at once, for both.
    await bob_page.keyboard.press("ControlOrMeta+S")
    for page in (alice_page, bob_page):
        await expect(tab(page, "shared.txt")).to_contain_text("Saved")
    saved = await file_text(alice, ws, "shared.txt")
    assert saved is not None
    assert saved.rstrip("\n") == (await editor_text(alice_page)).rstrip("\n")
    assert "alice types here." in saved
    assert "bob types there." in saved
    assert saved.count("first line") == 1

    # Bob leaves: alice sees him go.
    await bob_page.close()
    await expect(alice_page.locator('#collab-presence [data-name="bob"]')).to_have_count(0)
    await expect(alice_page.locator(".yRemoteSelectionHead")).to_have_count(0)


async def test_a_terminal_edit_merges_with_both_peoples_unsaved_typing(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    alice, ws, alice_page, bob_page = await two_people(pages, make_user)
    await alice_page.locator("#editor").click()
    await alice_page.keyboard.press("ControlOrMeta+Home")
    await alice_page.keyboard.type("alice-unsaved ")
    await bob_page.locator("#editor").click()
    await bob_page.keyboard.press("ControlOrMeta+End")
    await bob_page.keyboard.type("bob-unsaved")
    for page in (alice_page, bob_page):
        await expect(editor_lines(page)).to_contain_text("alice-unsaved")
        await expect(editor_lines(page)).to_contain_text("bob-unsaved")
    await expect(tab(alice_page, "shared.txt")).to_contain_text("Saving…")

    # A program appends to the file: the line appears in both editors, and neither person's
    # typing is lost.
    await expect(terminal(alice_page)).to_contain_text("$")
    await type_in_terminal(alice_page, "echo from-the-terminal >> shared.txt")
    for page in (alice_page, bob_page):
        await expect(editor_lines(page)).to_contain_text("from-the-terminal")
        text = await editor_text(page)
        assert "alice-unsaved first line" in text
        assert "bob-unsaved" in text
    # The file is as the program left it: the typing is saved when someone saves.
    assert await file_text(alice, ws, "shared.txt") == "first line\nfrom-the-terminal\n"


@pytest.mark.slow
async def test_two_browsers_on_two_replicas_converge(
    pages: Pages,  # noqa: F811
    database_url: str,
    data_dir: Path,  # noqa: F811
) -> None:
    a, b = Platform(database_url, data_dir), Platform(database_url, data_dir)
    await asyncio.gather(a.start(), b.start())
    try:
        browser, api = await a.sign_up()
        ws = (await api.post("/api/workspaces", {"name": "two replicas"})).json["uuid"]
        model = {"type": "file", "format": "text", "content": START}
        assert (await api.request("PUT", f"/w/{ws}/api/contents/shared.txt", model)).status == 201
        on_a, on_b = await asyncio.gather(
            replica_page(pages, browser, a.url, ws), replica_page(pages, browser, b.url, ws)
        )
        await type_at_once(on_a, on_b, "typed on a. ", "typed on b. ")
        await on_a.keyboard.press("ControlOrMeta+S")
        await expect(tab(on_b, "shared.txt")).to_contain_text("Saved")
        saved = await file_text(api, ws, "shared.txt")
        assert saved is not None
        assert saved.rstrip("\n") == (await editor_text(on_b)).rstrip("\n")
        assert saved.count("first line") == 1
    finally:
        a.kill()
        b.kill()


async def replica_page(opened: Pages, browser: Client, url: str, ws: str) -> Page:
    """Alice's IDE page served by the replica at ``url``, shared.txt open (with presence)."""
    context = await opened.browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT)
    opened.contexts.append(context)
    await context.add_cookies(
        [{"name": k, "value": v, "url": url} for k, v in browser.cookies.items()]
    )
    page = await context.new_page()
    await page.goto(f"{url}/w/{ws}/?collaborate=1")
    await row(page, "shared.txt").click()
    await expect(tab(page, "shared.txt")).to_contain_text("Saved")
    await expect(page.locator("#collab-presence .collab-person")).to_have_count(2)
    return page
