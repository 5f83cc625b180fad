"""The IDE's Python console and notebook view in a real browser (Chromium, Playwright), against a
real PlatformApp whose kernels run in real sandboxes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from tests.test_ide import (  # noqa: F401  (pages: fixture)
    WAIT,
    Pages,
    editor_lines,
    open_ide,
    pages,
    paste_into_editor,
    row,
    tab,
    workspace_of,
)

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=WAIT)

# A 2x2 red PNG.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEklEQVR4nGP4z8AARAwQCgQAVnwH+Qs5KwcAAAAA"
    "SUVORK5CYII="
)
DATA_PNG = re.compile(r"^data:image/png;base64,")
PROGRAM = """import sys

print("printed by main.py")
print("a warning", file=sys.stderr)
answer = 6 * 7
answer * 10
"""


def cells(page: Page) -> Locator:
    """The console's runs, oldest first."""
    return page.locator("#console-log .console-cell")


def console_status(page: Page) -> Locator:
    """The kernel's state in the console's header."""
    return page.locator("#console-status")


async def type_in_console(page: Page, code: str) -> None:
    """Type one line at the console's prompt and run it."""
    await page.locator("#console-input").fill(code)
    await page.locator("#console-input").press("Enter")


async def test_run_in_console_shows_output_results_errors_and_images(
    pages: Pages,  # noqa: F811
    make_user: Any,
    tmp_path: Path,
) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    await expect(editor_lines(page)).to_contain_text("Hello from your workspace")
    await expect(page.locator("#console")).to_be_hidden()
    await paste_into_editor(page, PROGRAM)

    # Run in console saves the file and runs it in a new kernel: its prints show, stderr apart.
    await page.click("#run-console")
    await expect(page.locator("#console")).to_be_visible()
    first = cells(page).nth(0)
    await expect(first.locator(".cell-source")).to_have_text("%run -i main.py")
    await expect(first.locator(".output-stdout")).to_have_text("printed by main.py\n")
    await expect(first.locator(".output-stderr")).to_have_text("a warning\n")
    await expect(first).to_have_attribute("data-state", "ok")
    await expect(first.locator(".prompt")).to_have_text("In [1]:")
    await expect(console_status(page)).to_have_attribute("data-state", "idle")

    # Shift+Enter runs the selection: the value of its last expression shows too.
    await editor_lines(page).click()
    await page.keyboard.press("ControlOrMeta+A")
    await page.keyboard.press("Shift+Enter")
    await expect(cells(page)).to_have_count(2)
    await expect(cells(page).nth(1).locator(".output-stdout")).to_have_text("printed by main.py\n")
    await expect(cells(page).nth(1).locator(".output-text")).to_have_text("420")

    # The kernel keeps the file's variables (-i); the console's own prompt runs code too.
    await type_in_console(page, "answer + 1")
    await expect(cells(page).nth(2).locator(".output-text")).to_have_text("43")

    # An exception shows its traceback, in words (no escape codes).
    await type_in_console(page, 'int("forty-two")')
    error = cells(page).nth(3).locator(".output-error")
    await expect(error).to_contain_text("ValueError")
    await expect(error).to_contain_text("invalid literal for int() with base 10: 'forty-two'")
    assert "\x1b" not in await error.inner_text()
    await expect(cells(page).nth(3)).to_have_attribute("data-state", "error")

    # A matplotlib figure is an <img> of a data: URL (the page's CSP allows exactly that).
    await type_in_console(
        page,
        "import matplotlib.pyplot as plt; plt.figure(figsize=(4, 2), dpi=60); "
        "plt.plot([1, 3, 2]); plt.show()",
    )
    image = cells(page).nth(4).locator("img.output-image")
    await expect(image).to_be_visible()
    await expect(image).to_have_attribute("src", DATA_PNG)
    assert await image.evaluate("img => img.complete && img.naturalWidth > 50")  # decoded
    # The picture in the README (IDE_CONSOLE_SCREENSHOT=docs/images/console.png refreshes it).
    await image.scroll_into_view_if_needed()
    path = os.environ.get("IDE_CONSOLE_SCREENSHOT") or tmp_path / "console.png"
    await page.screenshot(path=path)


async def test_interrupt_restart_and_reattach_after_a_reload(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    await page.click("#toggle-console")
    await expect(console_status(page)).to_have_text("No kernel")
    await expect(page.locator("#console-interrupt")).to_be_disabled()

    # A loop that never ends: Interrupt stops it, and the console goes on.
    await type_in_console(page, "kept = 1")
    await expect(console_status(page)).to_have_attribute("data-state", "idle")
    # (It says when it runs: an interrupt while the kernel is still setting it up is lost.)
    await type_in_console(page, 'print("looping", flush=True); exec("while True: pass")')
    await expect(console_status(page)).to_have_attribute("data-state", "busy")
    await expect(cells(page).nth(1).locator(".output-stdout")).to_have_text("looping\n")
    await page.click("#console-interrupt")
    await expect(cells(page).nth(1).locator(".output-error")).to_contain_text("KeyboardInterrupt")
    await expect(console_status(page)).to_have_attribute("data-state", "idle")
    await type_in_console(page, 'print("still here", kept)')
    await expect(cells(page).nth(2).locator(".output-stdout")).to_have_text("still here 1\n")

    # After a reload, the console is where it was and reattaches to the same kernel.
    await page.reload()
    await expect(page.locator("#console")).to_be_visible()
    await expect(console_status(page)).to_have_attribute("data-state", "idle")
    await type_in_console(page, "kept + 1")
    await expect(cells(page).nth(0).locator(".output-text")).to_have_text("2")

    # Restart asks first, then the variables are gone.
    await page.click("#console-restart")
    await page.locator(".dialog").get_by_role("button", name="Restart").click()
    await expect(page.locator("#console-log .console-event")).to_contain_text("Kernel restarted")
    await expect(console_status(page)).to_have_attribute("data-state", "idle")
    await type_in_console(page, "kept")
    await expect(cells(page).nth(1).locator(".output-error")).to_contain_text("NameError")


async def test_tab_completes_and_shift_tab_shows_documentation_from_the_kernel(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    await page.click("#toggle-console")
    prompt = page.locator("#console-input")
    completions = page.locator("#console-completions")
    tooltip = page.locator("#console-tooltip")

    # Without a kernel, Tab says so and starts nothing.
    await prompt.fill("ma")
    await prompt.press("Tab")
    await expect(tooltip).to_contain_text("No kernel yet")
    await expect(console_status(page)).to_have_attribute("data-state", "none")

    await type_in_console(page, "import math\nsquare_side = 3")
    await expect(cells(page).nth(0)).to_have_attribute("data-state", "ok")
    await expect(console_status(page)).to_have_attribute("data-state", "idle")

    # Several matches: a list under the caret; typing filters it, Enter takes the selected one.
    await prompt.fill("math.s")
    await prompt.press("Tab")
    await expect(completions).to_be_visible()
    await expect(completions.get_by_role("option", name="sin", exact=True)).to_be_visible()
    await expect(completions.get_by_role("option", name="sqrt", exact=True)).to_be_visible()
    await prompt.press("q")
    await expect(completions.get_by_role("option")).to_have_text(["sqrt"])
    await prompt.press("Enter")
    await expect(completions).to_be_hidden()
    await expect(prompt).to_have_value("math.sqrt")
    await expect(cells(page)).to_have_count(1)

    # Arrow keys move in the list, Escape closes it and leaves the code as it was.
    await prompt.fill("math.s")
    await prompt.press("Tab")
    await expect(completions.get_by_role("option").first).to_have_attribute("aria-selected", "true")
    await prompt.press("ArrowDown")
    await expect(completions.get_by_role("option").nth(1)).to_have_attribute(
        "aria-selected", "true"
    )
    await prompt.press("Escape")
    await expect(completions).to_be_hidden()
    await expect(prompt).to_have_value("math.s")

    # One match is put in at once: a name defined earlier in the console completes too.
    await prompt.fill("square_si")
    await prompt.press("Tab")
    await expect(prompt).to_have_value("square_side")

    # Shift+Tab shows the documentation under the prompt (no escape codes); Escape closes it.
    await prompt.fill("math.sqrt")
    await prompt.press("Shift+Tab")
    await expect(tooltip).to_contain_text("square root")
    assert "\x1b" not in await tooltip.inner_text()
    await prompt.press("Escape")
    await expect(tooltip).to_be_hidden()
    await prompt.fill("no_such_name_here")
    await prompt.press("Shift+Tab")
    await expect(tooltip).to_have_text("No documentation for this.")
    # Typing closes it.
    await prompt.press("x")
    await expect(tooltip).to_be_hidden()

    # While the kernel is busy, Tab only says so.
    await type_in_console(page, 'print("waiting", flush=True); exec("while True: pass")')
    await expect(cells(page).nth(1).locator(".output-stdout")).to_have_text("waiting\n")
    await prompt.fill("math.s")
    await prompt.press("Tab")
    await expect(tooltip).to_contain_text("The kernel is busy")
    await expect(completions).to_be_hidden()
    await expect(prompt).to_have_value("math.s")
    await expect(page.locator(".toast-error")).to_have_count(0)
    await page.click("#console-interrupt")
    await expect(console_status(page)).to_have_attribute("data-state", "idle")


NOTEBOOK: dict[str, Any] = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {"language_info": {"name": "python"}},
    "cells": [
        {
            "cell_type": "markdown",
            "id": "intro",
            "metadata": {},
            "source": ["# Squares\n", "\n", "Some **bold** words and <b>markup</b> as text."],
        },
        {
            "cell_type": "code",
            "id": "squares",
            "execution_count": 3,
            "metadata": {},
            "source": "print('squares', [i * i for i in range(4)])",
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["squares [0, 1, 4, 9]\n"]},
                {
                    "output_type": "display_data",
                    "data": {"image/png": PNG, "text/plain": ["<Figure size 2x2>"]},
                    "metadata": {},
                },
                {
                    "output_type": "display_data",
                    "data": {"text/html": ["<b id='injected'>from the notebook</b>"]},
                    "metadata": {},
                },
            ],
        },
    ],
}


async def test_notebook_opens_as_a_rendered_read_only_view(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws = await workspace_of(make_user)
    saved = await user.request(
        "PUT", f"/w/{ws}/api/contents/analysis.ipynb", {"type": "notebook", "content": NOTEBOOK}
    )
    assert saved.status == 201, saved.body
    # A context of its own: the one pages.context() makes has an init script (localStorage),
    # which Playwright also runs in the sandboxed frame of the HTML output, where it must fail.
    context = await pages.browser.new_context(base_url=pages.base_url)
    pages.contexts.append(context)
    await context.add_cookies(
        [{"name": k, "value": v, "url": pages.base_url} for k, v in user.cookies.items()]
    )
    page = await pages.page(context)
    await page.goto(f"/w/{ws}/")
    await expect(page.locator("#sandbox-state")).to_have_attribute("data-state", "running")
    await row(page, "analysis.ipynb").click()
    await expect(tab(page, "analysis.ipynb")).to_have_class(re.compile(r"\bactive\b"))

    view = page.locator(".notebook-view:visible")
    await expect(view.locator(".markdown-cell h1")).to_have_text("Squares")
    await expect(view.locator(".markdown-cell strong")).to_have_text("bold")
    # HTML in Markdown is text, never markup.
    await expect(view.locator(".markdown-cell p")).to_contain_text("<b>markup</b> as text.")
    await expect(view.locator(".code-cell .cell-source")).to_have_text(
        "print('squares', [i * i for i in range(4)])"
    )
    await expect(view.locator(".code-cell .prompt")).to_have_text("[3]:")
    await expect(view.locator(".output-stdout")).to_have_text("squares [0, 1, 4, 9]\n")
    await expect(view.locator("img.output-image")).to_have_attribute("src", DATA_PNG)
    # HTML outputs render in a sandboxed frame: no scripts, not the IDE's origin.
    frame = view.locator(".output-html iframe")
    await expect(frame).to_have_attribute("sandbox", "")
    await expect(page.locator("#injected")).to_have_count(0)
    await expect(page.frame_locator(".output-html iframe").locator("#injected")).to_have_text(
        "from the notebook"
    )
    # No editor for this tab; "Open as text" shows the JSON in one.
    await expect(page.locator("#editor")).to_be_hidden()
    await view.get_by_role("button", name="Open as text").click()
    await expect(page.locator("#editor")).to_be_visible()
    await expect(editor_lines(page)).to_contain_text('"cell_type": "markdown"')
    await expect(page.locator(".notebook-view")).to_have_count(0)


@pytest.mark.parametrize("jp_server_config", [{"Kernels": {"max_kernels_per_workspace": 1}}])
async def test_a_kernel_that_cannot_start_is_said_in_words(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    # Another client already runs the one kernel this workspace may have.
    started = await user.post(f"/w/{ws}/api/kernels", {"name": "python3"})
    assert started.status == 201, started.body
    await page.click("#run-console")
    await expect(page.locator(".toast-error").last).to_contain_text(
        "Could not start the console's Python kernel: This workspace runs 1 kernels, "
        "the most allowed; shut one down first."
    )
    await expect(cells(page).nth(0).locator(".cell-note")).to_have_text(
        "Not run: no kernel could be started."
    )
    await expect(console_status(page)).to_have_attribute("data-state", "none")
