"""REST for files: ``/api/files/<path>``, ``/api/files-dir/<path>``, ``/api/files-rename`` and
the bulk load ``PUT /api/tree``. Bodies are streamed, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import IO, Any

from tornado.http1connection import HTTP1Connection
from tornado.iostream import PipeIOStream, StreamClosedError
from tornado.web import stream_request_body

from kernel_image import files
from kernel_image.auth import AgentHandler, ApiError

CHUNK_BYTES = 256 * 1024
MAX_SMALL_BODY = 1024 * 1024
"""Body limit (bytes) of requests that carry no file content (the server's default)."""

_STATUS_BY_ERRNO = {
    errno.ENOENT: 404,
    errno.EEXIST: 409,
    errno.EISDIR: 409,
    errno.ENOTDIR: 409,
    errno.ENOTEMPTY: 409,
    errno.ELOOP: 403,
    errno.EACCES: 403,
    errno.EPERM: 403,
    errno.EROFS: 403,
    errno.ENAMETOOLONG: 400,
    errno.EINVAL: 400,
    errno.EXDEV: 400,
    errno.ENOSPC: 507,
    errno.EDQUOT: 507,
}


def file_error(error: Exception, path: str) -> ApiError:
    """The API's answer to a domain or OS error about ``path`` (never an absolute path)."""
    if isinstance(error, files.OutsideRootError):
        return ApiError(403, f"{path!r}: {error}")
    if isinstance(error, files.PathError):
        return ApiError(400, f"{path!r}: {error}")
    if isinstance(error, FileNotFoundError):
        return ApiError(404, f"{path!r} does not exist")
    if isinstance(error, FileExistsError):
        return ApiError(409, f"{path!r} exists already")
    if isinstance(error, IsADirectoryError):
        return ApiError(409, f"{path!r} is a folder")
    if isinstance(error, NotADirectoryError):
        return ApiError(409, f"a part of {path!r} is not a folder")
    if isinstance(error, OSError):
        status = _STATUS_BY_ERRNO.get(error.errno or 0, 500)
        return ApiError(status, f"{path!r}: {error.strerror or type(error).__name__}")
    raise error


class FilesBase(AgentHandler):
    """A handler that limits its request body."""

    def limit_body(self, max_bytes: int) -> None:
        """Allow a body of up to ``max_bytes`` (call in ``prepare``, before it is read)."""
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ApiError(413, f"the body may be at most {max_bytes} bytes")
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(max_bytes)


@stream_request_body
class FileHandler(FilesBase):
    """``GET``, ``PUT`` (raw body, atomic) and ``DELETE`` of ``/api/files/<path>``."""

    _writer: files.AtomicWriter | None = None
    _write_error: OSError | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "PUT":
            self.limit_body(MAX_SMALL_BODY)
            return
        self.limit_body(self.config.max_file_bytes)
        path = self.path_args[0]
        try:
            self._writer = files.AtomicWriter(self.config.root, path)
        except (files.PathError, OSError) as e:
            raise file_error(e, path) from None

    def data_received(self, chunk: bytes) -> None:
        if self._writer is None or self._write_error is not None:
            return
        try:
            self._writer.write(chunk)
        except OSError as e:
            self._write_error = e
            self._writer.abort()

    async def get(self, path: str) -> None:
        try:
            fd, _ = files.open_for_reading(self.config.root, path)
        except (files.PathError, OSError) as e:
            raise file_error(e, path) from None
        self.set_header("Content-Type", "application/octet-stream")
        with os.fdopen(fd, "rb", buffering=0) as source:
            # No Content-Length: the file may change while it is sent (chunked encoding).
            while chunk := source.read(CHUNK_BYTES):
                self.write(chunk)
                await self.flush()
        self.finish()

    def put(self, path: str) -> None:
        writer = self._writer
        if writer is None:  # pragma: no cover (prepare made it)
            raise ApiError(500, "no upload in progress")
        if self._write_error is not None:
            raise file_error(self._write_error, path)
        try:
            writer.commit()
        except OSError as e:
            raise file_error(e, path) from None
        self._writer = None
        self.set_status(204)
        self.finish()

    async def delete(self, path: str) -> None:
        try:
            await asyncio.to_thread(files.remove, self.config.root, path)
        except (files.PathError, OSError) as e:
            raise file_error(e, path) from None
        self.set_status(204)
        self.finish()

    def on_finish(self) -> None:
        if self._writer is not None:
            self._writer.abort()

    def on_connection_close(self) -> None:
        self.on_finish()


class DirectoryHandler(FilesBase):
    """``PUT /api/files-dir/<path>``: make a folder and its parents (no error if it exists)."""

    def put(self, path: str) -> None:
        try:
            files.make_dirs(self.config.root, path)
        except (files.PathError, OSError) as e:
            raise file_error(e, path) from None
        self.set_status(204)
        self.finish()


class RenameHandler(FilesBase):
    """``POST /api/files-rename`` ``{"from": ..., "to": ..., "overwrite": false}``."""

    def post(self) -> None:
        body = self.read_json_object()
        source, target = body.get("from"), body.get("to")
        overwrite = body.get("overwrite", False)
        if not isinstance(source, str) or not isinstance(target, str):
            raise ApiError(400, "'from' and 'to' must be paths relative to the root")
        if not isinstance(overwrite, bool):
            raise ApiError(400, "'overwrite' must be true or false")
        try:
            files.rename(self.config.root, source, target, overwrite=overwrite)
        except FileExistsError:
            raise ApiError(409, f"{target!r} exists already") from None
        except FileNotFoundError:
            raise ApiError(404, f"{source!r} does not exist") from None
        except (files.PathError, OSError) as e:
            raise file_error(e, f"{source} -> {target}") from None
        self.set_status(204)
        self.finish()


@stream_request_body
class TreeHandler(FilesBase):
    """``PUT /api/tree``: extract an uncompressed tar stream into the root.

    The body flows through a pipe to a thread running tarfile in stream mode; awaiting each
    write to the pipe stops reading the socket while the thread is behind.
    """

    _pipe: PipeIOStream | None = None
    _job: asyncio.Future[Any] | None = None
    _broken = False

    def prepare(self) -> None:
        super().prepare()
        self.limit_body(self.config.max_tree_bytes)
        lifetime = self.settings.get("lifetime")
        if lifetime is not None:
            lifetime.claim()
        read_fd, write_fd = os.pipe()
        self._pipe = PipeIOStream(write_fd)
        reader = os.fdopen(read_fd, "rb", buffering=1024 * 1024)
        self._job = asyncio.get_running_loop().run_in_executor(None, self._extract, reader)
        self._job.add_done_callback(_consume)

    def _extract(self, reader: IO[bytes]) -> Any:
        from kernel_image import tarload  # tarfile is only needed here: keep start-up fast

        # Closing the reader (whatever happens) makes further writes fail instead of blocking.
        with reader:
            try:
                return tarload.extract(reader, self.config.root, self.config.max_tree_bytes)
            except tarload.TooLargeError:
                raise ApiError(
                    413, f"the body may be at most {self.config.max_tree_bytes} bytes"
                ) from None
            except tarload.TarLoadError as e:
                raise ApiError(400, str(e)) from None

    async def data_received(self, chunk: bytes) -> None:
        if self._pipe is None or self._broken:
            return
        try:
            await self._pipe.write(chunk)
        except StreamClosedError:
            # The extraction ended early (an error, or the end-of-archive marker); the rest of
            # the body is read and dropped so that the answer can still be sent.
            self._broken = True

    async def put(self) -> None:
        if self._pipe is None or self._job is None:  # pragma: no cover (prepare made them)
            raise ApiError(500, "no upload in progress")
        self._pipe.close()
        result = await self._job
        self.write_json(result)

    def on_finish(self) -> None:
        if self._pipe is not None:
            self._pipe.close()

    def on_connection_close(self) -> None:
        self.on_finish()


def _consume(future: asyncio.Future[Any]) -> None:
    # An upload whose client went away still ends its thread; its error needs no log line.
    if not future.cancelled():
        future.exception()


default_handlers = [
    (r"/api/files/(.*)", FileHandler),
    (r"/api/files-dir/(.*)", DirectoryHandler),
    (r"/api/files-rename", RenameHandler),
    (r"/api/tree", TreeHandler),
]
