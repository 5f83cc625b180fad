"""Timestamps as the Jupyter APIs write them."""

from __future__ import annotations

from datetime import UTC, datetime


def isoformat(timestamp: float) -> str:
    """A Unix time as Jupyter writes it: ISO 8601, UTC, with a ``Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
