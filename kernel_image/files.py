"""Files under the root: path rules and safe operations (no HTTP here).

Rules, for every path a client gives:
- it is relative to the root, '/'-separated; empty parts and '.' are ignored; an absolute path,
  a '..' part or a NUL byte is refused (:class:`PathError`);
- folders on the way may be symbolic links only if they resolve inside the root
  (:class:`OutsideRootError` otherwise); the last part is followed the same way when reading or
  writing a file's content (as ``cat`` and ``>`` do), never when deleting or renaming (as ``rm``
  and ``mv`` do); what is finally opened is opened with ``O_NOFOLLOW``;
- writes are atomic: a temporary file ``.~agent-<hex>.tmp`` in the same folder, renamed over
  the target (keeping the mode of a file it replaces). They are not fsync'ed: the sandbox's
  files are a cache of the platform's database.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

TEMP_PREFIX = ".~agent-"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()


class PathError(ValueError):
    """A path that breaks the rules; the text says which."""


class OutsideRootError(PathError):
    """A path that leads outside the root through a symbolic link."""


def split(path: str) -> list[str]:
    """The parts of a client's path ("" is the root itself)."""
    if "\0" in path:
        msg = "paths may not contain NUL bytes"
        raise PathError(msg)
    if path.startswith("/"):
        msg = "paths must be relative to the root, not absolute"
        raise PathError(msg)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        msg = "paths may not contain '..'"
        raise PathError(msg)
    return parts


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def _real(root: str, parts: list[str]) -> str:
    """Resolve every symbolic link; the result must stay inside the root."""
    real = os.path.realpath(Path(root, *parts))
    if not _inside(root, real):
        msg = "this path leads outside the root through a symbolic link"
        raise OutsideRootError(msg)
    return real


def _parts(path: str | list[str], *, allow_root: bool = False) -> list[str]:
    parts = split(path) if isinstance(path, str) else path
    if not parts and not allow_root:
        msg = "this operation needs a path below the root"
        raise PathError(msg)
    return parts


def existing_directory(root: str, path: str) -> str:
    """Real path of a folder inside the root (for a terminal's cwd)."""
    real = _real(root, _parts(path, allow_root=True))
    if not Path(real).is_dir():
        raise NotADirectoryError(path)
    return real


def open_for_reading(root: str, path: str | list[str]) -> tuple[int, int]:
    """Open a regular file; return ``(fd, size)``. The caller closes the fd."""
    parts = _parts(path, allow_root=True)
    real = _real(root, parts)
    # O_NONBLOCK: opening a FIFO someone made in the workspace must not hang the agent.
    fd = os.open(real, _READ_FLAGS)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(real)
        if not stat.S_ISREG(info.st_mode):
            msg = "not a regular file"
            raise PathError(msg)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _open_parent(root: str, parts: list[str], *, create: bool) -> tuple[int, str]:
    """A descriptor of the folder holding the last part (made if ``create``), and that part."""
    parent = _real(root, parts[:-1])
    if create:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return os.open(parent, _DIR_FLAGS), parts[-1]


# Called with the real path of every file the agent itself writes (the platform sent it, so
# file sync need not send it back). Set by the app.
written_hook: Callable[[str], None] | None = None


class AtomicWriter:
    """Write a file's new content to a temporary file, then rename it over the target.

    Made parent folders stay if the write is aborted.
    """

    def __init__(self, root: str, path: str | list[str], mode: int | None = None) -> None:
        parts = _parts(path)
        # Follow the last part if it is a symbolic link that stays inside the root.
        target = _real(root, parts)
        if target == root:
            raise IsADirectoryError(target)
        parent, self._name = os.path.split(target)
        self.target = target
        Path(parent).mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(parent, _DIR_FLAGS)
        self._fd = -1
        try:
            self._mode = mode
            try:
                existing = os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(existing.st_mode):
                    raise IsADirectoryError(target)
                if stat.S_ISREG(existing.st_mode) and mode is None:
                    self._mode = stat.S_IMODE(existing.st_mode)
            self._temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
            self._fd = os.open(self._temp, _TEMP_FLAGS, 0o600, dir_fd=self._dir_fd)
        except BaseException:
            os.close(self._dir_fd)
            raise
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append to the new content."""
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self.size += written

    def commit(self, mtime: float | None = None) -> None:
        """Give the file its mode (and ``mtime``) and put it in place."""
        try:
            os.fchmod(self._fd, 0o666 & ~UMASK if self._mode is None else self._mode)
            if mtime is not None:
                os.utime(self._fd, (mtime, mtime))
            os.close(self._fd)
            self._fd = -1
            os.replace(self._temp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            if written_hook is not None:
                written_hook(self.target)
        except BaseException:
            self.abort()
            raise
        os.close(self._dir_fd)
        self._dir_fd = -1

    def abort(self) -> None:
        """Forget the new content (the target is untouched). Safe to call more than once."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = -1


def write_file(root: str, path: str | list[str], data: bytes) -> None:
    """Replace a file's content atomically (making parent folders)."""
    writer = AtomicWriter(root, path)
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def make_dirs(root: str, path: str | list[str]) -> None:
    """Make a folder and its parents; nothing to do if it exists."""
    Path(_real(root, _parts(path, allow_root=True))).mkdir(parents=True, exist_ok=True)


def remove(root: str, path: str | list[str]) -> None:
    """Delete a file, a symbolic link (not its target) or a folder with everything in it."""
    dir_fd, name = _open_parent(root, _parts(path), create=False)
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def rename(root: str, source: str, target: str, *, overwrite: bool = False) -> None:
    """Move a file, link or folder (the link itself, not its target); make the target's
    parent folders. An existing target is an error unless ``overwrite``.
    """
    source_parts, target_parts = _parts(source), _parts(target)
    source_fd, source_name = _open_parent(root, source_parts, create=False)
    try:
        os.stat(source_name, dir_fd=source_fd, follow_symlinks=False)
        target_fd, target_name = _open_parent(root, target_parts, create=True)
        try:
            same_folder = os.path.samestat(os.fstat(source_fd), os.fstat(target_fd))
            if same_folder and source_name == target_name:
                return
            if not overwrite:
                try:
                    os.stat(target_name, dir_fd=target_fd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    raise FileExistsError(target)
            os.replace(source_name, target_name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)
