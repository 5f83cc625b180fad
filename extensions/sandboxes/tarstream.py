"""A workspace's tree as an uncompressed tar stream, produced piece by piece.

This is the body of the agent's bulk load (``PUT /api/tree``): the files go from PostgreSQL
to the sandbox without the whole tree ever being in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from datetime import datetime

BLOCK = tarfile.BLOCKSIZE
# The sandbox user owns everything; modes as a fresh checkout would have them.
FILE_MODE = 0o644
DIR_MODE = 0o755


def member(path: str, kind: str, content: bytes | None, modified: datetime) -> Iterator[bytes]:
    """The tar blocks of one directory or file."""
    info = tarfile.TarInfo(path)
    info.mtime = int(modified.timestamp())
    if kind == "directory":
        info.type = tarfile.DIRTYPE
        info.mode = DIR_MODE
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        return
    data = content or b""
    info.size = len(data)
    info.mode = FILE_MODE
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    yield data
    remainder = len(data) % BLOCK
    if remainder:
        yield b"\0" * (BLOCK - remainder)


def end_of_archive() -> bytes:
    """Two zero blocks close a tar archive."""
    return b"\0" * (2 * BLOCK)
