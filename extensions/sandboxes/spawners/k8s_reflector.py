"""``Reflector``: a local, current copy of one kind of object, kept by list + watch.

As client-go's reflector and kubespawner's ``reflector.py``: one thread per reflector lists
the objects once, then watches for changes from the list's resourceVersion, resuming after
each server timeout and listing again only when the server says the version is too old (410)
or the connection broke. Changes are handed to the event loop, which alone touches the copy,
so nothing here needs a lock. A start waits on these notifications, not on polling: one watch
serves every sandbox of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from extensions.sandboxes.spawners.k8s_client import JsonObject, Kind, KubeClient, KubeError

# What listeners receive: (kind, object), the object None when it was deleted.
Notice = tuple[Kind, JsonObject | None]
Key = Callable[[JsonObject], str | None]


def by_name(obj: JsonObject) -> str | None:
    """The key of an object: its name."""
    name = (obj.get("metadata") or {}).get("name")
    return str(name) if name else None


def by_involved_object(event: JsonObject) -> str | None:
    """The key of a core/v1 Event: the name of the object it is about."""
    name = (event.get("involvedObject") or {}).get("name")
    return str(name) if name else None


class Reflector:
    """Keeps ``objects`` (by key) current and tells listeners about each change."""

    def __init__(
        self,
        kube: KubeClient,
        kind: Kind,
        *,
        log: logging.Logger | logging.LoggerAdapter[Any],
        label_selector: str = "",
        field_selector: str = "",
        key: Key = by_name,
        keep: bool = True,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.log = log
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.key = key
        self.keep = keep
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.objects: dict[str, JsonObject] = {}
        self.error: str | None = None
        """The last error of the list or watch, None once it works again."""
        self._listeners: defaultdict[str, set[asyncio.Queue[Notice]]] = defaultdict(set)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_lock = threading.Lock()
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced: asyncio.Future[None] | None = None
        self._tried: asyncio.Future[None] | None = None

    @property
    def synced(self) -> bool:
        """Whether the copy is current (listed, and watching without error)."""
        return self._synced is not None and self._synced.done() and self.error is None

    @property
    def alive(self) -> bool:
        """Whether its thread runs."""
        return self._thread is not None and self._thread.is_alive()

    async def start(self, within: float = 10.0) -> None:
        """Start the thread; wait (at most ``within`` s) for the first list.

        Raises ``KubeError`` if that list failed; the thread goes on trying.
        """
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._synced = self._loop.create_future()
            self._tried = self._loop.create_future()
            self._thread = threading.Thread(
                target=self._run, name=f"k8s-watch-{self.kind}", daemon=True
            )
            self._thread.start()
        assert self._tried is not None  # noqa: S101
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._tried), within)
        if not self.synced:
            why = self.error or f"listing {self.kind} took more than {within} s"
            raise KubeError(0, "NotSynced", why)

    def stop(self) -> None:
        """End the thread (at once: its watch is closed under it)."""
        self._stopping.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()

    def join(self, timeout: float) -> None:
        """Wait until the thread has ended, at most ``timeout`` s (blocking)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def get(self, key: str) -> JsonObject | None:
        """The current object of that key, if any."""
        return self.objects.get(key)

    def listen(self, key: str, queue: asyncio.Queue[Notice]) -> Callable[[], None]:
        """Put every change of the object ``key`` in ``queue``; returns the way to stop."""
        self._listeners[key].add(queue)

        def forget() -> None:
            listeners = self._listeners.get(key)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    del self._listeners[key]

        return forget

    # --- the event loop's side ------------------------------------------------------------

    def _replace(self, items: list[JsonObject]) -> None:
        fresh = {k: obj for obj in items if (k := self.key(obj)) is not None}
        if self.keep:
            old = self.objects
            self.objects = fresh
            for key in old.keys() - fresh.keys():
                self._notify(key, None)
            for key, obj in fresh.items():
                if _version(old.get(key)) != _version(obj):
                    self._notify(key, obj)
        else:
            for key, obj in fresh.items():
                self._notify(key, obj)
        for future in (self._synced, self._tried):
            if future is not None and not future.done():
                future.set_result(None)

    def _connected(self) -> None:
        self.error = None

    def _apply(self, change: str, obj: JsonObject) -> None:
        key = self.key(obj)
        if key is None:
            return
        if change == "DELETED":
            if self.keep:
                self.objects.pop(key, None)
            self._notify(key, None if self.keep else obj)
        else:
            if self.keep:
                self.objects[key] = obj
            self._notify(key, obj)

    def _failed(self, error: str) -> None:
        self.error = error
        if self._tried is not None and not self._tried.done():
            self._tried.set_result(None)

    def _notify(self, key: str, obj: JsonObject | None) -> None:
        for queue in list(self._listeners.get(key, ())):
            queue.put_nowait((self.kind, obj))

    # --- the thread's side --------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None  # noqa: S101
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stopping.set()

    def _run(self) -> None:
        delay = 0.1
        version = ""
        selectors = {"label_selector": self.label_selector, "field_selector": self.field_selector}
        while not self._stopping.is_set():
            try:
                if not version:
                    items, version = self.kube.list_sync(self.kind, **selectors)
                    self._post(self._replace, items)
                stream = self.kube.watch_sync(
                    self.kind,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                    **selectors,
                )
                with self._stream_lock:
                    self._stream = stream
                if self._stopping.is_set():
                    stream.close()
                self._post(self._connected)
                for change, obj in stream:
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if change != "BOOKMARK":
                        self._post(self._apply, change, obj)
                    delay = 0.1
            except KubeError as e:
                if self._stopping.is_set():
                    break
                if e.status == 410:  # our version is older than what the server keeps
                    self.log.debug("%s watch | %s; listing again", self.kind, e)
                    version = ""
                    continue
                self.log.warning("%s watch | %s; again in %.1f s", self.kind, e, delay)
                self._post(self._failed, str(e))
                version = ""
                self._stopping.wait(delay)
                delay = min(delay * 2, self.max_backoff)
            except Exception as e:  # a bug must not end the watch for good
                self.log.exception("%s watch | unexpected error", self.kind)
                self._post(self._failed, f"{type(e).__name__}: {e}")
                version = ""
                self._stopping.wait(delay)
                delay = min(delay * 2, self.max_backoff)
            finally:
                with self._stream_lock:
                    self._stream = None
        self.log.debug("%s watch | stopped", self.kind)


def _version(obj: JsonObject | None) -> str | None:
    if obj is None:
        return None
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return None if version is None else str(version)
