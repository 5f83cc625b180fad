"""Quick open (Ctrl+P), find in files (Ctrl+Shift+F) and replace in files in the IDE, in a real
browser against a real PlatformApp."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

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
    tab,
    workspace_of,
)
from tests.waiting import until

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=WAIT)
ACTIVE = re.compile(r"\bactive\b")
SEARCH_URL = re.compile(r"/api/search\?")


async def ide_with(
    browser: Pages, make_user: Any, files: dict[str, str]
) -> tuple[Client, str, Page]:
    """A workspace holding ``files`` (besides main.py), open in the IDE with the focus in the
    editor (where Monaco has its own keys)."""
    user, ws = await workspace_of(make_user)
    await put_files(user, ws, files)
    page = await open_ide(browser, user, ws)
    await expect(editor_lines(page)).to_contain_text("Hello")  # main.py
    await editor_lines(page).click()
    return user, ws, page


async def put_files(user: Client, workspace: str, files: dict[str, str]) -> None:
    for path, text in files.items():
        if "/" in path:
            folder = path.rsplit("/", 1)[0]
            model: dict[str, Any] = {"type": "directory"}
            response = await user.request("PUT", f"/w/{workspace}/api/contents/{folder}", model)
            assert response.status in (200, 201), response.body
        model = {"type": "file", "format": "text", "content": text}
        response = await user.request("PUT", f"/w/{workspace}/api/contents/{path}", model)
        assert response.status in (200, 201), response.body


async def test_quick_open_opens_a_file_by_fuzzy_name(pages: Pages, make_user: Any) -> None:  # noqa: F811
    files = {"lib/widget_factory.py": "BUILT = 'widgets'\n", "other.txt": "x\n"}
    _, _, page = await ide_with(pages, make_user, files)

    await page.keyboard.press("ControlOrMeta+P")
    picker = page.locator("#quick-open-input")
    await expect(picker).to_be_focused()
    await picker.press_sequentially("wdgfac")
    items = page.locator("#quick-open-list .quick-open-item")
    await expect(items).to_have_count(1)
    await expect(items.first).to_have_attribute("data-path", "lib/widget_factory.py")
    await expect(items.first.locator("mark").first).to_have_text("w")
    await picker.press("Enter")
    await expect(page.locator("#quick-open")).to_be_hidden()
    await expect(tab(page, "lib/widget_factory.py")).to_have_class(ACTIVE)
    await expect(editor_lines(page)).to_contain_text("BUILT = 'widgets'")

    # Arrows choose among several; Escape closes without opening anything.
    await page.keyboard.press("ControlOrMeta+P")
    await picker.fill("")
    await expect(items).to_have_count(3)  # every file, in path order
    await picker.press("ArrowDown")
    await expect(items.nth(1)).to_have_attribute("aria-selected", "true")
    await picker.press("ArrowDown")
    await expect(items.nth(2)).to_have_attribute("data-path", "other.txt")
    await picker.press("Escape")
    await expect(page.locator("#quick-open")).to_be_hidden()
    await expect(tab(page, "other.txt")).to_have_count(0)


async def test_find_in_files_opens_a_match_at_its_line(pages: Pages, make_user: Any) -> None:  # noqa: F811
    files = {
        "a.py": "x = 1\nneedle_one = 2\n",
        "docs/c.txt": "first\nsecond\nthird needle_one here\n",
    }
    _, _, page = await ide_with(pages, make_user, files)

    await page.keyboard.press("ControlOrMeta+Shift+F")
    query = page.locator("#search-input")
    await expect(query).to_be_focused()
    # While the answer is on its way, the panel says it is searching.
    answer = asyncio.Event()

    async def hold(route: Route) -> None:
        await answer.wait()
        await route.continue_()

    await page.route(SEARCH_URL, hold)
    await query.fill("needle_one")
    status = page.locator("#search-status")
    await expect(status).to_have_text("Searching…")
    await expect(page.locator("#search-panel")).to_have_attribute("aria-busy", "true")
    answer.set()
    await expect(status).to_have_text("2 matches in 2 files.")
    await expect(page.locator("#search-panel")).not_to_have_attribute("aria-busy", "true")
    await page.unroute(SEARCH_URL, hold)
    results = page.locator("#search-results .search-file")
    await expect(results).to_have_count(2)
    await expect(results.nth(0)).to_have_attribute("data-path", "a.py")
    match = results.nth(1).locator(".search-match-open")
    await expect(match.locator(".search-line-number")).to_have_text("3")
    await expect(match.locator("mark")).to_have_text("needle_one")
    await expect(match.locator(".search-preview")).to_have_text("third needle_one here")

    await match.click()
    await expect(tab(page, "docs/c.txt")).to_have_class(ACTIVE)
    await expect(editor_lines(page)).to_contain_text("third needle_one here")
    # The match is selected: the cursor is at its end on line 3.
    await expect(page.locator("#cursor-info")).to_contain_text("Ln 3, Col 17")

    # A bad regular expression is said in words; whole word finds none in "needle_ones".
    await page.locator("#search-regex").click()
    await query.fill("needle_(")
    await expect(status).to_contain_text("The regular expression is not valid:")
    await expect(status).to_have_class(re.compile(r"\berror\b"))
    await expect(results).to_have_count(0)
    await page.locator("#search-regex").click()
    await page.locator("#search-word").click()
    await query.fill("needle")
    await expect(status).to_have_text("No results in 3 files.")
    await query.press("Escape")
    await expect(page.locator("#search-panel")).to_be_hidden()


async def test_replace_in_files_saves_the_chosen_changes(pages: Pages, make_user: Any) -> None:  # noqa: F811
    files = {"one.txt": "old value\nkeep old\n", "two.txt": "old\n", "three.txt": "old here\n"}
    user, ws, page = await ide_with(pages, make_user, files)

    # three.txt is open with unsaved edits: Replace all leaves it alone and says so.
    await page.keyboard.press("ControlOrMeta+P")
    await page.locator("#quick-open-input").press_sequentially("three")
    await expect(page.locator("#quick-open-list .quick-open-item")).to_have_count(1)
    await page.locator("#quick-open-input").press("Enter")
    await expect(editor_lines(page)).to_contain_text("old here")
    await paste_into_editor(page, "old here, edited\n")
    await expect(tab(page, "three.txt")).to_have_class(DIRTY)

    await page.keyboard.press("ControlOrMeta+Shift+F")
    await page.locator("#search-input").fill("old")
    await page.locator("#search-replace").fill("new")
    results = page.locator("#search-results .search-file")
    await expect(results).to_have_count(3)
    one = page.locator('#search-results .search-file[data-path="one.txt"]')
    await expect(one.locator(".search-match del")).to_have_count(2)
    await expect(one.locator(".search-match ins").first).to_have_text("new")
    await expect(one.locator(".search-preview").first).to_have_text("oldnew value")
    # Leave line 2 of one.txt out.
    await one.locator(".search-match-check").nth(1).uncheck()
    await page.locator("#search-replace-all").click()
    await page.locator(".dialog button", has_text="Replace").click()

    async def replaced() -> bool:
        return (
            await file_text(user, ws, "one.txt") == "new value\nkeep old\n"
            and await file_text(user, ws, "two.txt") == "new\n"
        )

    await until(replaced, "one.txt and two.txt are replaced")
    status = page.locator("#search-status")
    await expect(status).to_contain_text("Replaced in 2 files.")
    await expect(status).to_contain_text("Skipped, as they have unsaved changes")
    await expect(status).to_contain_text("three.txt")
    assert await file_text(user, ws, "three.txt") == "old here\n"
    await expect(tab(page, "three.txt")).to_have_class(DIRTY)
