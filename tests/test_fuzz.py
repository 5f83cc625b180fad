"""Fuzzing with schemathesis: the platform's own API (its OpenAPI document) and jupyter_server's
API of a workspace (jupyter_server's api.yaml), as a real user with an API token.

Seeded and bounded: the same requests on every run. No answer may be a 5xx; the platform's own
answers must also match the document (status codes and bodies).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hypothesis
import jupyter_server
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from platform_server.handlers import OPENAPI_PATH
from tests.client import Client

# Each test sends a few hundred requests: more than the default timeout on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JUPYTER_API = Path(jupyter_server.__file__).parent / "services" / "api" / "api.yaml"
OWN_CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
]
# Answers to inputs the document declares invalid are only checked for server errors.
NEGATIVE_CHECKS: list[CheckFunction] = [not_a_server_error]
# The Jupyter operations fuzzed: contents and kernelspecs, and the listings of terminals,
# kernels and sessions (opening one starts a sandbox: slow, and a loaded machine's 504s would
# make the run flaky).
JUPYTER_OPERATIONS = {
    ("GET", "/api/contents/{path}"),
    ("POST", "/api/contents/{path}"),
    ("PUT", "/api/contents/{path}"),
    ("PATCH", "/api/contents/{path}"),
    ("DELETE", "/api/contents/{path}"),
    ("GET", "/api/contents/{path}/checkpoints"),
    ("POST", "/api/contents/{path}/checkpoints"),
    ("POST", "/api/contents/{path}/checkpoints/{checkpoint_id}"),
    ("DELETE", "/api/contents/{path}/checkpoints/{checkpoint_id}"),
    ("GET", "/api/kernelspecs"),
    ("GET", "/api/terminals"),
    ("GET", "/api/kernels"),
    ("GET", "/api/sessions"),
}
EXAMPLES = 12  # per operation and generation mode
JUPYTER_EXAMPLES = 30  # fewer operations, so more of each
TIMEOUT = 60  # seconds a request may take (a loaded machine), far beyond what any should


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """The fuzzing user is an administrator, so the admin routes are reached too."""
    return {"Accounts": {"admin_users": ["fuzzer"]}}


def fuzz(
    schema: schemathesis.BaseSchema,
    base_url: str,
    headers: dict[str, str],
    *,
    modes: dict[GenerationMode, list[CheckFunction]],
    keep: Callable[[Case], bool] = lambda case: True,
    path_parameters: dict[str, Any] | None = None,
    only: set[tuple[str, str]] | None = None,
    examples: int = EXAMPLES,
) -> list[str]:
    """Send ``examples`` seeded cases per operation and mode; the failed checks, with a curl
    command each (in a thread: the server answers on the test's event loop)."""
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if only is not None and (operation.method.upper(), operation.path) not in only:
            continue
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in (path_parameters or {}).items() if k in names} or None
        for mode, checks in modes.items():
            strategy = operation.as_strategy(mode, path_parameters=fixed).filter(keep)
            try:
                sender(strategy, checks, session, base_url, headers, failures, examples)()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
    return failures


def sender(
    strategy: Any,
    checks: list[CheckFunction],
    session: requests.Session,
    base_url: str,
    headers: dict[str, str],
    failures: list[str],
    examples: int,
) -> Callable[[], None]:
    """A seeded hypothesis test that sends the cases of ``strategy`` and notes failed checks."""

    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def send(case: Case) -> None:
        status = "no answer"
        try:
            response = case.call(
                base_url=base_url, session=session, headers=headers, timeout=TIMEOUT
            )
            status = str(response.status_code)
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as e:  # a FailureGroup for failed checks
            found = e.exceptions if isinstance(e, BaseExceptionGroup) else [e]
            titles = ", ".join(sorted({getattr(x, "title", type(x).__name__) for x in found}))
            summary = f"{case.operation.label} -> {status}: {titles}"
            if not any(failure.startswith(summary + "\n") for failure in failures):
                curl = case.as_curl_command(headers=headers, base_url=base_url)
                failures.append(f"{summary}\n    {str(e).strip()[:600]}\n    {curl[:1500]}")

    return send  # type: ignore[no-any-return]


async def test_fuzz_the_platform_api(
    base_url: str, make_token_client: Callable[..., Awaitable[Client]]
) -> None:
    api = await make_token_client("fuzzer")
    tokens = await api.get("/api/accounts/tokens")
    own_token = tokens.json[0]["id"]
    workspace = (await api.post("/api/workspaces", {"name": "fuzzed"})).json["uuid"]
    headers = {"Authorization": f"token {api.token}"}
    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))

    def keep(case: Case) -> bool:
        # Revoking the fuzzing token, or deleting the workspace, would end the run's reach.
        return case.path_parameters.get("token_id") != own_token

    def run() -> list[str]:
        modes = {GenerationMode.POSITIVE: OWN_CHECKS, GenerationMode.NEGATIVE: NEGATIVE_CHECKS}
        failures = fuzz(schema, base_url, headers, modes=modes, keep=keep)
        # Again with the user's own workspace, on what neither waits for a sandbox to start
        # (progress streams until one runs) nor deletes it.
        reads = {
            ("GET", "/api/workspaces/{workspace_id}"),
            ("PATCH", "/api/workspaces/{workspace_id}"),
            ("GET", "/api/workspaces/{workspace_id}/sandbox"),
            ("GET", "/w/{workspace_id}/api/events"),
            ("GET", "/w/{workspace_id}/"),
        }
        failures += fuzz(
            schema,
            base_url,
            headers,
            modes=modes,
            keep=keep,
            path_parameters={"workspace_id": workspace},
            only=reads,
        )
        return failures

    failures = await asyncio.to_thread(run)
    assert not failures, "\n".join(failures)
    # The run's credentials still work: nothing above locked the user out.
    assert (await api.get("/api/accounts/me")).status == 200


async def test_fuzz_the_jupyter_api_of_a_workspace(
    base_url: str, make_token_client: Callable[..., Awaitable[Client]]
) -> None:
    api = await make_token_client("fuzzer")
    workspace = (await api.post("/api/workspaces", {"name": "fuzzed"})).json["uuid"]
    headers = {"Authorization": f"token {api.token}"}
    schema = schemathesis.openapi.from_path(str(JUPYTER_API))
    base = f"{base_url.rstrip('/')}/w/{workspace}"

    def run() -> list[str]:
        modes = {GenerationMode.POSITIVE: OWN_CHECKS[:1], GenerationMode.NEGATIVE: NEGATIVE_CHECKS}
        return fuzz(
            schema, base, headers, modes=modes, only=JUPYTER_OPERATIONS, examples=JUPYTER_EXAMPLES
        )

    failures = await asyncio.to_thread(run)
    assert not failures, "\n".join(failures)
    listing = await api.get(f"/w/{workspace}/api/contents")
    assert listing.status == 200, json.dumps(listing.json)


# --- what fuzzing found, pinned -------------------------------------------------------------


async def test_identity_update_errors_carry_a_reason(
    make_token_client: Callable[..., Awaitable[Client]],
) -> None:
    api = await make_token_client("fuzzer")
    for body in ({}, {"name": "x"}):
        response = await api.request("PATCH", "/api/me", body)
        assert response.status == 400
        assert response.json["reason"] == "bad_request", response.json
        assert response.json["message"]
