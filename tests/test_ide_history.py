"""A file's history in the IDE (its checkpoints): list, compare with the editor, restore, and save
a version, in a real browser against a real PlatformApp."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from tests.client import Client
from tests.test_ide import (  # noqa: F401  (pages: fixture)
    DIRTY,
    WAIT,
    Pages,
    editor_lines,
    file_text,
    open_ide,
    pages,
    paste_into_editor,
    row,
    tab,
    workspace_of,
)
from tests.waiting import until

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=WAIT)

A = "alpha line\nshared line\n"
B = "beta line\nshared line\n"
C = "gamma line\nshared line\n"
EMPTY = (
    "No saved versions yet: Save a version now, or they are made when a notebook is first saved "
    "(saving other files makes none)."
)


def entries(page: Page) -> Locator:
    """The history's versions, newest first."""
    return page.locator("#history-list .history-entry")


def diff_side(page: Page, side: str) -> Locator:
    """The text of one side of the history's diff editor ("original" or "modified")."""
    return page.locator(f"#history-diff .editor.{side} .view-lines")


async def checkpoints(user: Client, workspace: str, path: str) -> list[dict[str, Any]]:
    """A file's checkpoints through the Contents API, oldest first."""
    response = await user.get(f"/w/{workspace}/api/contents/{path}/checkpoints")
    assert response.status == 200, response.body
    return list(response.json)


async def test_history_lists_compares_and_restores_saved_versions(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws = await workspace_of(make_user)
    model = {"type": "file", "format": "text", "content": A}
    created = await user.request("PUT", f"/w/{ws}/api/contents/notes.txt", model)
    assert created.status == 201, created.body
    page = await open_ide(pages, user, ws)
    await row(page, "notes.txt").click()
    await expect(tab(page, "notes.txt")).to_have_class(re.compile(r"\bactive\b"))
    await expect(editor_lines(page)).to_contain_text("alpha line")

    # No version yet: the panel says so, and how versions are made.
    assert await checkpoints(user, ws, "notes.txt") == []
    await editor_lines(page).click()
    await page.keyboard.press("Alt+H")
    await expect(page.locator("#history")).to_be_visible()
    await expect(page.locator("#history-message")).to_have_text(EMPTY)
    await expect(entries(page)).to_have_count(0)

    # Version A, kept by "Save a version now"; Escape goes back to the editor.
    await page.locator("#history-save").click()
    await expect(entries(page)).to_have_count(1)
    await expect(page.locator("#history-message")).to_be_hidden()
    await page.keyboard.press("Escape")
    await expect(page.locator("#history")).to_be_hidden()

    # Version B, saved through the editor and kept too (from the History button).
    await paste_into_editor(page, B)
    await page.keyboard.press("ControlOrMeta+S")

    async def saved_b() -> bool:
        return await file_text(user, ws, "notes.txt") == B

    await until(saved_b, "notes.txt holds B")
    await page.locator("#history-button").click()
    await page.locator("#history-save").click()
    await expect(entries(page)).to_have_count(2)
    await page.locator("#history-close").click()
    await expect(page.locator("#history")).to_be_hidden()

    # An unsaved edit: the diff compares with the editor's text, not the file's.
    await paste_into_editor(page, C)
    await expect(tab(page, "notes.txt")).to_have_class(DIRTY)
    await page.keyboard.press("Alt+H")
    listed = await checkpoints(user, ws, "notes.txt")
    await expect(entries(page)).to_have_count(len(listed))
    ids = [entry["id"] for entry in reversed(listed)]
    for i, checkpoint_id in enumerate(ids):
        await expect(entries(page).nth(i)).to_have_attribute("data-id", checkpoint_id)
        await expect(entries(page).nth(i)).to_have_text(re.compile(r"now|ago"))
        await expect(entries(page).nth(i)).to_have_attribute("title", re.compile(r"\d"))
    older = listed[0]["id"]
    saved = await user.get(f"/w/{ws}/api/contents/notes.txt/checkpoints/{older}")
    assert saved.status == 200, saved.body
    assert (saved.json["content"], saved.json["format"]) == (A, "text")

    await entries(page).last.click()
    await expect(diff_side(page, "original")).to_contain_text("alpha line")
    await expect(diff_side(page, "modified")).to_contain_text("gamma line")
    await expect(diff_side(page, "original")).not_to_contain_text("gamma line")
    await expect(diff_side(page, "modified")).not_to_contain_text("alpha line")

    # Restore asks first (unsaved edits), then the editor and the file hold A again.
    await page.locator("#history-restore").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("unsaved changes")
    await dialog.get_by_role("button", name="Restore", exact=True).click()
    await expect(page.locator("#history")).to_be_hidden()
    await expect(editor_lines(page)).to_contain_text("alpha line")
    await expect(editor_lines(page)).not_to_contain_text("gamma line")
    await expect(tab(page, "notes.txt")).not_to_have_class(DIRTY)
    assert await file_text(user, ws, "notes.txt") == A


async def test_history_says_errors_in_words(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    await expect(editor_lines(page)).to_contain_text("Hello from your workspace")
    await page.locator("#history-button").click()
    await expect(page.locator("#history-message")).to_have_text(EMPTY)

    # The file is deleted elsewhere: saving a version of it fails, and the panel says why.
    deleted = await user.delete(f"/w/{ws}/api/contents/main.py")
    assert deleted.status == 204, deleted.body
    await page.locator("#history-save").click()
    message = page.locator("#history-message")
    await expect(message).to_have_class(re.compile(r"\berror\b"))
    await expect(message).to_contain_text("Could not save a version: No such file: main.py")
    await page.keyboard.press("Escape")
    await expect(page.locator("#history")).to_be_hidden()
