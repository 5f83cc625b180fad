"""Timestamps as the Jupyter APIs write them."""

from __future__ import annotations

from datetime import UTC, datetime


def isoformat(value: datetime | None) -> str | None:
    """A timestamp as ISO 8601 in UTC with a 'Z', as Jupyter writes them; None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
