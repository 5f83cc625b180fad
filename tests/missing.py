"""What to do when a test's tool or environment is missing: skip on a developer's machine, fail
under CI (CI=true), where `.ci/run` installs everything and nothing may be skipped for it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason`` (say how to install what is missing); fail under CI."""
    if CI:
        pytest.fail(reason)
    pytest.skip(reason)
