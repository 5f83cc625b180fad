"""``Sessions``: jupyter_server's session manager (notebook or console ↔ kernel) on PostgreSQL.

Rows live in ``kernel_sessions`` so every replica sees them; kernels live in the sandbox's
agent. As in jupyter_server, a session whose kernel is gone (shut down, culled, or its sandbox
stopped) is removed when it is next read.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from typing import Any, NotRequired, TypedDict

from psycopg import errors
from traitlets import Instance
from traitlets.config import LoggingConfigurable

from extensions.kernels import store
from extensions.kernels.manager import KernelModel, Kernels
from extensions.kernels.store import SessionRow
from platform_server.db import Database
from platform_server.errors import DomainError, InvalidInput, NotFound


class SessionModel(TypedDict):
    """jupyter_server's session model."""

    id: str
    path: str
    name: str | None
    type: str | None
    kernel: KernelModel
    notebook: NotRequired[dict[str, str | None]]


class KernelUnavailable(DomainError):
    """The session's kernel could not be started (jupyter_server answers 501 too)."""

    status_code = 501
    reason = "kernel_unavailable"


def session_model(row: SessionRow, kernel: KernelModel) -> SessionModel:
    """The API model of a session whose kernel runs."""
    model: SessionModel = {
        "id": str(row["id"]),
        "path": row["path"],
        "name": row["name"],
        "type": row["type"],
        "kernel": kernel,
    }
    if row["type"] == "notebook":
        # jupyter_server still provides the deprecated shape.
        model["notebook"] = {"path": row["path"], "name": row["name"]}
    return model


def no_session(session_id: str) -> NotFound:
    """The 404 of a missing session."""
    return NotFound(f"Session not found: session_id='{session_id[:64]}'")


def parse_session_id(value: str) -> uuid.UUID:
    """A session id from a URL (404 when it is not a UUID)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise no_session(value) from None


def _text(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            msg = f"Missing field in JSON data: {key}"
            raise InvalidInput(msg)
        return None
    if not isinstance(value, str):
        msg = f"'{key}' must be a string."
        raise InvalidInput(msg)
    if len(value) > (4096 if key == "path" else 1024 if key == "name" else 64) or "\0" in value:
        msg = f"'{key}' is too long or holds a NUL character."
        raise InvalidInput(msg)
    return value


def _kernel_request(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(id, name) of the body's ``kernel``."""
    kernel = body.get("kernel") or {}
    if not isinstance(kernel, dict):
        msg = '\'kernel\' must be an object like {"name": "python3"}.'
        raise InvalidInput(msg)
    return _text(kernel, "id"), _text(kernel, "name")


def _legacy_notebook(body: dict[str, Any]) -> None:
    """jupyter_server's translation of the old ``{"notebook": {...}}`` shape."""
    notebook = body.get("notebook")
    if isinstance(notebook, dict):
        body["type"] = "notebook"
        if "name" in notebook:
            body["path"] = notebook["name"]
        elif "path" in notebook:
            body["path"] = notebook["path"]


def session_name(path: str, name: str | None) -> str | None:
    """``JPY_SESSION_NAME`` relative to the root (the notebook's path), if it is a safe one."""
    candidate = posixpath.join(posixpath.dirname(path), name) if name else path
    parts = candidate.split("/")
    if candidate.startswith("/") or ".." in parts or "\0" in candidate or not candidate:
        return None
    return candidate


class Sessions(LoggingConfigurable):
    """Create, list, change and delete a workspace's sessions."""

    db = Instance(Database)
    kernels = Instance(Kernels)

    async def _rows(self, workspace_id: uuid.UUID) -> list[SessionRow]:
        async with self.db.connection() as conn:
            return await store.list_sessions(conn, workspace_id)

    async def _alive(
        self, workspace_id: uuid.UUID, rows: list[SessionRow]
    ) -> list[tuple[SessionRow, KernelModel]]:
        """Rows whose kernel runs, with its model; the others are deleted."""
        if not rows:
            return []
        kernels = await self.kernels.by_id(workspace_id)
        stale = [row["id"] for row in rows if row["kernel_id"] not in kernels]
        if stale:
            self.log.info(
                "workspace %s | %d session(s) lost their kernel", workspace_id, len(stale)
            )
            async with self.db.transaction() as conn:
                await store.delete_sessions(conn, workspace_id, stale)
        return [(row, kernels[row["kernel_id"]]) for row in rows if row["kernel_id"] in kernels]

    async def list_sessions(self, workspace_id: uuid.UUID) -> list[SessionModel]:
        """The workspace's sessions whose kernels run."""
        alive = await self._alive(workspace_id, await self._rows(workspace_id))
        return [session_model(row, kernel) for row, kernel in alive]

    async def get(self, workspace_id: uuid.UUID, session_id: str) -> SessionModel:
        """One session (404 if its kernel is gone, which also removes it)."""
        parsed = parse_session_id(session_id)
        async with self.db.transaction() as conn:
            row = await store.get_session(conn, workspace_id, parsed)
        alive = await self._alive(workspace_id, [row] if row else [])
        if not alive:
            raise no_session(session_id)
        return session_model(*alive[0])

    async def create(self, workspace_id: uuid.UUID, body: dict[str, Any]) -> SessionModel:
        """``POST``: the session of ``path`` if one exists, else a new one with a new kernel
        (or the running kernel ``kernel.id``)."""
        _legacy_notebook(body)
        path = _text(body, "path", required=True) or ""
        kind = _text(body, "type", required=True)
        name = _text(body, "name")
        kernel_id, kernel_name = _kernel_request(body)
        async with self.db.transaction() as conn:
            existing = await store.find_by_path(conn, workspace_id, path)
        if existing is not None:
            alive = await self._alive(workspace_id, [existing])
            if alive:
                return session_model(*alive[0])
        kernels = await self.kernels.by_id(workspace_id) if kernel_id else {}
        started = kernel_id not in kernels
        kernel = (
            kernels[kernel_id]
            if kernel_id in kernels
            else await self._start_kernel(workspace_id, kernel_name, path, name)
        )
        session_id = uuid.uuid4()
        async with self.db.transaction() as conn:
            row = await store.insert_session(
                conn,
                workspace_id,
                session_id,
                path=path,
                name=name,
                type=kind,
                kernel_id=kernel["id"],
            )
            if row is None:  # another request made this path's session meanwhile
                row = await store.find_by_path(conn, workspace_id, path)
        if row is None or row["id"] != session_id:
            if started:
                await self._shutdown_quietly(workspace_id, kernel["id"])
            if row is None:
                msg = "The session changed while it was being created; try again."
                raise InvalidInput(msg)
            return await self.get(workspace_id, str(row["id"]))
        self.log.info("workspace %s | session %s on %s", workspace_id, session_id, path[:200])
        return session_model(row, kernel)

    async def _start_kernel(
        self, workspace_id: uuid.UUID, kernel_name: str | None, path: str, name: str | None
    ) -> KernelModel:
        try:
            return await self.kernels.start(
                workspace_id, kernel_name, path, session_name(path, name)
            )
        except InvalidInput as e:
            msg = f"The '{(kernel_name or 'python3')[:64]}' kernel is not available: {e.message}"
            raise KernelUnavailable(msg) from e

    async def _shutdown_quietly(self, workspace_id: uuid.UUID, kernel_id: str) -> None:
        try:
            await self.kernels.shutdown(workspace_id, kernel_id)
        except NotFound:
            pass
        except DomainError as e:
            self.log.warning(
                "workspace %s | kernel %s not shut down: %s", workspace_id, kernel_id, e
            )

    async def update(
        self, workspace_id: uuid.UUID, session_id: str, body: dict[str, Any]
    ) -> SessionModel:
        """``PATCH``: a new ``path``/``name``/``type`` (a rename), or another kernel: an
        existing one (``kernel.id``) or a new one (``kernel.name``); the old kernel is then
        shut down, as jupyter_server does."""
        before = await self.get(workspace_id, session_id)
        notebook = body.get("notebook")
        if isinstance(notebook, dict) and "path" in notebook:
            body["path"], body["type"] = notebook["path"], "notebook"
        changes: dict[str, Any] = {}
        for key in ("path", "name", "type"):
            if key in body:
                changes[key] = _text(body, key, required=key == "path")
        if "kernel" in body:
            kernel_id, kernel_name = _kernel_request(body)
            if kernel_id is not None:
                if kernel_id not in await self.kernels.by_id(workspace_id):
                    msg = f"No such kernel: {kernel_id[:64]}"
                    raise InvalidInput(msg)
                changes["kernel_id"] = kernel_id
            elif kernel_name is not None:
                kernel = await self._start_kernel(
                    workspace_id, kernel_name, before["path"], before["name"]
                )
                changes["kernel_id"] = kernel["id"]
        try:
            async with self.db.transaction() as conn:
                row = await store.update_session(
                    conn, workspace_id, parse_session_id(session_id), changes
                )
        except errors.UniqueViolation as e:
            raise store.path_taken(str(changes.get("path", ""))) from e
        if row is None:
            raise no_session(session_id)
        after = await self.get(workspace_id, session_id)
        if changes:
            await self._rename_kernel_session(workspace_id, after)
        if after["kernel"]["id"] != before["kernel"]["id"]:
            await self._shutdown_quietly(workspace_id, before["kernel"]["id"])
        return after

    async def _rename_kernel_session(self, workspace_id: uuid.UUID, session: SessionModel) -> None:
        """Give the session's kernel the session's ``JPY_SESSION_NAME`` for its next restart,
        as jupyter_server's ``update_session`` does. The change stands if the agent fails."""
        name = session_name(session["path"], session["name"])
        if name is None:
            return
        kernel_id = session["kernel"]["id"]
        try:
            await self.kernels.rename_session(workspace_id, kernel_id, name)
        except DomainError as e:
            self.log.warning(
                "workspace %s | kernel %s keeps its session name: %s", workspace_id, kernel_id, e
            )

    async def delete(self, workspace_id: uuid.UUID, session_id: str) -> None:
        """``DELETE``: shut the session's kernel down and forget the session."""
        session = await self.get(workspace_id, session_id)
        with contextlib.suppress(NotFound):  # it ended meanwhile: the session goes all the same
            await self.kernels.shutdown(workspace_id, session["kernel"]["id"])
        async with self.db.transaction() as conn:
            await store.delete_sessions(conn, workspace_id, [uuid.UUID(session["id"])])
        self.log.info("workspace %s | session %s deleted", workspace_id, session_id[:64])
