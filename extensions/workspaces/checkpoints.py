"""``PostgresCheckpoints``: Jupyter checkpoints of workspace files, kept in PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from jupyter_server.services.contents.checkpoints import AsyncCheckpoints
from traitlets import Instance, Integer, default

from extensions.workspaces import checkpoint_store, items
from extensions.workspaces.api_edge import api_path, bound_workspace, http_transaction
from platform_server.db import Connection, Database


class CheckpointedContents(Protocol):
    """What ``PostgresCheckpoints`` needs of its contents manager: ``PostgresContentsManager``."""

    @property
    def workspace_quota(self) -> int:
        """Most bytes the workspace may store (0: no quota)."""

    def writable_path(self, path: str, action: str) -> str:
        """The canonical form of a path about to be written; 400 if invalid or hidden."""

    async def publish_change(
        self, conn: Connection, action: str, path: str, *, row: items.ItemRow | None = None
    ) -> None:
        """Publish a change to editors in the change's transaction ``conn`` (``row``: the file
        as the change left it)."""


def checkpoint_model(row: checkpoint_store.CheckpointRow) -> dict[str, Any]:
    """Jupyter's checkpoint model: a string id and the saved file's last_modified."""
    return {"id": str(row["id"]), "last_modified": row["last_modified"]}


class PostgresCheckpoints(AsyncCheckpoints):
    """Checkpoints of one workspace's files, in the ``checkpoints`` table.

    Unlike Jupyter's file checkpoints (one per file), the newest ``max_checkpoints`` per file are
    kept; making a checkpoint identical to the newest returns that one. Ids are row ids.
    The parent must be a ``PostgresContentsManager``: its database and workspace are used.
    """

    max_checkpoints = Integer(
        20,
        min=1,
        help="Checkpoints kept per file; making one more deletes the oldest.",
    ).tag(config=True)

    db = Instance(Database, allow_none=True, help="The database (default: the parent's).")
    workspace_id = Instance(
        uuid.UUID, allow_none=True, help="The workspace (default: the parent's)."
    )

    @default("db")
    def _default_db(self) -> Database | None:
        return getattr(self.parent, "db", None)

    @default("workspace_id")
    def _default_workspace_id(self) -> uuid.UUID | None:
        return getattr(self.parent, "workspace_id", None)

    def _workspace(self) -> uuid.UUID:
        return bound_workspace(self.workspace_id)

    async def create_checkpoint(
        self, contents_mgr: CheckpointedContents, path: str
    ) -> dict[str, Any]:
        """Checkpoint the current content of the file at ``path``."""
        path = contents_mgr.writable_path(path, "checkpoint")
        async with http_transaction(self.db) as conn:
            row = await checkpoint_store.create_checkpoint(
                conn, self._workspace(), path, keep=self.max_checkpoints
            )
        return checkpoint_model(row)

    async def restore_checkpoint(
        self, contents_mgr: CheckpointedContents, checkpoint_id: str, path: str
    ) -> None:
        """Write checkpoint ``checkpoint_id`` back to the file at ``path``."""
        path = contents_mgr.writable_path(path, "restore")
        async with http_transaction(self.db) as conn:
            row = await checkpoint_store.restore_checkpoint(
                conn,
                self._workspace(),
                path,
                checkpoint_id,
                quota=contents_mgr.workspace_quota,
            )
            await contents_mgr.publish_change(conn, "restore", path, row=row)

    async def get_checkpoint(self, checkpoint_id: str, path: str) -> tuple[dict[str, Any], bytes]:
        """Checkpoint ``checkpoint_id`` of ``path``: its model and the bytes it saved."""
        async with http_transaction(self.db) as conn:
            row, data = await checkpoint_store.checkpoint_content(
                conn, self._workspace(), api_path(path), checkpoint_id
            )
        return checkpoint_model(row), data

    async def rename_checkpoint(self, checkpoint_id: str, old_path: str, new_path: str) -> None:
        """Move one checkpoint of ``old_path`` to ``new_path``."""
        async with http_transaction(self.db) as conn:
            await checkpoint_store.rename_checkpoints(
                conn, self._workspace(), api_path(old_path), api_path(new_path), checkpoint_id
            )

    async def rename_all_checkpoints(self, old_path: str, new_path: str) -> None:
        """Move every checkpoint of ``old_path`` to ``new_path`` (one statement)."""
        async with http_transaction(self.db) as conn:
            await checkpoint_store.rename_checkpoints(
                conn, self._workspace(), api_path(old_path), api_path(new_path)
            )

    async def delete_checkpoint(self, checkpoint_id: str, path: str) -> None:
        """Delete one checkpoint of ``path``."""
        async with http_transaction(self.db) as conn:
            await checkpoint_store.delete_checkpoint(
                conn, self._workspace(), api_path(path), checkpoint_id
            )

    async def delete_all_checkpoints(self, path: str) -> None:
        """Delete every checkpoint of ``path`` and of anything under it (one statement)."""
        async with http_transaction(self.db) as conn:
            await checkpoint_store.delete_checkpoints(conn, self._workspace(), api_path(path))

    async def list_checkpoints(self, path: str) -> list[dict[str, Any]]:
        """The checkpoints of ``path``, oldest first."""
        async with http_transaction(self.db) as conn:
            rows = await checkpoint_store.list_checkpoints(conn, self._workspace(), api_path(path))
        return [checkpoint_model(row) for row in rows]
