"""The one place that calls the Kubernetes API (the official, blocking ``kubernetes`` client).

Request/response calls run in a bounded thread pool owned by the client (the official client
blocks, and an unbounded number of threads, one per request, is what kubespawner#421 warns
about); the event loop never waits on the network. Watches are long-lived and run in the
threads of their reflectors (``k8s_reflector``), never in the pool, so a slow watch cannot
starve creates and deletes. Objects read back are plain JSON (``dict``), as the API server
sends them: cheaper than model objects and the same across client versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

JsonObject = dict[str, Any]
Kind = Literal["pods", "events"]
T = TypeVar("T")

SINGULAR: dict[Kind, str] = {"pods": "pod", "events": "event"}


class KubeError(Exception):
    """An API call failed: ``status`` is the HTTP status (0 if the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{reason} ({status}): {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def from_status(cls, status: JsonObject) -> KubeError:
        """From a ``Status`` object (an error body, or a watch's ERROR event)."""
        return cls(
            int(status.get("code") or 0),
            str(status.get("reason") or "Error"),
            str(status.get("message") or ""),
        )


class KubeConfigError(KubeError):
    """No usable cluster configuration (in-cluster service account or kubeconfig)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "ConfigError", message)


def _translated(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the client's and urllib3's exceptions into ``KubeError``."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            raise _api_error(e) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(0, "Unreachable", str(e)) from None

    return call


def _api_error(e: ApiException) -> KubeError:
    status = int(e.status or 0)
    try:
        body = json.loads(e.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return KubeError(status, str(body.get("reason") or e.reason), str(body.get("message")))
    return KubeError(status, str(e.reason or "Error"), str(e.body or "")[:500])


def load_api_client(
    kubeconfig: str = "", context: str = "", connections: int = 10
) -> client.ApiClient:
    """An API client: the pod's service account in a cluster, else a kubeconfig (blocking).

    ``kubeconfig`` empty: ``$KUBECONFIG`` or ``~/.kube/config``. ``context`` empty: the
    kubeconfig's current context. ``connections``: the most it keeps open at once (one per
    pool thread and watch: more would be opened and discarded again).
    """
    configuration = client.Configuration()
    try:
        if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or None,
                context=context or None,
                client_configuration=configuration,
                persist_config=False,
            )
    except (config.ConfigException, OSError, ValueError, KeyError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        msg = f"No usable Kubernetes configuration (in-cluster service account or {where}): {e}"
        raise KubeConfigError(msg) from None
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


class WatchStream:
    """One watch request: iterate for ``(type, object)``; ``close`` from any thread ends it."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, JsonObject]]:
        buffer = b""
        try:
            for chunk in self._response.stream(amt=None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise KubeError.from_status(event.get("object") or {})
                    yield str(event["type"]), event["object"]
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            if not self._closed:
                raise KubeError(0, "WatchBroken", str(e)) from None
        finally:
            self._response.release_conn()

    def close(self) -> None:
        """End the watch now, even while another thread is blocked reading it."""
        self._closed = True
        shutdown = getattr(self._response, "shutdown", None)  # urllib3 >= 2.3
        with contextlib.suppress(OSError, AttributeError):
            if callable(shutdown):
                shutdown()
            else:
                sock = getattr(getattr(self._response, "connection", None), "sock", None)
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)


class KubeClient:
    """Namespaced calls for pods and events; async ones run in a bounded pool.

    The ``*_sync`` methods block; use them only in a thread of your own (a reflector's).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        executor: ThreadPoolExecutor,
        request_timeout: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.request_timeout = request_timeout
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._executor = executor

    @classmethod
    async def connect(
        cls,
        namespace: str,
        *,
        kubeconfig: str = "",
        context: str = "",
        threads: int = 8,
        request_timeout: float = 30.0,
    ) -> KubeClient:
        """Load the configuration (in the pool: an exec credential plugin may run)."""
        executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="k8s-api")
        loop = asyncio.get_running_loop()
        try:
            api_client = await loop.run_in_executor(executor, load_api_client, kubeconfig, context)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(api_client, namespace, executor=executor, request_timeout=request_timeout)

    @property
    def server(self) -> str:
        """The API server's URL."""
        return str(self._api_client.configuration.host)

    def close(self) -> None:
        """Stop the pool (calls in progress finish in their threads) and the connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._api_client.close()  # type: ignore[no-untyped-call]

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _method(self, verb: str, kind: Kind) -> Callable[..., Any]:
        method: Callable[..., Any] = getattr(self._core, f"{verb}_namespaced_{SINGULAR[kind]}")
        return method

    def _timeout(self) -> tuple[float, float]:
        return (min(5.0, self.request_timeout), self.request_timeout)

    # --- blocking calls ----------------------------------------------------------------------

    @_translated
    def create_sync(self, kind: Kind, body: Any) -> JsonObject:
        """Create an object; ``KubeError`` 409 if its name is taken."""
        response = self._method("create", kind)(
            self.namespace, body, _preload_content=False, _request_timeout=self._timeout()
        )
        return _json(response)

    @_translated
    def get_sync(self, kind: Kind, name: str) -> JsonObject | None:
        """An object by name; None if there is none."""
        try:
            response = self._method("read", kind)(
                name, self.namespace, _preload_content=False, _request_timeout=self._timeout()
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return _json(response)

    @_translated
    def list_sync(
        self, kind: Kind, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[JsonObject], str]:
        """Matching objects and the list's resourceVersion (to watch from)."""
        response = self._method("list", kind)(
            self.namespace,
            label_selector=label_selector or None,
            field_selector=field_selector or None,
            _preload_content=False,
            _request_timeout=self._timeout(),
        )
        listed = _json(response)
        items = list(listed.get("items") or [])
        return items, str((listed.get("metadata") or {}).get("resourceVersion") or "")

    @_translated
    def delete_sync(self, kind: Kind, name: str, *, grace_period: int | None = None) -> bool:
        """Delete an object; False if it was already gone."""
        try:
            response = self._method("delete", kind)(
                name,
                self.namespace,
                grace_period_seconds=grace_period,
                propagation_policy="Background",
                _preload_content=False,
                _request_timeout=self._timeout(),
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        response.release_conn()
        return True

    @_translated
    def watch_sync(
        self,
        kind: Kind,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
    ) -> WatchStream:
        """Start watching changes after ``resource_version`` (the server ends it after
        ``timeout_seconds``; ``KubeError`` 410 from the stream: list again)."""
        response = self._method("list", kind)(
            self.namespace,
            label_selector=label_selector or None,
            field_selector=field_selector or None,
            resource_version=resource_version or None,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            watch=True,
            _preload_content=False,
            # The read timeout outlasts the server's own end of the watch.
            _request_timeout=(min(5.0, self.request_timeout), timeout_seconds + 30),
        )
        return WatchStream(response)

    # --- the same, off the event loop ------------------------------------------------------

    async def create(self, kind: Kind, body: Any) -> JsonObject:
        """``create_sync`` in the pool."""
        return await self._run(self.create_sync, kind, body)

    async def get(self, kind: Kind, name: str) -> JsonObject | None:
        """``get_sync`` in the pool."""
        return await self._run(self.get_sync, kind, name)

    async def list(
        self, kind: Kind, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[JsonObject], str]:
        """``list_sync`` in the pool."""
        return await self._run(
            self.list_sync, kind, label_selector=label_selector, field_selector=field_selector
        )

    async def delete(self, kind: Kind, name: str, *, grace_period: int | None = None) -> bool:
        """``delete_sync`` in the pool."""
        return await self._run(self.delete_sync, kind, name, grace_period=grace_period)


def _json(response: Any) -> JsonObject:
    try:
        data: JsonObject = json.loads(response.data)
    finally:
        response.release_conn()
    return data
