"""A workspace's tree as an uncompressed tar stream, produced piece by piece.

This is the body of the agent's bulk load (``PUT /api/tree``): the files go from PostgreSQL
to the sandbox without the whole tree ever being in memory.
"""

from __future__ import annotations

import tarfile
from datetime import datetime

BLOCK = tarfile.BLOCKSIZE
# The sandbox user owns everything; modes as a fresh checkout would have them.
FILE_MODE = 0o644
DIR_MODE = 0o755


class TarWriter:
    """The tar blocks of a tree whose files arrive in parts: ``item`` gives the header of each
    directory or file (after the padding the previous file owes), the file's bytes follow as
    they come, and ``end`` closes the archive. Headers carry the size, so no file has to be
    whole in memory."""

    def __init__(self) -> None:
        self._padding = 0

    def item(self, path: str, kind: str, size: int, modified: datetime) -> bytes:
        """What goes before the bytes of ``path`` (none for a directory)."""
        info = tarfile.TarInfo(path)
        info.mtime = int(modified.timestamp())
        if kind == "directory":
            info.type = tarfile.DIRTYPE
            info.mode = DIR_MODE
            size = 0
        else:
            info.size = size
            info.mode = FILE_MODE
        blocks = self._close_file() + info.tobuf(format=tarfile.PAX_FORMAT)
        self._padding = -size % BLOCK
        return blocks

    def end(self) -> bytes:
        """The last file's padding and the end of the archive."""
        return self._close_file() + end_of_archive()

    def _close_file(self) -> bytes:
        padding, self._padding = self._padding, 0
        return b"\0" * padding


def end_of_archive() -> bytes:
    """Two zero blocks close a tar archive."""
    return b"\0" * (2 * BLOCK)
