"""KubernetesSpawner: the pure pod builder, then the spawner against a Kubernetes API server.

The server is ``tests/fake_kube.FakeCluster`` (real REST paths and JSON, watches, RBAC and
Pod Security admission, pods run as real local agents). With ``KUBE_TEST_CONTEXT`` set to a
kubeconfig context (e.g. ``kind-kind``), the same tests run against that cluster instead,
skipping those that need the fake's hooks; see docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.websocket import websocket_connect
from traitlets import TraitError

from extensions.sandboxes.agent_client import AgentClient
from extensions.sandboxes.app import SandboxesApp
from extensions.sandboxes.spawners.base import SandboxHandle, SpawnerError
from extensions.sandboxes.spawners.k8s_client import KubeClient, KubeError
from extensions.sandboxes.spawners.k8s_objects import (
    SANDBOX_LABEL,
    WORKSPACE_LABEL,
    PodOptions,
    make_sandbox_pod,
    pod_name,
    sandbox_labels,
    to_dict,
)
from extensions.sandboxes.spawners.k8s_status import event_note, pod_state
from extensions.sandboxes.spawners.kubernetes import KubernetesSpawner
from platform_server.app import PlatformApp
from tests.client import Client
from tests.fake_kube import FakeCluster, restricted_violations, role_rules
from tests.test_restart import read_until
from tests.waiting import until

REPO = Path(__file__).resolve().parents[1]
RBAC = REPO / "k8s" / "base" / "rbac.yaml"
REAL_CONTEXT = os.environ.get("KUBE_TEST_CONTEXT", "")
NAMESPACE = os.environ.get("KUBE_TEST_NAMESPACE", "code-execution-sandboxes")
IMAGE = os.environ.get("KUBE_TEST_IMAGE", "code-execution-platform/kernel:0.1.0")
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
TOKEN = "t0ken-for-the-kubernetes-spawner-tests"
fake_only = pytest.mark.skipif(
    bool(REAL_CONTEXT),
    reason="against a real cluster (KUBE_TEST_CONTEXT): needs the fake API server's hooks",
)


# --- fixtures -------------------------------------------------------------------------------


@dataclass
class Kube:
    """Where the tests' sandboxes go: the spawner's traits, and the fake cluster if any."""

    config: dict[str, Any]
    cluster: FakeCluster | None

    @property
    def fake(self) -> FakeCluster:
        assert self.cluster is not None
        return self.cluster


@pytest.fixture
def kube(jp_asyncio_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> Iterator[Kube]:
    """A fake cluster enforcing k8s/base's Role and the restricted standard, or the real one."""
    instance = f"test-{secrets.token_hex(4)}"
    if REAL_CONTEXT:
        config = {"context": REAL_CONTEXT, "namespace": NAMESPACE, "image": IMAGE}
        yield Kube({**config, "instance": instance}, None)
        return
    cluster = FakeCluster(
        tmp_path / "cluster",
        namespaces={NAMESPACE: RESTRICTED, "other": {}},
        rules=role_rules(RBAC, "sandbox-manager"),
    )
    jp_asyncio_loop.run_until_complete(cluster.start())
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    cluster.write_kubeconfig(tmp_path / "admin-kubeconfig", admin=True)
    config = {"kubeconfig": str(kubeconfig), "namespace": NAMESPACE, "image": IMAGE}
    yield Kube({**config, "instance": instance}, cluster)
    jp_asyncio_loop.run_until_complete(cluster.stop())


SpawnerFactory = Callable[..., KubernetesSpawner]


@pytest.fixture
def make_spawner(
    kube: Kube, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[SpawnerFactory]:
    """Spawners of the test's installation; everything they made is removed afterwards."""
    made: list[KubernetesSpawner] = []

    def make(**overrides: Any) -> KubernetesSpawner:
        spawner = KubernetesSpawner(**{**kube.config, "start_timeout": 60.0, **overrides})
        made.append(spawner)
        return spawner

    yield make

    async def clean_up() -> None:
        if made:
            await made[0].reap(known([]))
        for spawner in made:
            await spawner.close()

    jp_asyncio_loop.run_until_complete(clean_up())


@pytest.fixture
def api(kube: Kube, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[KubeClient]:
    """A client of the sandbox namespace for looking at what the spawner made."""
    settings = {k: kube.config[k] for k in ("kubeconfig", "context") if k in kube.config}
    if kube.cluster is not None:  # the tests' own rights, not the platform's Role
        settings["kubeconfig"] = str(Path(settings["kubeconfig"]).with_name("admin-kubeconfig"))
    client = jp_asyncio_loop.run_until_complete(KubeClient.connect(NAMESPACE, **settings))
    yield client
    client.close()


class Progress:
    """A progress callback that remembers what it was told."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, str]] = []

    async def __call__(self, percent: int, message: str) -> None:
        self.reports.append((percent, message))


async def gone(api: KubeClient, sandbox_id: str) -> bool:
    """Whether the sandbox's pod no longer exists."""
    return await api.get("pods", pod_name(sandbox_id)) is None


def new_id() -> str:
    return str(uuid.uuid4())


def known(ids: list[str]) -> Callable[[], Awaitable[list[str]]]:
    """What ``reap`` asks the platform: here, always ``ids``."""

    async def known_ids() -> list[str]:
        return ids

    return known_ids


# --- the pure builder ---------------------------------------------------------------------


def options(**overrides: Any) -> PodOptions:
    labels = sandbox_labels("default", "abc123")
    return PodOptions(**{"sandbox_id": "abc123", "namespace": NAMESPACE, "image": IMAGE,
                         "labels": labels, **overrides})  # fmt: skip


def test_pod_meets_the_restricted_standard() -> None:
    pod = to_dict(make_sandbox_pod(options()))
    spec = pod["spec"]
    (container,) = spec["containers"]
    context, pod_context = container["securityContext"], spec["securityContext"]

    assert pod["metadata"]["name"] == "sandbox-abc123"
    assert pod_context["runAsNonRoot"] is True
    assert (pod_context["runAsUser"], pod_context["runAsGroup"]) == (1000, 1000)
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert not {"hostNetwork", "hostPID", "hostIPC", "hostUsers"} & set(spec)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/workspace": "workspace", "/tmp": "tmp"}  # noqa: S108
    assert volumes["workspace"]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "256Mi"}
    assert container["resources"]["requests"] == {
        "cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1536Mi"
    }  # fmt: skip
    assert container["resources"]["limits"] == container["resources"]["requests"]
    assert container["ports"] == [{"name": "agent", "containerPort": 8800, "protocol": "TCP"}]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "agent"}
    host = "0.0.0.0"  # noqa: S104
    assert container["args"][-7:] == ["--port", "8800", "--host", host, "--root", "/workspace",
                                      "--token-on-first-contact"]  # fmt: skip
    # The workspace (its working folder) is not on the agent's import path.
    assert container["args"][:5] == ["python", "-s", "-P", "-m", "kernel_image"]
    assert "command" not in container  # the image's entrypoint (tini) runs the args
    assert restricted_violations(pod) == []
    for version in ("1.29", "1.37"):
        kubernetes_validate.validate(pod, version, strict=True)


def test_the_stop_grace_period_rounds_up_to_whole_seconds_in_the_pod() -> None:
    spawner = KubernetesSpawner(image=IMAGE, stop_grace_period=2.5)
    options = spawner.pod_options("abc", spawner.object_labels("abc", None))
    assert to_dict(make_sandbox_pod(options))["spec"]["terminationGracePeriodSeconds"] == 3
    assert KubernetesSpawner(image=IMAGE, start_timeout=7.0).launch_timeout == 7.0


def test_pod_options_reach_the_pod() -> None:
    toleration = {"key": "sandboxes", "operator": "Exists", "effect": "NoSchedule"}
    pod = to_dict(
        make_sandbox_pod(
            options(
                runtime_class_name="gvisor",
                priority_class_name="sandboxes",
                node_selector={"pool": "sandboxes"},
                tolerations=(toleration,),
                image_pull_secrets=("registry",),
                user_namespaces=True,
                cpu_limit="2",
                memory_limit="1Gi",
                disk_limit="5Gi",
                ephemeral_storage_limit="8Gi",
                annotations={"example.com/team": "a"},
                agent_port=9000,
            )
        )
    )
    spec = pod["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["priorityClassName"] == "sandboxes"
    assert spec["nodeSelector"] == {"pool": "sandboxes"}
    assert spec["tolerations"] == [toleration]
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["hostUsers"] is False
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "8Gi"}
    assert {"name": "workspace", "emptyDir": {"sizeLimit": "5Gi"}} in spec["volumes"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "a"}
    assert spec["containers"][0]["ports"][0]["containerPort"] == 9000
    assert "9000" in spec["containers"][0]["args"]
    assert restricted_violations(pod) == []
    kubernetes_validate.validate(pod, "1.37", strict=True)


def test_the_pod_has_no_token_nor_secret_reference() -> None:
    pod = to_dict(make_sandbox_pod(options()))
    (container,) = pod["spec"]["containers"]
    assert "AGENT_TOKEN" not in json.dumps(pod)
    assert "secretKeyRef" not in json.dumps(pod)
    assert all("valueFrom" not in e for e in container["env"])
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v or "projected" in v]
    assert "envFrom" not in container
    # The agent waits for the platform to hand its token over.
    assert "--token-on-first-contact" in container["args"]


def test_the_builder_is_pure() -> None:
    assert to_dict(make_sandbox_pod(options())) == to_dict(make_sandbox_pod(options()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options().image = "other"  # type: ignore[misc]


@pytest.mark.parametrize("bad", ["", "UPPER", "under_score", "-dash", "x" * 56, "a/b"])
def test_bad_sandbox_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Invalid sandbox id"):
        pod_name(bad)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TraitError):
        KubernetesSpawner(memory_limit="lots")
    with pytest.raises(TraitError):
        KubernetesSpawner(instance="not a label")
    with pytest.raises(TraitError):
        KubernetesSpawner(image_pull_policy="Sometimes")
    with pytest.raises(ValueError, match="toleration"):
        make_sandbox_pod(options(tolerations=({"key": "a", "bogus": 1},)))


def test_kubernetes_is_a_spawner_alias() -> None:
    app = SandboxesApp()
    app.spawner_class = "kubernetes"
    assert app.spawner_class is KubernetesSpawner
    app.spawner_class = "local"
    assert app.spawner_class.__name__ == "LocalSpawner"


def pod_with(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "sandbox-x", "uid": "u"},
        "spec": {"containers": [{"name": "agent", "image": "img:1",
                                 "ports": [{"name": "agent", "containerPort": 8800}]}]},
        "status": status,
    }  # fmt: skip


def test_pod_status_in_words() -> None:
    unschedulable = pod_with(phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient cpu."}])  # fmt: skip
    state = pod_state(unschedulable)
    assert state.failure is None
    assert (
        state.problem
        == "No node can run the sandbox yet: 0/3 nodes are available: 3 Insufficient cpu."
    )
    assert pod_state(unschedulable, ["Unschedulable"]).failure is not None

    def waiting(reason: str) -> dict[str, Any]:
        return pod_with(phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}],
                        containerStatuses=[{"name": "agent", "state": {"waiting": {
                            "reason": reason, "message": "rpc error: not found"}}}])  # fmt: skip

    pull = pod_state(waiting("ImagePullBackOff")).failure
    assert pull is not None
    assert "img:1 could not be pulled (ImagePullBackOff): rpc error" in pull
    config = pod_state(waiting("CreateContainerConfigError")).failure
    assert config == (
        "The sandbox container could not start (CreateContainerConfigError): rpc error: not found"
    )
    assert pod_state(waiting("ErrImagePull"), []).problem is not None  # not fatal if not listed
    assert pod_state(waiting("ContainerCreating")).message == "Creating the sandbox container"

    killed = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    oom = pod_with(phase="Failed", containerStatuses=[{"name": "agent", "state": killed}])
    assert "ran out of memory" in (pod_state(oom).failure or "")
    assert not pod_state(oom).running
    evicted = pod_with(
        phase="Failed", reason="Evicted", message="The node was low on resource: memory."
    )
    assert pod_state(evicted).failure == (
        "The sandbox pod failed (Evicted): The node was low on resource: memory."
    )
    ready = pod_with(phase="Running", podIP="10.1.2.3",
                     conditions=[{"type": "Ready", "status": "True"}])  # fmt: skip
    state = pod_state(ready)
    assert (state.ready, state.ip, state.port, state.running) == (True, "10.1.2.3", 8800, True)
    deleting = {**ready, "metadata": {"name": "x", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert not pod_state(deleting).running

    assert event_note({"type": "Normal", "reason": "Pulling", "message": "x"}) is not None
    warning = event_note({"type": "Warning", "reason": "FailedScheduling", "message": "0/1 nodes"})
    assert warning is not None
    assert (warning.warning, warning.message) == (True, "FailedScheduling: 0/1 nodes")


# --- against the API server ------------------------------------------------------------------


async def test_start_reach_and_stop(
    make_spawner: SpawnerFactory, api: KubeClient, kube: Kube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    spawner = make_spawner()
    await spawner.check()
    sandbox_id, workspace = new_id(), new_id()
    progress = Progress()
    before = len(kube.cluster.requests) if kube.cluster else 0

    handle = await spawner.start(sandbox_id, TOKEN, progress, labels={"workspace-id": workspace})
    after = len(kube.cluster.requests) if kube.cluster else 0

    name = pod_name(sandbox_id)
    assert handle.endpoint.host
    assert handle.endpoint.port
    if not REAL_CONTEXT:
        assert handle.endpoint.host == "127.0.0.1"
    assert handle.state["pod"] == name
    percents = [p for p, _ in progress.reports]
    assert percents == sorted(percents)
    assert progress.reports[0] == (10, "Creating the sandbox pod")
    client = AgentClient(handle.endpoint, TOKEN)
    try:
        assert (await client.health())["status"] == "ok"
    finally:
        client.close()

    pod = await api.get("pods", name)
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert labels[SANDBOX_LABEL] == sandbox_id
    assert labels[WORKSPACE_LABEL] == workspace
    assert labels["app.kubernetes.io/instance"] == kube.config["instance"]
    assert TOKEN not in json.dumps(pod)
    assert TOKEN not in caplog.text
    if kube.cluster:  # the start waited on the watch: it never asked for its pod by name
        during = kube.cluster.requests[before:after]
        assert not [
            r for r in during if r[:2] == ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
        ]

    assert await spawner.poll(handle)
    await spawner.stop(handle)
    await until(lambda: gone(api, sandbox_id), "the pod is gone", within=20)
    await until(lambda: _not(spawner.poll(handle)), "the sandbox has ended", within=20)
    await spawner.stop(handle)  # again: nothing left, no error
    assert TOKEN not in caplog.text


async def _not(result: Awaitable[bool]) -> bool:
    return not await result


async def test_concurrent_starts_share_one_watch(make_spawner: SpawnerFactory, kube: Kube) -> None:
    spawner = make_spawner()
    first = await spawner.start(new_id(), TOKEN, Progress())
    watches = _watch_requests(kube)
    handles = await asyncio.gather(*(spawner.start(new_id(), TOKEN, Progress()) for _ in range(3)))
    assert len({(h.endpoint.host, h.endpoint.port, h.sandbox_id) for h in handles}) == 3
    assert _watch_requests(kube) == watches  # no watch (nor poll) per pod
    for handle in [first, *handles]:
        await spawner.stop(handle)


def _watch_requests(kube: Kube) -> int | None:
    if kube.cluster is None:
        return None
    return sum(1 for r in kube.cluster.requests if r[2].get("watch") in {"true", "1"})


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        pytest.param(
            {"image": "registry.invalid/kernel:0.1.0"},
            "The sandbox image registry.invalid/kernel:0.1.0 could not be pulled (ErrImagePull)",
            id="ErrImagePull",
        ),
        pytest.param(
            {"image": "registry.invalid/kernel:0.1.0", "fail_fast_reasons": ["ImagePullBackOff"]},
            "could not be pulled (ImagePullBackOff)",
            id="ImagePullBackOff",
        ),
        pytest.param(
            {"node_selector": {"example.com/gpu": "a100"}, "start_timeout": 2.0},
            "The sandbox was not ready within 2 s (No node can run the sandbox yet: 0/1 nodes "
            "are available: 1 node(s) didn't match Pod's node affinity/selector.",
            id="Unschedulable-timeout",
        ),
        pytest.param(
            {"node_selector": {"example.com/gpu": "a100"}, "fail_fast_reasons": ["Unschedulable"]},
            "No node can run the sandbox: 0/1 nodes are available",
            id="Unschedulable-fail-fast",
        ),
        pytest.param(
            {"memory_limit": "16Mi", "memory_request": "16Mi"},
            "The sandbox ran out of memory while starting (OOMKilled)",
            id="OOMKilled",
        ),
    ],
)
async def test_failed_starts_say_why_and_leave_nothing(
    make_spawner: SpawnerFactory, api: KubeClient, settings: dict[str, Any], words: str
) -> None:
    spawner = make_spawner(**settings)
    sandbox_id = new_id()
    progress = Progress()
    with pytest.raises(SpawnerError) as failed:
        await spawner.start(sandbox_id, TOKEN, progress)
    if REAL_CONTEXT:  # a real kubelet's words differ in their details
        words = words.split(":")[0].split(" (")[0]
    assert words in str(failed.value)
    assert TOKEN not in str(failed.value)
    await until(lambda: gone(api, sandbox_id), "the pod is gone", within=20)


async def test_cancelled_start_leaves_nothing(
    make_spawner: SpawnerFactory, api: KubeClient
) -> None:
    spawner = make_spawner(node_selector={"example.com/gpu": "a100"})
    sandbox_id = new_id()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await spawner.start(sandbox_id, TOKEN, Progress())
    await until(lambda: gone(api, sandbox_id), "the pod is gone", within=20)


async def agent_request(
    host: str, port: int, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One request to an agent (``token``: its Authorization); its status and JSON body."""
    http = SimpleAsyncHTTPClient(force_instance=True)
    try:
        response = await http.fetch(
            f"http://{host}:{port}{path}",
            method=method,
            body=None if body is None else json.dumps(body),
            headers={"Authorization": f"token {token}"} if token else {},
            raise_error=False,
            request_timeout=10,
        )
    finally:
        http.close()
    return response.code, json.loads(response.body) if response.body else None


@fake_only
async def test_the_token_is_handed_over_once_and_never_in_the_pod(
    make_spawner: SpawnerFactory, kube: Kube
) -> None:
    refused: list[tuple[int, Any]] = []

    async def first_look(namespace: str, name: str, port: int) -> None:
        # Before the hand-over, the agent answers nothing but PUT /api/token.
        for path in ("/api/health", "/api/terminals", "/api/files/x", "/api/kernels"):
            refused.append(await agent_request("127.0.0.1", port, "GET", path, token=TOKEN))

    kube.fake.on_listening = first_look
    spawner = make_spawner()
    handle = await spawner.start(new_id(), TOKEN, Progress())
    assert refused
    assert {code for code, _ in refused} == {503}
    assert all("no token yet" in body["message"] for _, body in refused)
    host, port = handle.endpoint.host or "", handle.endpoint.port or 0
    # Another replica, or a retry after a lost answer: the same token again changes nothing.
    assert await agent_request(host, port, "PUT", "/api/token", {"token": TOKEN}) == (204, None)
    code, body = await agent_request(host, port, "PUT", "/api/token", {"token": "x" * 32})
    assert code == 409
    assert body == {"message": "the agent has another token already"}
    assert (await agent_request(host, port, "GET", "/api/health", token=TOKEN))[0] == 200
    assert (await agent_request(host, port, "GET", "/api/health", token="x" * 32))[0] == 401
    # The pod's process (its init, in a real pod) never had the token in its environment.
    container = kube.fake.containers[(NAMESPACE, handle.state["pod"])]
    environ = await asyncio.to_thread(Path(f"/proc/{container.process.pid}/environ").read_bytes)
    assert TOKEN.encode() not in environ
    assert b"AGENT_TOKEN" not in environ
    await spawner.stop(handle)


@fake_only
async def test_a_sandbox_claimed_first_by_someone_else_is_deleted(
    make_spawner: SpawnerFactory, kube: Kube, api: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    claims: list[int] = []

    async def someone_else(namespace: str, name: str, port: int) -> None:
        body = {"token": "someone-else-was-first-0123456789"}
        claims.append((await agent_request("127.0.0.1", port, "PUT", "/api/token", body))[0])

    kube.fake.on_listening = someone_else
    spawner = make_spawner()
    sandbox_id = new_id()
    with pytest.raises(SpawnerError) as failed:
        await spawner.start(sandbox_id, TOKEN, Progress())
    assert claims == [204]
    assert "was claimed by someone else" in str(failed.value)
    assert "NetworkPolicy" in str(failed.value)
    assert TOKEN not in str(failed.value)
    assert TOKEN not in caplog.text
    await until(lambda: gone(api, sandbox_id), "the claimed pod is gone", within=20)


async def test_a_taken_name_is_refused_and_kept(
    make_spawner: SpawnerFactory, api: KubeClient, kube: Kube
) -> None:
    sandbox_id = new_id()
    labels = sandbox_labels(kube.config["instance"], sandbox_id)
    taken = make_sandbox_pod(options(sandbox_id=sandbox_id, labels=labels))
    uid = (await api.create("pods", taken))["metadata"]["uid"]
    spawner = make_spawner()
    with pytest.raises(SpawnerError, match="already exists"):
        await spawner.start(sandbox_id, TOKEN, Progress())
    kept = await api.get("pods", pod_name(sandbox_id))
    assert kept is not None
    assert kept["metadata"]["uid"] == uid


async def test_a_restarted_platform_finds_its_sandboxes(make_spawner: SpawnerFactory) -> None:
    first = make_spawner()
    started = [await first.start(new_id(), TOKEN, Progress()) for _ in range(2)]
    await first.close()  # the platform process ends; its pods do not

    again = make_spawner()
    found = {h.sandbox_id: h for h in await again.find_running()}
    assert set(found) == {h.sandbox_id for h in started}
    for handle in started:
        assert found[handle.sandbox_id].endpoint == handle.endpoint
        assert found[handle.sandbox_id].state["uid"] == handle.state["uid"]
        assert await again.poll(found[handle.sandbox_id])
        client = AgentClient(found[handle.sandbox_id].endpoint, TOKEN)
        try:
            assert (await client.health())["status"] == "ok"
        finally:
            client.close()
    other = make_spawner(instance="someone-else")
    assert await other.find_running() == []  # another installation's sandboxes are not ours


async def test_reap_removes_what_the_platform_does_not_know(
    make_spawner: SpawnerFactory, api: KubeClient
) -> None:
    spawner = make_spawner()
    known_handle = await spawner.start(new_id(), TOKEN, Progress())
    unknown_handle = await spawner.start(new_id(), TOKEN, Progress())
    # A pod that never got ready (no node fits it).
    lonely = new_id()
    labels = sandbox_labels(spawner.instance, lonely)
    unready = options(sandbox_id=lonely, labels=labels, node_selector={"example.com/gpu": "a"})
    await api.create("pods", make_sandbox_pod(unready))

    reaped = await spawner.reap(known([known_handle.sandbox_id]))
    assert reaped == sorted([unknown_handle.sandbox_id, lonely])
    await until(lambda: gone(api, unknown_handle.sandbox_id), "the unknown pod is gone", within=20)
    await until(lambda: gone(api, lonely), "the unready pod is gone", within=20)
    assert await spawner.poll(known_handle)
    assert [h.sandbox_id for h in await spawner.find_running()] == [known_handle.sandbox_id]


async def test_reap_lists_before_it_asks_what_is_known(make_spawner: SpawnerFactory) -> None:
    spawner = make_spawner()
    rows: list[str] = []

    async def rows_then_a_start() -> list[str]:
        # The rows as read now; right after, another replica records a sandbox and starts it.
        read = list(rows)
        rows.append(new_id())
        await spawner.start(rows[-1], TOKEN, Progress())
        return read

    assert await spawner.reap(rows_then_a_start) == []
    assert [h.sandbox_id for h in await spawner.find_running()] == rows


@fake_only
async def test_poll_sees_a_sandbox_die(make_spawner: SpawnerFactory, kube: Kube) -> None:
    spawner = make_spawner()
    handle = await spawner.start(new_id(), TOKEN, Progress())
    assert await spawner.poll(handle)
    await kube.fake.oom_kill(NAMESPACE, pod_name(handle.sandbox_id))
    await until(lambda: _not(spawner.poll(handle)), "the sandbox has ended", within=20)
    assert handle.sandbox_id not in {h.sandbox_id for h in await spawner.find_running()}


@fake_only
async def test_the_watch_survives_an_expired_version(
    make_spawner: SpawnerFactory, kube: Kube
) -> None:
    spawner = make_spawner()
    first = await spawner.start(new_id(), TOKEN, Progress())
    lists_before = _lists(kube)
    kube.fake.compact()  # the server forgets the history the watch would resume from...
    for watcher in list(kube.fake.watchers):
        watcher.queue.put_nowait(None)  # ...and ends the watches (as at their timeout)
    # 410 Gone: listed again
    await until(lambda: _lists(kube) > lists_before, "the watch lists again", within=20)
    second = await spawner.start(new_id(), TOKEN, Progress())
    assert await spawner.poll(first)
    await kube.fake.oom_kill(NAMESPACE, pod_name(first.sandbox_id))
    await until(lambda: _not(spawner.poll(first)), "the first sandbox has ended", within=20)
    await spawner.stop(second)


def _lists(kube: Kube) -> int:
    return sum(
        1
        for method, path, query in kube.fake.requests
        if method == "GET" and path.endswith("/pods") and "watch" not in query
    )


@fake_only
async def test_missing_permissions_are_explained(
    tmp_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> None:
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    cluster = FakeCluster(tmp_path / "c", namespaces={NAMESPACE: RESTRICTED}, rules=rules)
    await cluster.start()
    spawner = KubernetesSpawner(
        kubeconfig=str(cluster.write_kubeconfig(tmp_path / "config")), namespace=NAMESPACE
    )
    try:
        with pytest.raises(SpawnerError, match=r"cannot list pods.*Role of k8s/base/rbac.yaml"):
            await spawner.check()
    finally:
        await spawner.close()
        await cluster.stop()


@fake_only
async def test_a_start_does_not_depend_on_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = [
        {**rule, "verbs": [v for v in rule["verbs"] if v != "watch"]}
        for rule in role_rules(RBAC, "sandbox-manager")
    ]
    cluster = FakeCluster(tmp_path / "c", namespaces={NAMESPACE: RESTRICTED}, rules=rules)
    await cluster.start()
    spawner = KubernetesSpawner(
        kubeconfig=str(cluster.write_kubeconfig(tmp_path / "config")),
        namespace=NAMESPACE,
        image=IMAGE,
        watch_fallback_interval=0.05,
    )
    try:
        handle = await spawner.start(new_id(), TOKEN, Progress())  # watches answer 403
        assert await spawner.poll(handle)
        await spawner.stop(handle)
        await until(lambda: _not(spawner.poll(handle)), "the sandbox has ended", within=20)
    finally:
        await spawner.close()
        await cluster.stop()


async def test_a_missing_kubeconfig_is_explained(tmp_path: Path) -> None:
    spawner = KubernetesSpawner(kubeconfig=str(tmp_path / "nowhere"), namespace=NAMESPACE)
    with pytest.raises(SpawnerError, match="No usable Kubernetes configuration"):
        await spawner.check()
    await spawner.close()


@fake_only
async def test_the_restricted_standard_is_enforced_by_admission(api: KubeClient) -> None:
    pod = to_dict(make_sandbox_pod(options(sandbox_id=new_id())))
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(KubeError, match='violates PodSecurity "restricted:latest"'):
        await api.create("pods", pod)


async def test_close_ends_the_watch_threads(make_spawner: SpawnerFactory) -> None:
    def watch_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("k8s-watch-")}

    before = watch_threads()
    spawner = make_spawner()
    await spawner.check()
    ours = watch_threads() - before
    assert {t.name for t in ours} == {"k8s-watch-pods", "k8s-watch-events"}
    await spawner.close()
    assert not [t for t in ours if t.is_alive()]


# --- end to end: the platform opens a terminal in a Kubernetes sandbox ---------------------------


@pytest.fixture
def jp_server_config(kube: Kube) -> dict[str, Any]:
    """The platform with the Kubernetes spawner, on the test's cluster."""
    return {
        "SandboxesApp": {"spawner_class": "kubernetes"},
        "KubernetesSpawner": {**kube.config, "start_timeout": 60.0},
    }


async def test_a_terminal_runs_in_a_kubernetes_sandbox(
    make_user: Callable[..., Awaitable[Client]],
    base_url: str,
    jp_serverapp: PlatformApp,
    kube: Kube,
) -> None:
    browser = await make_user()
    workspace = (await browser.post("/api/workspaces", {"name": "k8s"})).json["uuid"]
    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    api = Client(base_url, token=token)
    created = await api.post(f"/w/{workspace}/api/terminals")
    assert created.status == 200, created.body

    spawner = jp_serverapp.web_app.settings["sandboxes"].spawner
    assert isinstance(spawner, KubernetesSpawner)
    (handle,) = await spawner.find_running()
    assert isinstance(handle, SandboxHandle)
    if kube.cluster:
        (pod,) = kube.cluster.list("pods", NAMESPACE)
        assert pod["metadata"]["labels"][SANDBOX_LABEL] == handle.sandbox_id

    url = base_url.replace("http", "ws", 1) + f"/w/{workspace}/terminals/websocket/"
    connection = await websocket_connect(url + created.json["name"] + f"?token={token}")
    try:
        await connection.write_message(json.dumps(["stdin", "echo $((6*7))\r"]))
        await read_until(connection, "42")
    finally:
        connection.close()
    assert (await api.delete(f"/api/workspaces/{workspace}/sandbox")).status == 204
    assert await spawner.find_running() == []


async def test_reconcile_removes_what_no_row_knows(
    make_user: Callable[..., Awaitable[Client]],
    jp_serverapp: PlatformApp,
    make_spawner: SpawnerFactory,
    api: KubeClient,
    kube: Kube,
) -> None:
    browser = await make_user()
    workspace = (await browser.post("/api/workspaces", {"name": "k8s"})).json["uuid"]
    assert (await browser.post(f"/api/workspaces/{workspace}/sandbox")).status == 200
    stray = await make_spawner().start(new_id(), TOKEN, Progress())  # no row knows it
    lonely = new_id()  # a pod that never got ready (no node fits it)
    labels = sandbox_labels(kube.config["instance"], lonely)
    unready = options(sandbox_id=lonely, labels=labels, node_selector={"example.com/gpu": "a"})
    await api.create("pods", make_sandbox_pod(unready))

    sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    await sandboxes.reconcile()
    await until(lambda: gone(api, stray.sandbox_id), "the stray pod is gone", within=20)
    await until(lambda: gone(api, lonely), "the unready pod is gone", within=20)
    row = await sandboxes.row(uuid.UUID(workspace))
    assert [h.sandbox_id for h in await sandboxes.spawner.find_running()] == [str(row["id"])]
