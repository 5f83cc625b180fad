"""``DocumentRoom``: one shared text file on this replica: its Y document, clients and saves.

The document's updates made here (by this replica's clients, or by merging a change made to
the file another way) are stored in PostgreSQL and announced with NOTIFY; the updates other
replicas stored are applied here when their NOTIFY arrives. Local clients hear every change
at once through pycrdt-websocket's ``YRoom``, without waiting for the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, Protocol, cast

from pycrdt import (
    Channel,
    TransactionEvent,
    create_awareness_message,
    merge_updates,
    read_message,
)
from pycrdt.websocket import YRoom

from extensions.collaboration import store
from extensions.collaboration.merge import diff_update, seed, text_of
from extensions.collaboration.protocol import (
    SAVE_REQUEST,
    awareness_removal,
    read_awareness,
    save_status,
)
from extensions.workspaces import items
from platform_server.errors import NotFound

if TYPE_CHECKING:
    from extensions.collaboration.rooms import Collaboration

# Seconds between attempts to store updates while the database does not answer.
RETRY_SECONDS = 1.0
INVALID_DATA = 1007
"""The close code of a client whose update cannot be applied."""


class Client(Channel, Protocol):
    """A client's channel that the room can also close."""

    def close(self, code: int, reason: str) -> None:
        """Close the client's socket with a WebSocket close code."""


def digest(text: str) -> bytes:
    """The sha256 of a text as the file stores it (UTF-8)."""
    return hashlib.sha256(text.encode()).digest()


class DocumentRoom:
    """The room of one (workspace, path): made by ``Collaboration.room``, closed by it some
    seconds after its last client left (after a final save)."""

    def __init__(self, service: Collaboration, workspace_id: uuid.UUID, path: str) -> None:
        self.service = service
        self.workspace_id = workspace_id
        self.path = path
        self.log: logging.Logger = service.log
        self.yroom = YRoom(ready=True, log=self.log)
        self.yroom.on_message_error = self._refuse
        self.yroom.on_message = self._save_requested
        self.last_seq = 0
        self.closed = False
        # Local changes not written to the file yet.
        self.dirty = False
        self._own_seqs: set[int] = set()
        self._pending: list[bytes] = []
        self._applying_stored = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._read_again = False
        self._save_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._save_lock = asyncio.Lock()
        self._merge_lock = asyncio.Lock()
        self._checkpoint_at_close = False
        # The name each awareness client id showed first (names_allowed).
        self._names: dict[int, str] = {}
        self._unsubscribe: Any = None
        self._yroom_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"room {self.workspace_id}:{self.path}"

    @property
    def text(self) -> str:
        """The document's text now."""
        return str(text_of(self.yroom.ydoc))

    @property
    def clients(self) -> set[Client]:
        """The channels of this replica's clients in the room."""
        return cast(set[Client], self.yroom.clients)

    def _save_requested(self, message: bytes) -> bool:
        """A save request, taken in turn with its client's updates (those before it are in
        the save); pycrdt-websocket handles every other message."""
        if message[:1] != bytes([SAVE_REQUEST]):
            return False
        self.save_now()
        return True

    def _refuse(self, error: Exception, message: bytes, channel: Channel) -> bool:
        """A well-framed update that pycrdt cannot apply: its client goes, nothing changed."""
        self.log.info("%r | closing a client whose update failed (%s)", self, type(error).__name__)
        cast(Client, channel).close(INVALID_DATA, "Invalid frame: the update cannot be applied.")
        return True

    # --- opening and closing ---------------------------------------------------------------

    async def open(self) -> None:
        """Load the stored document (seeding it from the file the first time), start serving."""
        db = self.service.db
        async with db.transaction() as conn:
            await store.lock_document(conn, self.workspace_id, self.path)
            row = await store.get_document(conn, self.workspace_id, self.path)
            if row is None:
                # Seeded exactly once: under the lock, the first replica makes the row.
                item = await items.get_item(conn, self.workspace_id, self.path, content=True)
                content = (item["content"] or b"").decode()
                await store.create_document(
                    conn, self.workspace_id, self.path, seed(content), digest(content)
                )
            updates = await store.updates_after(conn, self.workspace_id, self.path, 0)
            await store.add_peer(conn, self.workspace_id, self.path, self.service.replica)
        self._apply_stored(updates)
        self.yroom.ydoc.observe(self._changed)
        self._yroom_task = asyncio.create_task(self.yroom.start())
        await self.yroom.started.wait()
        self._unsubscribe = self.service.subscribe_files(self.workspace_id, self._file_event)
        if row is not None:
            # A stored document (open elsewhere, or kept from an earlier room): the file may
            # have changed since its last save.
            await self.merge_file()
        self.schedule_close()

    def schedule_close(self) -> None:
        """Close the room ``close_delay`` seconds from now unless a client is in it then."""
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = asyncio.get_running_loop().call_later(
            self.service.close_delay, self._close_if_idle
        )

    def _close_if_idle(self) -> None:
        if not self.clients and not self.closed:
            self.service.close_room(self)

    async def close(self, *, save: bool = True) -> None:
        """Save (unless ``save`` is false: the file is gone), stop. The last replica to close
        the room compacts the document's updates into one, or forgets the document when its
        file is gone. The document outlives its rooms so that a client that kept it (across a
        platform restart) merges into the same history: seeded anew, its text would be
        inserted twice."""
        self.closed = True
        for timer in (self._save_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
        try:
            if save:
                await self.save(checkpoint=self._checkpoint_at_close)
            if self._writer is not None:
                await self._writer
        except Exception:
            self.log.exception("%r | final save failed", self)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._yroom_task is not None:
            await self.yroom.stop()
            await asyncio.gather(self._yroom_task, return_exceptions=True)
        async with self.service.db.transaction() as conn:
            await store.lock_document(conn, self.workspace_id, self.path)
            others = await store.remove_peer(
                conn, self.workspace_id, self.path, self.service.replica
            )
            if not others and not save:
                await store.delete_document(conn, self.workspace_id, self.path)
            elif not others:
                updates = await store.updates_after(conn, self.workspace_id, self.path, 0)
                merged = merge_updates(*(data for _, data in updates))
                await store.replace_updates(conn, self.workspace_id, self.path, merged)
        self.log.info("collaboration %s | closed the room of a file", self.workspace_id)

    async def serve(self, channel: Client) -> None:
        """Serve one client until its socket closes; it hears who is here at once (clients
        renew their presence only every 15 seconds)."""
        awareness = self.yroom.awareness
        present = [client for client, state in awareness.states.items() if state]
        if present:
            await channel.send(create_awareness_message(awareness.encode_awareness_update(present)))
        try:
            await self.yroom.serve(channel)
        finally:
            if not self.clients:
                self.schedule_close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- changes made here: stored for the other replicas, saved after a pause ----------------

    def _changed(self, event: TransactionEvent) -> None:
        if self._applying_stored:
            return
        self._pending.append(event.update)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        self.dirty = True
        self.schedule_save()

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            update = merge_updates(*batch) if len(batch) > 1 else batch[0]
            try:
                async with self.service.db.transaction() as conn:
                    await store.lock_document(conn, self.workspace_id, self.path)
                    self._own_seqs.add(
                        await store.append_update(conn, self.workspace_id, self.path, update)
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%r | storing an update failed; retrying", self)
                self._pending[:0] = [update]
                if self.closed:
                    return
                await asyncio.sleep(RETRY_SECONDS)

    def schedule_save(self) -> None:
        """Save ``save_delay`` seconds after the last change."""
        if self.closed:
            return
        if self._save_timer is not None:
            self._save_timer.cancel()
        self._save_timer = asyncio.get_running_loop().call_later(
            self.service.save_delay, lambda: self._spawn(self._save_quietly())
        )

    def save_now(self) -> None:
        """A client asked to save (Ctrl+S): at once, keeping a checkpoint."""
        if self._save_timer is not None:
            self._save_timer.cancel()
        self._spawn(self._save_quietly(checkpoint=True))

    async def _save_quietly(self, *, checkpoint: bool = False) -> None:
        try:
            await self.save(checkpoint=checkpoint)
        except Exception:
            self.log.exception("%r | saving failed", self)
            self._broadcast(save_status(saving=False, saved=False))

    async def save(self, *, checkpoint: bool = False) -> None:
        """Write the text to the file through the workspace's contents manager (the path a
        PUT takes: limits, history, search, the sandbox's copy), unless the last save of any
        replica wrote the same text; ``checkpoint``: keep the file's version as one too."""
        async with self._save_lock:
            text, state = self.text, self.yroom.ydoc.get_update()
            sha = digest(text)
            was_dirty, self.dirty = self.dirty, False
            self._broadcast(save_status(saving=True, saved=False))
            manager = self.service.contents(self.workspace_id)
            try:
                async with self.service.db.dedicated_connection() as conn:
                    # Held through the write, so that the file event it makes, which every
                    # replica's room hears, finds the new saved state (merge_file).
                    await store.lock_document_session(conn, self.workspace_id, self.path)
                    row = await store.get_document(conn, self.workspace_id, self.path)
                    if row is None:
                        return
                    if row["saved_sha256"] != sha:
                        model = {"type": "file", "format": "text", "content": text}
                        await manager.save(model, self.path)
                        self._checkpoint_at_close = True
                    await store.set_saved(conn, self.workspace_id, self.path, state, sha)
                    await store.unlock_document_session(conn, self.workspace_id, self.path)
            except BaseException:
                self.dirty = self.dirty or was_dirty
                raise
            if checkpoint:
                await manager.create_checkpoint(self.path)
            self._broadcast(save_status(saving=False, saved=not self.dirty))

    # --- changes made elsewhere --------------------------------------------------------------

    def heard(self, seq: int) -> None:
        """Another replica (or this one) stored update ``seq``: apply what is new."""
        if seq <= self.last_seq:
            return
        if seq == self.last_seq + 1 and seq in self._own_seqs:
            # This replica's own update, next in line: nothing to read.
            self._own_seqs.discard(seq)
            self.last_seq = seq
            return
        self._read_again = True
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_stored())

    async def _read_stored(self) -> None:
        while self._read_again and not self.closed:
            self._read_again = False
            try:
                async with self.service.db.connection() as conn:
                    updates = await store.updates_after(
                        conn, self.workspace_id, self.path, self.last_seq
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%r | reading stored updates failed", self)
                return
            self._apply_stored(updates)

    def _apply_stored(self, updates: list[tuple[int, bytes]]) -> None:
        self._applying_stored = True
        try:
            for seq, data in updates:
                if seq not in self._own_seqs:
                    self.yroom.ydoc.apply_update(data)
                self._own_seqs.discard(seq)
                self.last_seq = max(self.last_seq, seq)
        finally:
            self._applying_stored = False

    def _file_event(self, event: dict[str, Any]) -> None:
        kind, path = event.get("type"), event.get("path")
        gone = (kind == "deleted" and (path == self.path or self.path.startswith(f"{path}/"))) or (
            kind == "moved"
            and isinstance(old := event.get("old_path"), str)
            and (old == self.path or self.path.startswith(f"{old}/"))
        )
        if gone:
            self.service.close_room(self, save=False)
        elif kind in {"modified", "created"} and path == self.path:
            self._spawn(self.merge_file())

    async def merge_file(self) -> None:
        """Merge the file's text into the document when it changed since the last save
        (a terminal, another client's PUT), as edits against the saved state, so that the
        typing not saved yet is kept. Done once, by whichever replica gets the lock first."""
        async with self._merge_lock:
            saved = await self._merge_file()
        if saved:
            self._broadcast(save_status(saving=False, saved=not self.dirty))
        self.heard(self.last_seq + 1)

    async def _merge_file(self) -> bool:
        async with self.service.db.transaction() as conn:
            await store.lock_document(conn, self.workspace_id, self.path)
            row = await store.get_document(conn, self.workspace_id, self.path)
            if row is None:
                return False
            try:
                item = await items.get_item(conn, self.workspace_id, self.path, content=True)
                disk = (item["content"] or b"").decode()
            except (NotFound, UnicodeDecodeError):
                return False
            sha = digest(disk)
            if sha == row["saved_sha256"]:
                return True
            if disk == self.text:
                state = self.yroom.ydoc.get_update()
            else:
                update, state = await asyncio.to_thread(diff_update, row["saved_state"], disk)
                await store.append_update(conn, self.workspace_id, self.path, update)
            await store.set_saved(conn, self.workspace_id, self.path, state, sha)
        self.log.info("collaboration %s | merged a change made to the file", self.workspace_id)
        return True

    # --- awareness -----------------------------------------------------------------------------

    def names_allowed(self, names: dict[int, str], username: str) -> bool:
        """Whether a client of ``username`` may send presence showing these names (client id →
        name): its own clients' under its username, and other clients' under the names they
        showed first (y-websocket clients pass on the states they receive). Notes the new
        clients' names when allowed."""
        for client_id, name in names.items():
            known = self._names.get(client_id)
            if known != name and not (known is None and name == username):
                return False
        for client_id, name in names.items():
            self._names.setdefault(client_id, name)
        return True

    def share_awareness(self, message: bytes) -> None:
        """A local client's awareness message: to the other replicas' clients too (the room
        sends it to this replica's)."""
        self._spawn(self.service.share_awareness(self, message))

    def client_left(self, clients: dict[int, int]) -> None:
        """A socket closed: the awareness states its client had (id → clock) are removed,
        for every replica's clients, as y-protocols does for a client that said goodbye."""
        message = awareness_removal(clients)
        self.remote_awareness(message)
        self.share_awareness(message)

    def remote_awareness(self, message: bytes) -> None:
        """An awareness message from another replica's client: to this replica's clients."""
        try:
            update = read_message(message[1:])
            # Checked by the replica that received it.
            for client_id, name in read_awareness(update).names.items():
                self._names.setdefault(client_id, name)
            self.yroom.awareness.apply_awareness_update(update, "remote")
        except Exception:  # pycrdt's decoder raises several kinds; the message is dropped
            self.log.debug("%r | unreadable awareness message from another replica", self)
            return
        self._broadcast(message)

    def _broadcast(self, message: bytes) -> None:
        for client in list(self.clients):
            self._spawn(client.send(message))
