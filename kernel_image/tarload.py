"""Bulk load: extract an uncompressed tar stream into the root, safely (runs in a thread).

Only regular files and folders are extracted. Symbolic and hard links, devices, FIFOs, absolute
names, names with '..' and names that would land outside the root are skipped and reported.
Modes are those of tarfile's ``data`` filter (no set-id bits, no group/other write, always
owner read/write), computed here because Python before 3.11.4 (Debian 12's) lacks the filter;
owners are ignored; file modification times are kept. Each file is written atomically, through
``files``, which refuses any path that would leave the root.
"""

from __future__ import annotations

import tarfile
from typing import IO, TypedDict

from kernel_image import files

MAX_REPORTED_SKIPS = 100


class SkippedMember(TypedDict):
    """A member that was not extracted, and why."""

    name: str
    reason: str


class LoadResult(TypedDict):
    """What a bulk load did."""

    files: int
    bytes: int
    directories: int
    skipped: list[SkippedMember]


class TarLoadError(Exception):
    """The stream is not a tar archive, or it is truncated; the text says which."""


class TooLargeError(Exception):
    """The files in the archive add up to more than the limit."""


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic links are not extracted"
    if member.islnk():
        return "hard links are not extracted"
    return "only regular files and folders are extracted"


def extract(stream: IO[bytes], root: str, max_bytes: int) -> LoadResult:
    """Read a tar stream to its end, extracting into ``root``. Never seeks."""
    result: LoadResult = {"files": 0, "bytes": 0, "directories": 0, "skipped": []}

    def skip(name: str, reason: str) -> None:
        if len(result["skipped"]) < MAX_REPORTED_SKIPS:
            result["skipped"].append({"name": name, "reason": reason})

    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                try:
                    parts = files.split(member.name)
                    if not parts:
                        continue
                    if not (member.isreg() or member.isdir()):
                        skip(member.name, _kind(member))
                        continue
                    if member.isdir():
                        files.make_dirs(root, parts)
                        result["directories"] += 1
                        continue
                    if result["bytes"] + member.size > max_bytes:
                        raise TooLargeError
                    source = archive.extractfile(member)
                    if source is None:  # pragma: no cover (only for non-regular members)
                        continue
                    writer = files.AtomicWriter(root, parts, mode=safe_mode(member.mode))
                    try:
                        while chunk := source.read(1024 * 1024):
                            writer.write(chunk)
                    except BaseException:
                        writer.abort()
                        raise
                    writer.commit(mtime=member.mtime)
                    result["files"] += 1
                    result["bytes"] += writer.size
                except (files.PathError, OSError) as e:
                    skip(member.name, str(e) if isinstance(e, files.PathError) else _reason(e))
    except tarfile.ReadError as e:
        msg = f"not a valid tar stream: {e}"
        raise TarLoadError(msg) from None
    except EOFError:
        msg = "the tar stream ended in the middle of a member"
        raise TarLoadError(msg) from None
    return result


def safe_mode(mode: int) -> int:
    """A file mode as tarfile's ``data`` filter leaves it."""
    return (mode & 0o755) | 0o600


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
