"""`make test` on a fresh machine: missing Debian packages are installed as root, else named."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system-deps"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run(
    command: list[str], *, as_nobody: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    if as_nobody and os.geteuid() == 0:
        command = [*NOBODY, *command]
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_user_without_chromium_is_told_the_one_command_before_anything_runs() -> None:
    # MAKE=false: were the check to pass, the rest of `make test` would fail at once instead
    # of running.
    result = run(["make", "test", "MAKE=false"], as_nobody=True, CHROMIUM="/nonexistent/chromium")
    assert result.returncode != 0
    assert "not installed: chromium" in result.stderr
    command = next(line.strip() for line in result.stderr.splitlines() if "apt-get" in line)
    assert command.startswith("sudo apt-get install ")
    assert "chromium" in command.split()


def test_root_installs_what_is_missing_with_apt_get(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the install branch runs as root only")
    calls = tmp_path / "calls"
    stub = tmp_path / "apt-get"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    result = run(
        [str(SCRIPT)],
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        CHROMIUM="/nonexistent/chromium",
        SYSTEM_PYTHON="/nonexistent/python3",
    )
    assert result.returncode == 0, result.stderr
    update, install = calls.read_text().splitlines()
    assert update == "update"
    assert install.split()[:3] == ["install", "-y", "--no-install-recommends"]
    assert {"chromium", "python3", "python3-venv"} <= set(install.split()[3:])


def test_nothing_to_do_when_everything_is_there() -> None:
    result = run([str(SCRIPT)], PATH=f"/nonexistent:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
