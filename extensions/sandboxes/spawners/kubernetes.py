"""``KubernetesSpawner``: one pod per sandbox, in a namespace under the restricted Pod Security
Standard, found again by its labels after a platform restart.

The options live in ``k8s_settings``; the pod is built by ``k8s_objects.make_sandbox_pod``
(pure), the API is called only through ``k8s_client`` (a bounded thread pool), and a start
waits on one shared watch of the sandbox pods (``k8s_reflector``), turning pod status and
events into progress and clear failures (``k8s_status``). The agent starts without a token
(``--token-on-first-contact``); the start hands it over (``k8s_handover``: ``PUT /api/token``)
as soon as the pod answers, before it reports the sandbox started. The token is never in the
pod spec, its environment, a command line, or a log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from extensions.sandboxes.spawners.base import (
    AgentEndpoint,
    KnownIds,
    Progress,
    SandboxHandle,
    SpawnerError,
    report_progress,
)
from extensions.sandboxes.spawners.k8s_client import JsonObject, Kind, KubeClient, KubeError
from extensions.sandboxes.spawners.k8s_handover import hand_over
from extensions.sandboxes.spawners.k8s_objects import (
    SANDBOX_LABEL,
    make_sandbox_pod,
    pod_name,
    selector,
)
from extensions.sandboxes.spawners.k8s_reflector import (
    Notice,
    Reflector,
    by_involved_object,
)
from extensions.sandboxes.spawners.k8s_settings import KubernetesSettings
from extensions.sandboxes.spawners.k8s_status import (
    PodState,
    event_note,
    pod_state,
)


class KubernetesSpawner(KubernetesSettings):
    """Starts each sandbox as a pod running the agent image, reached at the pod's IP."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kube: KubeClient | None = None
        self._pods: Reflector | None = None
        self._events: Reflector | None = None
        self._lock = asyncio.Lock()

    # --- the API and the watches ------------------------------------------------------------

    async def _client(self) -> KubeClient:
        async with self._lock:
            if self._kube is None:
                try:
                    self._kube = await KubeClient.connect(
                        self.namespace,
                        kubeconfig=self.kubeconfig,
                        context=self.context,
                        threads=self.api_threads,
                        request_timeout=self.request_timeout,
                    )
                except KubeError as e:
                    raise SpawnerError(str(e)) from e
                self.log.info(
                    "Kubernetes sandboxes | API server %s, namespace %s, %d API threads",
                    self._kube.server,
                    self.namespace,
                    self.api_threads,
                )
            return self._kube

    async def _watching(self) -> Reflector:
        """The pod reflector (and the event one), started; a failing watch is logged."""
        kube = await self._client()
        async with self._lock:
            if self._pods is None:
                self._pods = Reflector(
                    kube, "pods", label_selector=selector(self.match_labels), log=self.log
                )
                if self.events_enabled:
                    self._events = Reflector(
                        kube,
                        "events",
                        field_selector="involvedObject.kind=Pod",
                        key=by_involved_object,
                        keep=False,
                        log=self.log,
                    )
            reflectors = [r for r in (self._pods, self._events) if r is not None]
        for reflector in reflectors:
            try:
                await reflector.start(within=min(10.0, self.request_timeout))
            except KubeError as e:
                self.log.warning("Kubernetes sandboxes | %s watch not ready: %s", reflector.kind, e)
        assert self._pods is not None  # noqa: S101
        return self._pods

    async def check(self) -> None:
        """Fail if the configuration cannot work (no cluster config, no access to pods);
        an API server that does not answer yet is only logged (the watches keep trying)."""
        kube = await self._client()
        try:
            await kube.list("pods", label_selector=selector(self.match_labels))
        except KubeError as e:
            if e.status in {401, 403, 404}:
                msg = (
                    f"The platform cannot list pods in namespace {self.namespace} ({e}). Check "
                    "that the namespace exists and that the platform's ServiceAccount has the "
                    "Role of k8s/base/rbac.yaml there."
                )
                raise SpawnerError(msg) from e
            self.log.warning("Kubernetes sandboxes | API not answering yet: %s", e)
            return
        await self._watching()

    async def close(self) -> None:
        """Stop the watches and the API threads; sandboxes keep running."""
        reflectors = [r for r in (self._pods, self._events) if r is not None]
        self._pods = self._events = None
        for reflector in reflectors:
            reflector.stop()
        for reflector in reflectors:
            await asyncio.to_thread(reflector.join, 5.0)
        if self._kube is not None:
            self._kube.close()
            self._kube = None

    # --- start ---------------------------------------------------------------------------

    async def start(
        self,
        sandbox_id: str,
        token: str,
        progress: Progress,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> SandboxHandle:
        """Create the sandbox's pod; once it is ready (the agent listens), hand the agent its
        token and return. Fail with what the scheduler and kubelet said, or with who claimed
        the agent first, having deleted the pod."""
        try:
            name = pod_name(sandbox_id)
            object_labels = self.object_labels(sandbox_id, labels)
            pod = make_sandbox_pod(self.pod_options(sandbox_id, object_labels))
        except ValueError as e:
            raise SpawnerError(str(e)) from e
        kube = await self._client()
        pods = await self._watching()
        started = time.monotonic()
        queue: asyncio.Queue[Notice] = asyncio.Queue()
        stop_listening = [pods.listen(name, queue)]
        if self._events is not None:
            stop_listening.append(self._events.listen(name, queue))
        made: list[Kind] = []
        try:
            await report_progress(progress, 10, "Creating the sandbox pod")
            created = await self._create(kube, "pods", pod, sandbox_id)
            made.append("pods")
            self.log.info("sandbox %s | pod %s/%s created", sandbox_id, self.namespace, name)
            state, uid = await self._wait_ready(kube, sandbox_id, created, queue, progress)
            await hand_over(
                sandbox_id,
                f"http://{state.ip}:{state.port or self.agent_port}/api/token",
                token,
                started + self.launch_timeout,
                image=self.image,
                launch_timeout=self.launch_timeout,
                log=self.log,
            )
        except BaseException as e:
            if made:
                try:
                    await asyncio.shield(self._remove(kube, sandbox_id, made))
                except SpawnerError as failed:
                    self.log.warning("sandbox %s | cleaning up: %s", sandbox_id, failed)
            if isinstance(e, KubeError):
                msg = f"Could not start sandbox {sandbox_id}: {e}"
                raise SpawnerError(msg) from e
            raise
        finally:
            for stop in stop_listening:
                stop()
        self.log.info(
            "sandbox %s | ready on node %s in %.2fs",
            sandbox_id,
            state.node,
            time.monotonic() - started,
        )
        return self._handle(sandbox_id, state, uid)

    async def _create(self, kube: KubeClient, kind: Kind, body: Any, sandbox_id: str) -> JsonObject:
        try:
            return await kube.create(kind, body)
        except KubeError as e:
            if e.status == 409:
                msg = f"Sandbox {sandbox_id} already exists ({kind} {pod_name(sandbox_id)})."
                raise SpawnerError(msg) from e
            raise

    async def _wait_ready(
        self,
        kube: KubeClient,
        sandbox_id: str,
        pod: JsonObject,
        queue: asyncio.Queue[Notice],
        progress: Progress,
    ) -> tuple[PodState, str]:
        """Follow the pod through the watch until it is ready, fails, or time runs out.

        While the watch is broken (it reconnects by itself), the pod is read every
        ``watch_fallback_interval`` seconds instead, so a start does not depend on it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.launch_timeout
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        shown_percent, shown_message = 10, "Creating the sandbox pod"
        warning: str | None = None

        async def tell(percent: int, message: str, *, problem: bool) -> None:
            # Forward only (a late event never takes the progress back), and every new problem.
            nonlocal shown_percent, shown_message
            if percent > shown_percent or (problem and message != shown_message):
                shown_percent, shown_message = max(percent, shown_percent), message
                await report_progress(progress, shown_percent, message)

        while True:
            state = pod_state(pod, self.fail_fast_reasons)
            if state.failure is not None:
                raise SpawnerError(state.failure)
            if state.ready and state.ip and state.port:
                await report_progress(progress, max(50, shown_percent), "Sandbox pod ready")
                return state, uid
            problem = state.problem is not None
            await tell(state.percent, state.problem or state.message, problem=problem)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SpawnerError(self._late(state, warning))
            try:
                kind, obj = await asyncio.wait_for(
                    queue.get(), min(remaining, self.watch_fallback_interval)
                )
            except TimeoutError:
                if self._pods is not None and self._pods.synced:
                    continue
                kind, obj = "pods", await kube.get("pods", pod_name(sandbox_id))
            if kind == "pods":
                if obj is None:
                    msg = "The sandbox pod was deleted while it was starting."
                    raise SpawnerError(msg)
                if not uid or (obj.get("metadata") or {}).get("uid") == uid:
                    pod = obj
                continue
            if obj is None or (obj.get("involvedObject") or {}).get("uid") not in {None, uid}:
                continue
            note = event_note(obj)
            if note is None:
                continue
            if note.warning:
                warning = note.message
                self.log.info("sandbox %s | %s", sandbox_id, note.message)
            await tell(note.percent or 0, note.message, problem=note.warning)

    def _late(self, state: PodState, warning: str | None) -> str:
        why = state.problem or warning or f"it was at: {state.message}"
        pods = self._pods
        if pods is not None and pods.error:
            why += f"; watching pods fails: {pods.error}"
        return f"The sandbox was not ready within {self.launch_timeout:.0f} s ({why})."

    def _handle(self, sandbox_id: str, state: PodState, uid: str) -> SandboxHandle:
        assert state.ip is not None  # noqa: S101
        endpoint = AgentEndpoint(host=state.ip, port=state.port or self.agent_port)
        data = {"pod": pod_name(sandbox_id), "namespace": self.namespace, "uid": uid,
                "node": state.node}  # fmt: skip
        return SandboxHandle(sandbox_id, endpoint, data)

    # --- stop, poll, find, reap ------------------------------------------------------------

    async def stop(self, handle: SandboxHandle, *, now: bool = False) -> None:
        """Delete the pod (its agent gets ``stop_grace_period`` s, none with ``now``)."""
        kube = await self._client()
        await self._remove(kube, handle.sandbox_id, ["pods"], now=now)

    async def _remove(
        self, kube: KubeClient, sandbox_id: str, kinds: list[Kind], *, now: bool = False
    ) -> None:
        name = pod_name(sandbox_id)
        try:
            for kind in kinds:
                grace = (0 if now else self._grace_seconds) if kind == "pods" else None
                if await kube.delete(kind, name, grace_period=grace):
                    self.log.info("sandbox %s | deleted %s %s", sandbox_id, kind[:-1], name)
        except KubeError as e:
            msg = f"Could not delete sandbox {sandbox_id}: {e}"
            raise SpawnerError(msg) from e

    async def poll(self, handle: SandboxHandle) -> bool:
        """Whether the pod still runs (from the watch; from the API when the watch has not
        seen it). An API that does not answer counts as running: the agent's own health
        check decides then."""
        name = pod_name(handle.sandbox_id)
        pods = await self._watching()
        pod = pods.get(name) if pods.synced else None
        if pod is None:
            kube = await self._client()
            try:
                pod = await kube.get("pods", name)
            except KubeError as e:
                self.log.warning("sandbox %s | cannot poll its pod: %s", handle.sandbox_id, e)
                return True
            if pod is None:
                return False
        uid = handle.state.get("uid")
        if uid and (pod.get("metadata") or {}).get("uid") != uid:
            return False  # another pod of the same name: ours is gone
        return pod_state(pod).running

    async def find_running(self) -> list[SandboxHandle]:
        """The running sandbox pods of this installation (listed by label)."""
        kube = await self._client()
        try:
            items, _ = await kube.list("pods", label_selector=selector(self.match_labels))
        except KubeError as e:
            msg = f"Could not list sandbox pods: {e}"
            raise SpawnerError(msg) from e
        handles = []
        for pod in items:
            sandbox_id = _sandbox_id(pod)
            state = pod_state(pod)
            if sandbox_id and state.phase == "Running" and not state.deleting and state.ip:
                uid = str(pod["metadata"].get("uid") or "")
                handles.append(self._handle(sandbox_id, state, uid))
        return handles

    async def reap(self, known_ids: KnownIds) -> list[str]:
        """Delete the pods of sandboxes the platform does not know, whatever their phase (a pod
        that never got ready too); return their ids.

        ``known_ids`` is awaited after the listing, as ``Spawner.reap`` requires: a start
        records its row before it creates the pod.
        """
        kube = await self._client()
        try:
            pods, _ = await kube.list("pods", label_selector=selector(self.match_labels))
        except KubeError as e:
            msg = f"Could not list sandbox pods: {e}"
            raise SpawnerError(msg) from e
        listed = {sandbox_id for obj in pods if (sandbox_id := _sandbox_id(obj))}
        orphans = sorted(listed - set(await known_ids()))
        for sandbox_id in orphans:
            self.log.info("sandbox %s | not known to the platform: removing it", sandbox_id)
            await self._remove(kube, sandbox_id, ["pods"])
        return orphans


def _sandbox_id(obj: JsonObject) -> str | None:
    """The sandbox a pod belongs to, from its label."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    sandbox_id = labels.get(SANDBOX_LABEL)
    return str(sandbox_id) if sandbox_id else None
