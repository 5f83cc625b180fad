"""Packages in the IDE: a package a new sandbox cannot install again is said in words, in a real
browser against a real PlatformApp and sandboxes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from playwright.async_api import expect

from platform_server.app import PlatformApp
from tests.test_ide import (  # noqa: F401  (pages: fixture)
    WAIT,
    Pages,
    open_ide,
    pages,
    workspace_of,
)
from tests.test_packages import jp_server_config as package_index_config  # noqa: F401
from tests.test_packages import upstream  # noqa: F401  (package_index_config's fixture)

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=WAIT)


@pytest.fixture
def jp_server_config(package_index_config: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """Packages come from this module's own upstream index (test_packages.py's)."""
    return package_index_config


async def test_a_package_that_cannot_come_back_is_said_in_a_notice(
    pages: Pages,  # noqa: F811
    make_user: Any,
    jp_serverapp: PlatformApp,
) -> None:
    user, ws = await workspace_of(make_user)
    page = await open_ide(pages, user, ws)
    db = jp_serverapp.web_app.settings["sandboxes"].db
    async with db.transaction() as conn:
        await conn.execute(
            """INSERT INTO workspace_packages (workspace_id, name, display_name, version)
               VALUES (%s, 'vanished', 'vanished', '9.9')""",
            [uuid.UUID(ws)],
        )
    # The next sandbox of the workspace tries to install it again, while the page is open.
    assert (await user.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
    assert (await user.post(f"/api/workspaces/{ws}/sandbox")).status == 200
    notice = page.locator(".toast-error").last
    await expect(notice).to_contain_text("could not be installed again: vanished")
    await expect(notice).to_contain_text("the next sandbox tries again")
