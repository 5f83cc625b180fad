"""The platform application: what it serves and what it must not."""

from __future__ import annotations

import pytest

from tests.client import Client
from tests.conftest import UserFactory


async def test_health_needs_no_login(client: Client) -> None:
    response = await client.get("/api/health")
    assert response.status == 200
    assert response.json == {"status": "ok", "database": "ok"}


async def test_liveness_needs_neither_login_nor_database(client: Client) -> None:
    response = await client.get("/api/health/live")
    assert response.status == 200
    assert response.json == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/contents"),
        ("GET", "/api/contents/x.txt"),
        ("GET", "/files/x"),
        ("POST", "/api/terminals"),
        ("GET", "/api/terminals"),
        ("GET", "/api/kernels"),
        ("POST", "/api/kernels"),
        ("GET", "/api/sessions"),
        ("GET", "/api/kernelspecs"),
        ("GET", "/api/nbconvert"),
        ("GET", "/api/config/notebook"),
        ("POST", "/api/shutdown"),
        ("GET", "/tree"),
        ("GET", "/lab"),
        ("GET", "/view/x.html"),
    ],
)
async def test_stock_root_services_are_not_served(
    make_token_client: UserFactory, method: str, path: str
) -> None:
    api = await make_token_client()
    response = await api.request(method, path, raw_body=b"{}" if method == "POST" else None)
    assert response.status == 404, (path, response.body)


async def test_jupyter_identity_endpoint_reports_platform_user(
    make_token_client: UserFactory,
) -> None:
    api = await make_token_client("carol")
    response = await api.get("/api/me")
    assert response.status == 200
    assert response.json["identity"]["username"] == "carol"
    assert "identity" not in response.json["identity"]


async def test_metrics_count_logins(make_token_client: UserFactory) -> None:
    api = await make_token_client()
    response = await api.get("/metrics")
    assert response.status == 200
    text = response.body.decode()
    assert "platform_logins_total" in text
    assert "http_request_duration_seconds" in text
