"""Prometheus metrics of the platform, beside jupyter_server's own (requests by handler)."""

from __future__ import annotations

from prometheus_client import Counter

LOGINS = Counter("platform_logins_total", "Successful password logins.")
LOGIN_FAILURES = Counter(
    "platform_login_failures_total",
    "Refused password logins, by why they were refused.",
    ["reason"],
)
REGISTRATIONS = Counter("platform_registrations_total", "Accounts created by registration.")
DATABASE_RESTARTS = Counter(
    "platform_database_restarts_total",
    "Restarts of the embedded PostgreSQL after it was found gone.",
)
