"""Byte sizes of ``LocalSpawner``'s settings, and the check that its tmpfs folders fit."""

from __future__ import annotations

import re

from extensions.sandboxes.spawners.base import SpawnerError

BYTE_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(value: str) -> int:
    """``"512M"`` → bytes; K, M, G, T are binary multiples (``"1Gi"`` and ``"1GB"`` too)."""
    match = BYTE_SIZE.fullmatch(value.strip())
    if match is None:
        msg = f"{value!r} is not a size: use bytes or a number with K, M, G or T (e.g. 512M)."
        raise ValueError(msg)
    return int(float(match[1]) * UNITS[match[2].upper()])


def check_sizes(memory_limit: str, disk_limit: str, tmp_limit: str, memory_reserve: str) -> None:
    """``SpawnerError`` unless the tmpfs folders fit in ``memory_limit`` beside
    ``memory_reserve``: tmpfs pages count as the sandbox's memory and cannot be reclaimed
    (no swap), so a /workspace bigger than that fills memory, and the OOM killer ends the
    sandbox's processes, before a write fails with ENOSPC."""
    memory = parse_bytes(memory_limit)
    if not memory:
        return
    disk, tmp = parse_bytes(disk_limit), parse_bytes(tmp_limit)
    reserve = parse_bytes(memory_reserve)
    if disk and tmp and disk + 2 * tmp + reserve <= memory:
        return
    msg = (
        f"LocalSpawner.disk_limit ({disk_limit}) + 2 x tmp_limit ({tmp_limit}) + "
        f"memory_reserve ({memory_reserve}) must be at most memory_limit "
        f"({memory_limit}), and neither size 0 (half of RAM): files in a sandbox's "
        "tmpfs folders count as its memory. Lower disk_limit or tmp_limit, or raise "
        "memory_limit."
    )
    raise SpawnerError(msg)
