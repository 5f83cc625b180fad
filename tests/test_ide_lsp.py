"""Python IntelliSense in the IDE's editor, from the sandbox's language server: completions with
their documentation (the standard library's, numpy's, and a package pip installed in the
sandbox), hover, signature help, diagnostics as you type, formatting, go to definition, rename
across files, a file that becomes Python, reconnection after the sandbox restarts, and the
status bar, in a real browser against a real PlatformApp and sandbox."""

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
    row,
    tab,
    terminal,
    type_in_terminal,
    workspace_of,
)
from tests.test_packages import jp_server_config as package_index_config  # noqa: F401
from tests.test_packages import upstream  # noqa: F401  (package_index_config's fixture)
from tests.waiting import until

pytestmark = pytest.mark.timeout(300)
expect.set_options(timeout=WAIT)

READY = "Python: ready"
NOT_RUNNING = "Python IntelliSense unavailable: the sandbox is not running"
LIB = 'def helper(x):\n    """Return twice x."""\n    return 2 * x\n'


def lsp_status(page: Page) -> Locator:
    """The status bar's word on the language server."""
    return page.locator("#lsp-status")


def squiggles(page: Page) -> Locator:
    """The editor's diagnostic underlines (warnings and errors)."""
    return page.locator("#editor .squiggly-warning, #editor .squiggly-error")


async def ide_with_files(
    pages: Pages,  # noqa: F811
    make_user: Any,
    files: dict[str, str],
) -> tuple[Client, str, Page]:
    """A workspace holding ``files``, open in the IDE (main.py in its tab) with the language
    server ready; returns the user, the workspace's uuid and the page."""
    user, ws = await workspace_of(make_user)
    for path, text in files.items():
        model = {"type": "file", "format": "text", "content": text}
        response = await user.request("PUT", f"/w/{ws}/api/contents/{path}", model)
        assert response.status in {200, 201}, response.body
    page = await open_ide(pages, user, ws)
    await expect(tab(page, "main.py")).to_have_class(re.compile(r"\bactive\b"))
    await expect(lsp_status(page)).to_have_text(READY)
    return user, ws, page


async def go_to(page: Page, line: int, column: int) -> None:
    """Put the editor's cursor at a line and column (Monaco's Go to Line, Ctrl+G)."""
    await editor_lines(page).click()
    await page.keyboard.press("Control+G")
    await page.keyboard.type(f"{line}:{column}")
    await page.keyboard.press("Enter")
    await expect(page.locator("#cursor-info")).to_contain_text(f"Ln {line}, Col {column}")


def suggestion(page: Page, name: str) -> Locator:
    """The open suggestion whose label is ``name`` (a function's label goes on with its
    parameters; the row's text also holds the module it comes from)."""
    label = page.locator(".label-name", has_text=re.compile(rf"^{name}\b"))
    return page.locator(".suggest-widget .monaco-list-row", has=label)


async def choose_suggestion(page: Page, name: str) -> None:
    """Wait for ``name`` among the open suggestions, move the focus to it and show its
    documentation beside the list ("Read More": it is fetched once the item is chosen)."""
    chosen = suggestion(page, name)
    await expect(chosen).to_have_count(1)
    focused = re.compile(r"\bfocused\b")
    for _ in range(await page.locator(".suggest-widget .monaco-list-row").count()):
        if focused.search(await chosen.get_attribute("class") or ""):
            break
        await page.keyboard.press("ArrowDown")
    await expect(chosen).to_have_class(focused)
    await chosen.hover()
    await chosen.locator(".readMore").click()


async def test_completion_hover_signature_diagnostics_and_formatting(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    _, _, page = await ide_with_files(pages, make_user, {"main.py": "import os\n\nprint( 'hi' )\n"})

    # ruff's diagnostic for the unused import: underlined, and F8 says what is wrong.
    await expect(squiggles(page)).to_have_count(1)
    await editor_lines(page).click()
    await page.keyboard.press("F8")
    await expect(page.locator(".marker-widget")).to_contain_text("`os` imported but unused")
    await page.keyboard.press("Escape")

    # The fix, typed: the diagnostic goes.
    await go_to(page, 1, 1)
    await page.keyboard.press("Shift+ArrowDown")
    await page.keyboard.press("Delete")
    await expect(editor_lines(page)).not_to_contain_text("import os")
    await expect(squiggles(page)).to_have_count(0)

    # Completion of a module's function, with its documentation beside it.
    await page.keyboard.press("ControlOrMeta+End")
    await page.keyboard.type("import json\njson.du")  # "." opens the suggestions
    await choose_suggestion(page, "dumps")
    await expect(page.locator(".suggest-details")).to_contain_text("Serialize")
    await page.keyboard.press("Enter")
    await expect(editor_lines(page)).to_contain_text("json.dumps")

    # Signature help on "(", and the documentation on hover (Ctrl+K Ctrl+I at the cursor).
    await page.keyboard.type("(")
    await expect(page.locator(".parameter-hints-widget")).to_contain_text("obj")
    await page.keyboard.press("Escape")
    await page.keyboard.press("ArrowLeft")
    await page.keyboard.press("ArrowLeft")
    await page.keyboard.press("Control+K")
    await page.keyboard.press("Control+I")
    await expect(page.locator(".monaco-hover", has_text="Serialize")).to_be_visible()
    await page.keyboard.press("Escape")

    # Format document (ruff's formatter): Shift+Alt+F.
    await page.keyboard.press("Shift+Alt+F")
    await expect(editor_lines(page)).to_contain_text('print("hi")')


async def test_rename_across_files_and_go_to_definition(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    files = {"lib.py": LIB, "main.py": "from lib import helper\n\nprint(helper(2))\n"}
    user, ws, page = await ide_with_files(pages, make_user, files)

    # F2 on the call renames the function everywhere: in the open tab (unsaved, as any edit)
    # and in lib.py, which is not open, saved at once.
    await go_to(page, 3, 8)
    await page.keyboard.press("F2")
    rename = page.locator(".rename-box input")
    await expect(rename).to_be_focused()
    await page.keyboard.press("ControlOrMeta+A")
    await page.keyboard.type("double")
    await page.keyboard.press("Enter")
    await expect(editor_lines(page)).to_contain_text("from lib import double")
    await expect(editor_lines(page)).to_contain_text("print(double(2))")
    await expect(tab(page, "main.py")).to_have_class(DIRTY)

    async def lib_renamed() -> bool:
        return await file_text(user, ws, "lib.py") == LIB.replace("helper", "double")

    await until(lib_renamed, "lib.py is saved with the new name")
    await page.keyboard.press("ControlOrMeta+S")
    await expect(tab(page, "main.py")).not_to_have_class(DIRTY)
    assert await file_text(user, ws, "main.py") == "from lib import double\n\nprint(double(2))\n"

    # F12 on the call opens lib.py's tab at the definition.
    await go_to(page, 3, 8)
    await page.keyboard.press("F12")
    await expect(tab(page, "lib.py")).to_have_class(re.compile(r"\bactive\b"))
    await expect(editor_lines(page)).to_contain_text("def double(x):")
    await expect(page.locator("#cursor-info")).to_contain_text(re.compile(r"Ln 1, Col \d"))


async def test_reconnects_and_reopens_documents_after_the_sandbox_restarts(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    user, ws, page = await ide_with_files(pages, make_user, {"main.py": "import os\n"})
    await expect(squiggles(page)).to_have_count(1)

    # The sandbox stops: the editor works on, and the status bar says why there is no help.
    stopped = await user.request("DELETE", f"/api/workspaces/{ws}/sandbox")
    assert stopped.status == 204, stopped.body
    await expect(lsp_status(page)).to_have_text(NOT_RUNNING)
    await expect(squiggles(page)).to_have_count(0)  # no diagnostics that nothing updates
    await editor_lines(page).click()
    await page.keyboard.press("ControlOrMeta+End")
    await page.keyboard.type("import sys\n")
    await expect(editor_lines(page)).to_contain_text("import sys")

    # It runs again: the client reconnects and the server gets the unsaved text.
    started = await user.request("POST", f"/api/workspaces/{ws}/sandbox")
    assert started.status == 200, started.body
    await expect(lsp_status(page)).to_have_text(READY)
    await expect(squiggles(page)).to_have_count(2)


async def test_a_file_renamed_to_python_gets_diagnostics(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    files = {"main.py": "print('main')\n", "notes.txt": "import os\n"}
    _, _, page = await ide_with_files(pages, make_user, files)
    await row(page, "notes.txt").click()
    await expect(tab(page, "notes.txt")).to_have_class(re.compile(r"\bactive\b"))
    await expect(editor_lines(page)).to_contain_text("import os")
    await expect(squiggles(page)).to_have_count(0)  # not Python: the server never sees it

    await row(page, "notes.txt").click(button="right")
    await page.locator("#tree-menu").get_by_role("menuitem", name="Rename").click()
    await page.locator(".tree-input").fill("notes.py")
    await page.locator(".tree-input").press("Enter")
    await expect(tab(page, "notes.py")).to_have_class(re.compile(r"\bactive\b"))
    await expect(squiggles(page)).to_have_count(1)


async def test_numpy_completion_with_its_documentation(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    _, _, page = await ide_with_files(pages, make_user, {"main.py": ""})
    await editor_lines(page).click()
    # The first numpy completion takes seconds (jedi reads numpy's stubs): expect waits.
    await page.keyboard.type("import numpy as np\nnp.ar")
    await choose_suggestion(page, "arange")
    await expect(page.locator(".suggest-details")).to_contain_text("evenly spaced values")
    await page.keyboard.press("Enter")
    await expect(editor_lines(page)).to_contain_text("np.arange")


async def test_numpy_hover_shows_the_signature(
    pages: Pages,  # noqa: F811
    make_user: Any,
) -> None:
    files = {"main.py": "import numpy as np\n\nprint(np.arange(3))\n"}
    _, _, page = await ide_with_files(pages, make_user, files)
    await go_to(page, 3, 12)  # in "arange"
    await page.keyboard.press("Control+K")
    await page.keyboard.press("Control+I")
    # The first parameter: start_or_stop in numpy's stubs, "[start,] stop" in its docstring.
    signature = re.compile(r"arange\(\s*\[?start")
    await expect(page.locator(".monaco-hover", has_text=signature)).to_be_visible()


class TestWithThePackageIndex:
    """Tests whose platform installs packages from this module's upstream index."""

    @pytest.fixture
    def jp_server_config(self, package_index_config: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
        return package_index_config

    async def test_a_package_installed_in_the_sandbox_is_completed(
        self,
        pages: Pages,  # noqa: F811
        make_user: Any,
    ) -> None:
        _, _, page = await ide_with_files(pages, make_user, {"main.py": ""})
        await type_in_terminal(page, "pip install tinypkg")
        await expect(terminal(page)).to_contain_text("Successfully installed tinypkg-1.0")

        await editor_lines(page).click()
        await page.keyboard.type("import tinypkg\ntinypkg.")
        await expect(suggestion(page, "VALUE")).to_have_count(1)
