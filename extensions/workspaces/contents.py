"""``PostgresContentsManager``: Jupyter's contents API over one workspace stored in PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import uuid
from base64 import encodebytes
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import nbformat
import psycopg
from jupyter_events import EventLogger
from jupyter_server.base.call_context import CallContext
from jupyter_server.services.contents.manager import AsyncContentsManager, copy_pat
from nbformat import sign
from tornado.web import RequestHandler
from traitlets import Instance, Integer, List, TraitError, Unicode, default

from extensions.workspaces import (
    checkpoint_store,
    chunks,
    events,
    items,
    models,
    notebooks,
    paths,
    server_shared,
    standalone,
    uploads,
    writes,
)
from extensions.workspaces.api_edge import (
    api_path,
    bound_workspace,
    http_connection,
    http_transaction,
)
from extensions.workspaces.checkpoints import PostgresCheckpoints
from platform_server.db import Connection, Database
from platform_server.db.migrate import apply_migrations
from platform_server.errors import DomainError, PlatformError, TooLarge

# The running digests of chunked uploads received by this process.
_UPLOAD_DIGESTS = uploads.UploadDigests()


class ContentsListener(Protocol):
    """Told of every committed change to a workspace's files (a running sandbox mirrors them)."""

    async def contents_changed(
        self, workspace_id: uuid.UUID, action: str, path: str, source_path: str | None
    ) -> None:
        """``action`` is save, delete, rename, copy or restore; ``source_path`` for the two
        that have one. Must not raise, nor wait for a sandbox: the change is already
        committed, and the request answers once every listener returns."""


class PostgresContentsManager(AsyncContentsManager):
    """The files of one workspace, stored in PostgreSQL, behind Jupyter's contents API.

    Behaves as jupyter_server's ``AsyncLargeFileManager`` does (models, errors, chunked
    uploads, hidden files, untitled and copy names), and adds what a shared database allows:
    per-file and per-workspace size limits, several checkpoints per file, and ``If-Match``
    (a PUT whose ``If-Match`` is not the stored file's sha256 is refused with 409).

    The platform makes one per request, bound to the URL's workspace:
    ``PostgresContentsManager(parent=app, db=db, workspace_id=uuid, log=log)``; that costs no
    I/O. A stock ``jupyter server`` can use it too (standalone mode): set ``db_url`` and
    ``workspace`` and it makes its own database pool, migrates, and finds the workspace.
    """

    db = Instance(Database, allow_none=True, help="The platform's database (not config).")
    workspace_id = Instance(
        uuid.UUID, allow_none=True, help="The workspace whose files are served (not config)."
    )

    listeners: List[Any] = List(
        help="Objects with ``contents_changed`` (see ContentsListener), "
        "told of every committed change before the request answers (not config).",
    )

    db_url = Unicode(
        "",
        help="Standalone mode: PostgreSQL URL of the platform's database (migrated at start). "
        "Unused when the platform passes its database.",
    ).tag(config=True)

    workspace = Unicode(
        "",
        help="Standalone mode: the workspace to serve, by id, or by name (a workspace of the "
        "user 'standalone', made if missing).",
    ).tag(config=True)

    max_file_size = Integer(
        100 * 1024 * 1024,
        help="Largest file (in bytes) that can be saved or uploaded, chunked uploads included "
        "(413 beyond). 0 disables the limit.",
    ).tag(config=True)

    workspace_quota = Integer(
        1024 * 1024 * 1024,
        help="Most bytes one workspace may store: its files, checkpoints and uploads in "
        "progress, a content shared by several of them (a copy, a checkpoint of the current "
        "version) counted once. A write that would go beyond is refused with 413 (reason "
        "quota_exceeded). 0 disables the quota.",
    ).tag(config=True)

    upload_expiry = Integer(
        3600,
        min=1,
        help="Seconds a chunked upload may go without a chunk before it is abandoned: its "
        "chunks are dropped when another upload to the workspace begins.",
    ).tag(config=True)

    @default("checkpoints_class")
    def _default_checkpoints_class(self) -> type[PostgresCheckpoints]:
        return PostgresCheckpoints

    @default("notary")
    def _default_notary(self) -> sign.NotebookNotary:
        return server_shared.notary(self)

    @default("event_logger")
    def _default_event_logger(self) -> EventLogger:
        return server_shared.event_logger(self)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.db is None and self.db_url:
            self._start_standalone()

    def _start_standalone(self) -> None:
        """Standalone mode: migrate the database and find (or make) the workspace to serve."""
        if not self.workspace:
            msg = "PostgresContentsManager.workspace is required with db_url."
            raise TraitError(msg)
        log = self.log if isinstance(self.log, logging.Logger) else logging.getLogger(__name__)
        apply_migrations(self.db_url, log)
        try:
            with psycopg.connect(self.db_url) as conn:
                workspace_id = standalone.resolve_workspace(conn, self.workspace)
        except DomainError as e:
            raise TraitError(e.message) from e
        self.workspace_id = workspace_id
        self.db = standalone.POOLS.get(self.db_url, server_shared.server_loop(self), log)
        self.log.info("contents | serving workspace %s from PostgreSQL", workspace_id)

    def info_string(self) -> str:
        """What the server logs at start."""
        return f"Serving contents of workspace {self.workspace_id} from PostgreSQL"

    # --- helpers -------------------------------------------------------------------------

    @property
    def _workspace(self) -> uuid.UUID:
        return bound_workspace(self.workspace_id)

    @property
    def _postgres_checkpoints(self) -> bool:
        """Whether checkpoints live in our tables (moved and deleted with their files)."""
        return isinstance(self.checkpoints, PostgresCheckpoints)

    def writable_path(self, path: str, action: str) -> str:
        """The canonical form of a path about to be written; 400 if invalid or hidden."""
        path = api_path(path)
        if not self.allow_hidden and paths.is_hidden(path):
            msg = f"Cannot {action} the hidden file or directory {path!r}"
            raise PlatformError(400, msg, reason="hidden")
        return path

    def _readable_path(self, path: str) -> str:
        """The canonical form of a path about to be read; 404 if hidden (as Jupyter does)."""
        path = api_path(path)
        if not self.allow_hidden and paths.is_hidden(path):
            msg = f"No such file or directory: {path}"
            raise PlatformError(404, msg, reason="not_found")
        return path

    def _if_match(self) -> list[str] | None:
        """The entity tags of the current PUT request's ``If-Match`` header, if it has one."""
        handler = CallContext.get(CallContext.JUPYTER_HANDLER)
        if not isinstance(handler, RequestHandler) or handler.request.method != "PUT":
            return None
        header = handler.request.headers.get("If-Match")
        if header is None:
            return None
        tags = [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")]
        return [tag for tag in tags if tag] or None

    def _emit(self, data: dict[str, str]) -> None:
        """Record a contents event, as Jupyter's managers do."""
        self.emit(data=data)  # type: ignore[no-untyped-call]

    async def publish_change(
        self,
        conn: Connection,
        action: str,
        path: str,
        source_path: str | None = None,
        row: items.ItemRow | None = None,
    ) -> None:
        """Publish a change to editors in the change's transaction ``conn`` (so they hear it
        exactly when it commits); ``row``: the item as the change left it."""
        modified = None if row is None else row["last_modified"]
        await events.publish_file_change(
            conn, self._workspace, action, path, source_path=source_path, last_modified=modified
        )

    async def _changed(self, action: str, path: str, source_path: str | None = None) -> None:
        """Record a committed change and tell the listeners before the request answers."""
        event = {"action": action, "path": path}
        if source_path is not None:
            event["source_path"] = source_path
        self._emit(event)
        for listener in cast(list[ContentsListener], self.listeners):
            await listener.contents_changed(self._workspace, action, path, source_path)

    def _check_size(self, size: int, path: str) -> None:
        try:
            writes.check_size(size, self.max_file_size, path)
        except TooLarge as e:
            raise e.to_http() from e

    def _listing(self, parent: str, rows: list[Any]) -> list[dict[str, Any]]:
        """Models of a directory's children (hidden and ``hide_globs`` names left out)."""
        hide_globs = tuple(self.hide_globs)
        return models.listing(parent, rows, allow_hidden=self.allow_hidden, hide_globs=hide_globs)

    # --- existence -----------------------------------------------------------------------

    async def _type(self, path: str) -> str | None:
        path = api_path(path)
        if not path:
            return "directory"
        async with http_connection(self.db) as conn:
            return await items.item_type(conn, self._workspace, path)

    async def dir_exists(self, path: str) -> bool:
        """Whether ``path`` is a directory (the root always is)."""
        return await self._type(path) == "directory"

    async def file_exists(self, path: str) -> bool:
        """Whether ``path`` is a file or a notebook."""
        return await self._type(path) in {"file", "notebook"}

    async def exists(self, path: str) -> bool:
        """Whether anything is at ``path`` (one query, not Jupyter's two)."""
        return await self._type(path) is not None

    async def is_hidden(self, path: str) -> bool:
        """Whether a segment of ``path`` starts with '.'; 400 for an invalid path."""
        return paths.is_hidden(api_path(path))

    # --- reading -------------------------------------------------------------------------

    async def get(
        self,
        path: str,
        content: bool = True,
        type: str | None = None,
        format: str | None = None,
        require_hash: bool = False,
    ) -> dict[str, Any]:
        """The model of a file, notebook or directory (with a listing when ``content``)."""
        path = self._readable_path(path)
        if not path:
            model = await self._root_model(content)
        else:
            model = await self._item_model(path, content, type, format, require_hash)
        self._emit({"action": "get", "path": path})
        return model

    async def _root_model(self, content: bool) -> dict[str, Any]:
        async with http_connection(self.db) as conn:
            created = await items.workspace_created(conn, self._workspace)
            rows = await items.list_children(conn, self._workspace, "") if content else None
        model = models.model("", "directory", None, None, created, created)
        if rows is not None:
            model["content"] = self._listing("", rows)
            model["format"] = "json"
        return model

    async def _item_model(
        self,
        path: str,
        content: bool,
        type: str | None,
        format: str | None,
        require_hash: bool,
    ) -> dict[str, Any]:
        rows = None
        async with http_connection(self.db) as conn:
            row = await items.get_item(conn, self._workspace, path, content=content)
            if row["type"] == "directory":
                if type not in {None, "directory"}:
                    msg = f"{path} is a directory, not a {type}"
                    raise PlatformError(400, msg, reason="bad type")
                if content:
                    rows = await items.list_children(conn, self._workspace, path)
        if row["type"] == "directory":
            model = models.row_model(row)
            if rows is not None:
                model["content"] = self._listing(path, rows)
                model["format"] = "json"
            return model

        if type == "notebook" or (type is None and path.endswith(".ipynb")):
            kind = "notebook"
        elif type == "directory":
            msg = f"{path} is not a directory"
            raise PlatformError(400, msg, reason="bad type")
        else:
            kind = "file"
        mimetype = None
        if kind == "file":
            # A notebook read as a file has no stored mimetype: guess as Jupyter does.
            mimetype = row["mimetype"] if row["type"] == "file" else items.guess_mimetype(path)
        model = models.model(
            path, kind, row["size"], mimetype, row["created"], row["last_modified"]
        )
        data = row["content"]
        if data is not None:
            if kind == "notebook":
                validation_error: dict[str, Any] = {}
                nb = await asyncio.to_thread(notebooks.read, data, path, validation_error)
                self.mark_trusted_cells(nb, path)  # type: ignore[no-untyped-call]
                model["content"] = nb
                model["format"] = "json"
                self.validate_notebook_model(model, validation_error)  # type: ignore[no-untyped-call]
            else:
                models.file_content(model, data, format)
        if require_hash and row["sha256"] is not None:
            model["hash"] = row["sha256"].hex()
            model["hash_algorithm"] = "sha256"
        return model

    # --- saving --------------------------------------------------------------------------

    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        """Save a file, notebook or directory model (or one chunk of an upload).

        Returns the saved model without content; for a notebook that fails validation, with
        the ``message`` Jupyter gives. Nothing is written when the request is refused.
        """
        chunk = model.get("chunk")
        if chunk is not None:
            return await self._save_chunk(model, path, chunk)
        path = self.writable_path(path, "create")
        self.run_pre_save_hooks(model=model, path=path)  # type: ignore[no-untyped-call]
        if "type" not in model:
            raise PlatformError(400, "No file type provided")
        kind = model["type"]
        if "content" not in model and kind != "directory":
            raise PlatformError(400, "No file content provided")
        if not path:
            if kind == "directory":
                return await self.get("", content=False)
            raise PlatformError(400, "The root is a directory.")

        message = None
        if kind == "directory":
            async with http_transaction(self.db) as conn:
                row = await items.make_directory(conn, self._workspace, path)
                await self.publish_change(conn, "save", path, row=row)
        elif kind in {"notebook", "file"}:
            if kind == "notebook":
                data, message = await self._notebook_content(model["content"], path)
            else:
                data = models.decode(model["content"], model.get("format"), path)
            row = await self._write(path, data, checkpoint=kind == "notebook")
        else:
            msg = f"Unhandled contents type: {kind}"
            raise PlatformError(400, msg)

        saved = models.row_model(row)
        if message:
            saved["message"] = message
        await self._changed("save", path)
        return saved

    async def _write(self, path: str, data: bytes, *, checkpoint: bool) -> items.ItemRow:
        """Store a file's bytes in one transaction (limits, quota and If-Match checked)."""
        self._check_size(len(data), path)
        sha256 = await writes.sha256_of(data)
        in_tables = checkpoint and self._postgres_checkpoints
        async with http_transaction(self.db, pipeline=True) as conn:
            row = await items.write_file(
                conn,
                self._workspace,
                path,
                data,
                sha256,
                quota=self.workspace_quota,
                if_match=self._if_match(),
            )
            if in_tables:
                await checkpoint_store.ensure_checkpoint(conn, self._workspace, path)
            await self.publish_change(conn, "save", path, row=row)
        # Jupyter keeps one checkpoint per notebook at least; other checkpoint classes are
        # asked separately (ours did it in the save's transaction).
        if checkpoint and not in_tables and not await self.list_checkpoints(path):
            await self.create_checkpoint(path)
        return row

    async def _notebook_content(self, content: Any, path: str) -> tuple[bytes, str | None]:
        """A notebook's bytes (as Jupyter writes them) and its validation message, if any."""
        problem = notebooks.shape_problem(content)
        if problem is not None:
            msg = f"The content of the notebook {path} is not a notebook: {problem}."
            raise PlatformError(400, msg, reason="invalid_notebook")
        nb = nbformat.from_dict(content)  # type: ignore[no-untyped-call]
        self.check_and_sign(nb, path)  # type: ignore[no-untyped-call]
        validation_error: dict[str, Any] = {}
        try:
            data = await asyncio.to_thread(notebooks.to_bytes, nb, validation_error)
        except Exception as e:
            msg = f"Invalid notebook {path}: {e}"
            raise PlatformError(400, msg) from e
        checked: dict[str, Any] = {"content": nb}
        self.validate_notebook_model(checked, validation_error)  # type: ignore[no-untyped-call]
        return data, checked.get("message")

    async def _save_chunk(self, model: dict[str, Any], path: str, chunk: Any) -> dict[str, Any]:
        """One chunk of an upload (JupyterLab: 1, 2, ..., then -1 for the last)."""
        chunks.check_number(chunk)
        path = self.writable_path(path, "create")
        if not path:
            raise PlatformError(400, "The root is a directory.")
        if chunk == 1:
            self.run_pre_save_hooks(model=model, path=path)  # type: ignore[no-untyped-call]
        data = chunks.chunk_bytes(model, path)

        async def publish(conn: Connection, row: items.ItemRow) -> None:
            await self.publish_change(conn, "save", path, row=row)

        row, received = await chunks.store_chunk(
            self.db,
            self._workspace,
            path,
            chunk,
            data,
            max_size=self.max_file_size,
            quota=self.workspace_quota,
            if_match=self._if_match(),
            expiry=self.upload_expiry,
            digests=_UPLOAD_DIGESTS,
            publish=publish,
        )
        if row is not None:
            saved = models.row_model(row)
            await self._changed("save", path)
            return saved
        # The file itself changes only with the last chunk; until then, describe the upload.
        now = datetime.now(UTC)
        return models.model(path, "file", received, items.file_mimetype(path), now, now)

    # --- deleting, renaming, copying -----------------------------------------------------

    async def delete_file(self, path: str) -> None:
        """Delete a file, or a directory with everything in it (and their checkpoints)."""
        path = self.writable_path(path, "delete")
        if not path:
            raise PlatformError(400, "Can't delete root")
        async with http_transaction(self.db) as conn:
            await items.delete_item(conn, self._workspace, path)
            await self.publish_change(conn, "delete", path)

    async def delete(self, path: str) -> None:
        """Delete a file or directory and its checkpoints, in one transaction."""
        await self.delete_file(path)
        if not self._postgres_checkpoints:
            await self.checkpoints.delete_all_checkpoints(path)  # type: ignore[no-untyped-call]
        await self._changed("delete", api_path(path))

    async def rename_file(self, old_path: str, new_path: str) -> None:
        """Move a file or a directory (with its descendants and checkpoints); 409 if taken."""
        old_path = self.writable_path(old_path, "rename")
        new_path = self.writable_path(new_path, "rename")
        if old_path == new_path:
            return
        if not old_path or not new_path:
            raise PlatformError(400, "The root cannot be renamed or replaced.")
        async with http_transaction(self.db) as conn:
            await items.rename_item(conn, self._workspace, old_path, new_path)
            moved = await items.get_item(conn, self._workspace, new_path, content=False)
            await self.publish_change(conn, "rename", new_path, old_path, row=moved)

    async def rename(self, old_path: str, new_path: str) -> None:
        """Rename a file or directory and its checkpoints, in one transaction."""
        await self.rename_file(old_path, new_path)
        if not self._postgres_checkpoints:
            await self.checkpoints.rename_all_checkpoints(old_path, new_path)  # type: ignore[no-untyped-call]
        await self._changed("rename", api_path(new_path), api_path(old_path))

    async def copy(self, from_path: str, to_path: str | None = None) -> dict[str, Any]:
        """Copy a file or a directory, naming the copy as Jupyter does ("a-Copy1.txt").

        ``to_path`` None: next to the original. A directory: into it. Otherwise, for a file,
        the new path. The bytes are copied inside PostgreSQL.
        """
        path = self._readable_path(from_path)
        if not path:
            raise PlatformError(400, "Can't copy the root directory")
        source = await self.get(path, content=False)
        from_dir, _, from_name = path.rpartition("/")
        name = copy_pat.sub(".", from_name)
        target = from_dir if to_path is None else api_path(to_path)
        if await self.dir_exists(target):
            to_name: str = await self.increment_filename(  # type: ignore[no-untyped-call]
                name, target, insert="-Copy"
            )
            target = paths.join(target, to_name)
        elif source["type"] == "directory":
            # Jupyter copies a directory into to_path even when it does not exist yet.
            target = paths.join(target, name)
        elif to_path is not None and "/" in target:
            to_dir = target.rpartition("/")[0]
            if not await self.dir_exists(to_dir):
                msg = f"No such parent directory: {to_dir} to copy file in"
                raise PlatformError(404, msg)
        target = self.writable_path(target, "copy to")
        async with http_transaction(self.db) as conn:
            if source["type"] == "directory":
                # As Jupyter's copytree, make the folders the copy goes into.
                to_parent = paths.split(target)[0]
                for made in await items.make_directories(conn, self._workspace, to_parent):
                    await self.publish_change(conn, "save", made["path"], row=made)
            row = await items.copy_item(
                conn, self._workspace, path, target, quota=self.workspace_quota
            )
            await self.publish_change(conn, "copy", target, path, row=row)
        await self._changed("copy", target, path)
        return models.row_model(row)

    # --- checkpoints (typed; the work is the checkpoints class's) -------------------------

    async def create_checkpoint(self, path: str) -> dict[str, Any]:
        """Checkpoint the file at ``path``; return ``{"id", "last_modified"}``."""
        model: dict[str, Any] = await self.checkpoints.create_checkpoint(self, path)  # type: ignore[no-untyped-call]
        return model

    async def restore_checkpoint(self, checkpoint_id: str, path: str) -> None:
        """Write checkpoint ``checkpoint_id`` back to the file at ``path``."""
        await self.checkpoints.restore_checkpoint(self, checkpoint_id, path)  # type: ignore[no-untyped-call]
        await self._changed("restore", api_path(path))

    async def get_checkpoint(self, checkpoint_id: str, path: str) -> dict[str, Any]:
        """Checkpoint ``checkpoint_id`` of ``path`` with its ``content`` and ``format`` (text
        if it decodes, else base64), to compare a saved version with the file."""
        if not self._postgres_checkpoints:
            msg = "Reading a checkpoint needs PostgresCheckpoints."
            raise PlatformError(501, msg, reason="unsupported")
        checkpoints = cast(PostgresCheckpoints, self.checkpoints)
        model, data = await checkpoints.get_checkpoint(checkpoint_id, self._readable_path(path))
        try:
            model["content"], model["format"] = data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            model["content"], model["format"] = encodebytes(data).decode("ascii"), "base64"
        return model

    async def list_checkpoints(self, path: str) -> list[dict[str, Any]]:
        """The checkpoints of ``path``, oldest first."""
        listed: list[dict[str, Any]] = await self.checkpoints.list_checkpoints(path)  # type: ignore[no-untyped-call]
        return listed

    async def delete_checkpoint(self, checkpoint_id: str, path: str) -> None:
        """Delete one checkpoint of ``path``."""
        await self.checkpoints.delete_checkpoint(checkpoint_id, path)  # type: ignore[no-untyped-call]
