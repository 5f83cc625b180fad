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
PACKAGE_DOWNLOADS = Counter(
    "platform_package_downloads_total", "Package files sandboxes fetched from the package cache."
)
PACKAGE_DOWNLOAD_BYTES = Counter(
    "platform_package_download_bytes_total", "Bytes of package files sandboxes fetched."
)
PACKAGE_REFUSALS = Counter(
    "platform_package_refusals_total",
    "Package index requests from sandboxes the platform refused, by why.",
    ["reason"],
)
