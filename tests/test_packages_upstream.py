"""pip install from the real configured upstream (the public package index), through the
embedded cache: skipped when it cannot be reached here, required under CI=true."""

from __future__ import annotations

import os
import urllib.request
from typing import Any

import pytest

from extensions.sandboxes.packages.index import PackageIndex
from tests.test_terminals import (  # noqa: F401 (close_terminals: a fixture)
    close_terminals,
    open_terminal,
    workspace_with_token,
)

UPSTREAM = str(PackageIndex.upstream_url.default_value)


def reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{UPSTREAM}six/", timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def upstream_reachable() -> None:
    if os.environ.get("CI") != "true" and not reachable():
        pytest.skip(f"{UPSTREAM} is not reachable from this machine (required under CI=true)")


async def test_pip_install_from_the_configured_upstream(make_user: Any, base_url: str) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    out = await terminal.run("pip install --no-deps six==1.17.0", "INSTALLED")
    assert "Successfully installed six-1.17.0" in out, out
    out = await terminal.run('python -c "import six; print(six.__version__)"', "IMPORTED")
    assert "1.17.0" in out, out
