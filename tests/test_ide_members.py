"""Sharing in the IDE, two users in Chromium: the owner's Share dialog, the workspace list's
shared rows, a viewer's read-only IDE (file tree included) watching the owner's terminal, and
role changes that reach the member's open page, with or without a terminal open in it."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Page, expect

from tests.client import Client
from tests.test_ide import Pages, editor_lines, open_ide, pages, terminal  # noqa: F401  (fixture)


async def type_into_terminal(page: Page, command: str) -> None:
    await page.locator(".terminal-view.active .xterm-screen").click()
    await page.keyboard.type(command)
    await page.keyboard.press("Enter")


async def run_in_console(page: Page, code: str) -> None:
    """Run code at the console's prompt (opened if hidden) and wait for its last output."""
    if await page.locator("#console").is_hidden():
        await page.locator("#toggle-console").click()
    await page.locator("#console-input").fill(code)
    await page.locator("#console-input").press("Enter")
    await expect(page.locator("#console-log .console-cell").last).to_have_attribute(
        "data-state", "ok"
    )


async def alice_and_bob(make_user: Any) -> tuple[Client, Client, str]:
    """Two users, and alice's workspace "team", shared with no one yet."""
    alice: Client = await make_user("alice")
    bob: Client = await make_user("bob")
    ws = (await alice.post("/api/workspaces", {"name": "team"})).json["uuid"]
    return alice, bob, str(ws)


def members_url(ws: str) -> str:
    return f"/api/workspaces/{ws}/members"


async def open_live(pages: Pages, user: Client, ws: str) -> Page:  # noqa: F811
    """The IDE of a workspace once its events socket is open (no terminal is waited for)."""
    page = await pages.page(await pages.context(user))
    await page.goto(f"/w/{ws}/")
    await expect(page.locator("#sync-mode")).to_have_attribute("data-mode", "live")
    return page


def member_row(page: Page, username: str) -> Any:
    return page.locator(f'#member-list .member[data-username="{username}"]')


CHANGE_TOOLS = ("#tree-new-file", "#tree-new-folder", "#tree-upload")
"""The file tree's buttons that change files (an editor's and the owner's, not a viewer's)."""


def tree_row(page: Page, path: str) -> Any:
    return page.locator(f'#file-tree .tree-row[data-path="{path}"]')


async def tree_menu(page: Page, path: str) -> list[str]:
    """The entries of the file tree's context menu on ``path`` (closed again after)."""
    await tree_row(page, path).click(button="right")
    entries = await page.locator("#tree-menu [role=menuitem]").all_inner_texts()
    await page.keyboard.press("Escape")
    await expect(page.locator("#tree-menu")).to_have_count(0)
    return entries


async def expect_view_only_tree(page: Page) -> None:
    """A viewer's tree: browse, open and download; nothing that changes files is offered."""
    await expect(tree_row(page, "main.py")).to_be_visible()
    for tool in CHANGE_TOOLS:
        await expect(page.locator(tool)).to_have_count(0)
    await expect(tree_row(page, "main.py")).to_have_attribute("draggable", "false")
    assert await tree_menu(page, "main.py") == ["Open", "Download"]
    # Nor by the keys: F2 (rename) opens no name field, Delete asks nothing.
    await tree_row(page, "main.py").click()
    await page.keyboard.press("F2")
    await page.keyboard.press("Delete")
    await expect(page.locator("#file-tree .tree-input")).to_have_count(0)
    await expect(page.locator(".dialog")).to_have_count(0)


async def expect_editing_tree(page: Page) -> None:
    """An editor's tree offers every change."""
    for tool in CHANGE_TOOLS:
        await expect(page.locator(tool)).to_be_visible()
    await expect(tree_row(page, "main.py")).to_have_attribute("draggable", "true")
    assert await tree_menu(page, "main.py") == [
        "Open",
        "New file",
        "New folder",
        "Upload files…",
        "Download",
        "Rename",
        "Delete",
    ]


async def test_owner_shares_and_a_viewer_watches_then_edits_then_is_removed(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    alice, bob, ws = await alice_and_bob(make_user)
    owner = await open_ide(pages, alice, ws)

    # The owner's Share dialog: errors are said, the member is listed with their role.
    await expect(owner.locator("#share-button")).to_have_text("Share")
    await owner.locator("#share-button").click()
    await expect(member_row(owner, "alice")).to_contain_text("Owner")
    await owner.locator("#share-username").fill("nobody")
    await owner.locator("#share-add").click()
    await expect(owner.locator("#share-error")).to_have_text(
        "There is no user named 'nobody' to share this workspace with."
    )
    await owner.locator("#share-username").fill("bob")
    await owner.locator("#share-role").select_option("viewer")
    await owner.locator("#share-add").click()
    await expect(member_row(owner, "bob")).to_have_attribute("data-role", "viewer")
    await expect(owner.locator("#share-error")).to_be_empty()
    await expect(owner.locator("#share-button")).to_have_text("Shared with 1")
    await owner.locator("#members-close").click()
    await run_in_console(owner, "x = 6 * 7")

    # Bob's list shows it, shared by alice, without Rename or Delete.
    viewer = await pages.page(await pages.context(bob))
    await viewer.goto("/workspaces")
    shared_row = viewer.locator(f'#workspace-rows tr[data-uuid="{ws}"]')
    await expect(shared_row).to_contain_text("shared by alice · viewer")
    await expect(shared_row.locator(".state")).to_have_text("Running")  # alice's terminal
    await expect(shared_row.get_by_role("button", name="Delete")).to_have_count(0)
    await expect(shared_row.get_by_role("button", name="Rename")).to_have_count(0)

    # Bob's IDE is read-only: a badge says so, Run is off, typing changes nothing.
    await viewer.goto(f"/w/{ws}/")
    await expect(viewer.locator("#view-only")).to_have_text("View only")
    await expect(viewer.locator("#share-button")).to_have_text("alice's · Viewer")
    await expect(viewer.locator("#run")).to_be_disabled()
    await expect(viewer.locator("#run-console")).to_be_disabled()
    await expect(viewer.locator("#console-input")).to_be_disabled()
    await expect(editor_lines(viewer)).to_contain_text("Hello from your workspace")
    await expect_view_only_tree(viewer)
    await editor_lines(viewer).click()
    await viewer.keyboard.type("BOBWASHERE")
    await viewer.keyboard.press("ControlOrMeta+S")
    await expect(viewer.locator(".toast-error")).to_contain_text("View only")
    await expect(editor_lines(viewer)).not_to_contain_text("BOBWASHERE")

    # He watches the owner's terminal; his keys never reach it.
    await expect(terminal(viewer)).to_contain_text("$")
    await type_into_terminal(viewer, "echo BOB-$((1+1))")
    await type_into_terminal(owner, "echo SHARED-$((20+22))")
    await expect(terminal(viewer)).to_contain_text("SHARED-42")
    await expect(terminal(owner)).to_contain_text("SHARED-42")
    assert "BOB-2" not in (await terminal(owner).inner_text())
    assert "BOB-2" not in (await terminal(viewer).inner_text())

    # He sees the runs of the owner's console as they happen, and cannot run anything there.
    await viewer.locator("#toggle-console").click()
    await expect(viewer.locator("#console-status")).to_have_text("Kernel idle")
    await run_in_console(owner, "print('CONSOLE-' + str(x))")
    await expect(viewer.locator("#console-log")).to_contain_text("CONSOLE-42")
    await expect(viewer.locator("#console-log")).to_contain_text("print('CONSOLE-' + str(x))")
    await expect(viewer.locator("#console-restart")).to_be_disabled()

    # Made an editor, Bob's page starts again with his new role; his keys reach the owner.
    await owner.locator("#share-button").click()
    await member_row(owner, "bob").locator("select").select_option("editor")
    await expect(member_row(owner, "bob")).to_have_attribute("data-role", "editor")
    await expect(viewer.locator("#share-button")).to_have_text("alice's · Editor")
    await expect(viewer.locator("#view-only")).to_have_count(0)
    await expect(viewer.locator("#run")).to_be_enabled()
    await expect_editing_tree(viewer)
    await expect(terminal(viewer)).to_contain_text("SHARED-42")
    await type_into_terminal(viewer, "echo EDITOR-$((2+3))")
    await expect(terminal(owner)).to_contain_text("EDITOR-5")

    # Removed, his open page learns it at once and shows the workspace is gone for him.
    await member_row(owner, "bob").get_by_role("button", name="Remove bob").click()
    await expect(member_row(owner, "bob")).to_have_count(0)
    await expect(owner.locator("#share-button")).to_have_text("Share")
    await expect(viewer.locator("#message")).to_contain_text("no such workspace")
    assert (await bob.get(f"/api/workspaces/{ws}")).status == 404


async def test_role_changes_reach_a_member_with_no_terminal_open(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    alice, bob, ws = await alice_and_bob(make_user)
    members = members_url(ws)

    async def open_as_viewer() -> Page:
        """Bob's IDE as a viewer of a workspace with no sandbox: its events socket is the only
        socket the page has open to the workspace."""
        added = await alice.post(members, {"username": "bob", "role": "viewer"})
        assert added.status == 201, added.body
        page = await open_live(pages, bob, ws)
        await expect(page.locator("#view-only")).to_have_text("View only")
        await expect(page.locator(".terminal-view")).to_have_count(0)
        await expect_view_only_tree(page)
        return page

    # Removed, his page shows at once that the workspace is gone for him.
    viewer = await open_as_viewer()
    assert (await alice.delete(f"{members}/bob")).status == 204
    await expect(viewer.locator("#message")).to_contain_text("no such workspace")

    # Made an editor, his page starts again as an editor's; made a viewer again, as a viewer's.
    viewer = await open_as_viewer()
    assert (await alice.patch(f"{members}/bob", {"role": "editor"})).status == 200
    await expect(viewer.locator("#share-button")).to_have_text("alice's · Editor")
    await expect(viewer.locator("#view-only")).to_have_count(0)
    await expect(viewer.locator("#run")).to_be_enabled()
    await expect_editing_tree(viewer)
    assert (await alice.patch(f"{members}/bob", {"role": "viewer"})).status == 200
    await expect(viewer.locator("#share-button")).to_have_text("alice's · Viewer")
    await expect(viewer.locator("#view-only")).to_have_text("View only")
    await expect_view_only_tree(viewer)


async def test_the_owners_share_button_follows_a_member_who_leaves(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    alice, bob, ws = await alice_and_bob(make_user)
    members = members_url(ws)
    assert (await alice.post(members, {"username": "bob", "role": "editor"})).status == 201
    owner = await open_live(pages, alice, ws)
    await expect(owner.locator("#share-button")).to_have_text("Shared")
    await owner.locator("#share-button").click()
    await expect(member_row(owner, "bob")).to_have_attribute("data-role", "editor")

    # Each change made elsewhere shows in the open dialog and on the button.
    await make_user("carol")
    assert (await alice.post(members, {"username": "carol", "role": "viewer"})).status == 201
    await expect(member_row(owner, "carol")).to_have_attribute("data-role", "viewer")
    await expect(owner.locator("#share-button")).to_have_text("Shared with 2")
    assert (await bob.delete(f"{members}/bob")).status == 204
    await expect(member_row(owner, "bob")).to_have_count(0)
    await expect(owner.locator("#share-button")).to_have_text("Shared with 1")
