"""The project's own files agree with each other: CI runs what .ci/run runs, every pinned list
is watched for updates, the licence is the one the package declares."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def load(path: str) -> Any:
    return yaml.safe_load((REPO / path).read_text())


def test_the_workflow_runs_the_same_command_as_ci_run() -> None:
    workflow = load(".github/workflows/ci.yml")
    commands = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(command.split()[-1:] == [".ci/run"] for command in commands), commands
    ci_run = (REPO / ".ci" / "run").read_text()
    assert "scripts/system-deps" in ci_run
    assert ci_run.rstrip().endswith("make test")


def test_every_pinned_list_is_watched_for_updates() -> None:
    watched = {
        (update["package-ecosystem"], update["directory"].strip("/"))
        for update in load(".github/dependabot.yml")["updates"]
    }
    pinned = {
        ("pip", ""): "constraints.txt",
        ("pip", "kernel_image"): "kernel_image/requirements.txt",
        ("npm", "frontend"): "frontend/package-lock.json",
        ("npm", "tests/js"): "tests/js/package-lock.json",
        ("docker", ""): "Dockerfile",
        ("docker", "kernel_image"): "kernel_image/Dockerfile",
    }
    for key, path in pinned.items():
        assert (REPO / path).is_file(), path
        assert key in watched, key


def test_the_licence_is_the_one_the_package_declares() -> None:
    metadata = configparser.ConfigParser()
    metadata.read(REPO / "setup.cfg")
    assert metadata["metadata"]["license"] == "BSD-3-Clause"
    assert (REPO / "LICENSE").read_text().startswith("BSD 3-Clause License")


def test_pre_commit_runs_the_same_checks_as_make_lint() -> None:
    hooks = {hook["id"]: hook["entry"] for repo in load(".pre-commit-config.yaml")["repos"]
             for hook in repo["hooks"]}  # fmt: skip
    makefile = (REPO / "Makefile").read_text()
    assert "$(BIN)/ruff check ." in makefile
    assert hooks["ruff"].startswith(".venv/bin/ruff check")
    assert "$(BIN)/ruff format --check ." in makefile
    assert hooks["ruff-format"] == ".venv/bin/ruff format"
    assert "$(BIN)/mypy" in makefile
    assert hooks["mypy"] == ".venv/bin/mypy"
    assert "npm run typecheck && npm run lint" in makefile
    assert "npm run typecheck && npm run lint" in hooks["frontend"]
