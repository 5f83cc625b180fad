"""``FakeCluster``: an in-test Kubernetes API server that runs pods as local agent processes.

It speaks the REST paths and JSON of the real API server for what the KubernetesSpawner uses
(core/v1 pods, secrets and events in namespaces: create, get, list with label and field
selectors, watch with resourceVersion, delete; Status objects for errors), enforces a bearer
token, the verbs of an RBAC Role and the restricted Pod Security Standard on labelled
namespaces, and plays the scheduler and the kubelet: a created pod is scheduled on the one
node (or not, if its nodeSelector does not match), its image is "pulled" (or not, for a
registry under ``.invalid``), its Secret-backed environment resolved, and its container run
as the real agent (``python -s -m kernel_image ...`` from the pod's args, with the pod's
environment only) on 127.0.0.1. Its readiness is a TCP connect to the agent's port, like the
pod's tcpSocket probe; ``on_listening`` lets a test reach a pod's agent before that.

Where it differs from a cluster (see docs/deployment.md): there is no isolation (the "pod"
is a plain process of the test's user), every pod has the IP 127.0.0.1, so the fake moves
each pod's agent to a free port at admission, rewriting the container port ``agent`` and
the ``--port`` argument (as a mutating admission webhook could); resource limits are not
enforced, except that a memory limit under 48Mi is "OOM-killed" at start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

REPO = Path(__file__).resolve().parents[1]
NODE = "fake-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}
POD_IP = "127.0.0.1"
KINDS = {"pods": "Pod", "secrets": "Secret", "events": "Event"}
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}  # fmt: skip
OOM_BELOW = 48 << 20  # a memory limit under this is "OOM-killed" at start
Json = dict[str, Any]


def now() -> str:
    """The time as the API server writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, **details: Any) -> Json:
    """A metav1 ``Status`` for an error answer."""
    body: Json = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    """Answered as a ``Status`` with its code."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.body = status(code, reason, message, **details)


# --- selectors -------------------------------------------------------------------------------


def _requirements(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def label_match(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy a label selector (=, ==, !=, in, notin, exists, !exists)."""
    for requirement in _requirements(selector):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", requirement):
            values = {v.strip() for v in m[3].split(",")}
            if (labels.get(m[1]) in values) != (m[2] == "in"):
                return False
        elif requirement.startswith("!"):
            if requirement[1:] in labels:
                return False
        elif m := re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", requirement):
            equal = labels.get(m[1].strip()) == m[3].strip()
            if equal != (m[2] != "!="):
                return False
        elif requirement not in labels:
            return False
    return True


def field_match(selector: str, obj: Json) -> bool:
    """Whether ``obj`` satisfies a field selector (``a.b=v``, ``a.b!=v``)."""
    for requirement in _requirements(selector):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", requirement)
        if m is None:
            raise ApiError(400, "BadRequest", f"invalid field selector {requirement!r}")
        value: Any = obj
        for part in m[1].strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        equal = str(value if value is not None else "") == m[3].strip()
        if equal != (m[2] != "!="):
            return False
    return True


# --- Pod Security Admission (restricted), as far as a sandbox pod can break it ----------------


def restricted_violations(pod: Json) -> list[str]:
    """What in ``pod`` the restricted Pod Security Standard forbids (empty: allowed)."""
    spec = pod.get("spec") or {}
    pod_context = spec.get("securityContext") or {}
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"host namespaces ({key}=true)")
    volumes = [v for v in spec.get("volumes") or [] if not set(v) - {"name"} <= ALLOWED_VOLUMES]
    if volumes:
        problems.append(f"restricted volume types ({', '.join(v['name'] for v in volumes)})")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for c in containers:
        name = c.get("name")
        context = c.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f'privileged (container "{name}" must not set privileged=true)')
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(
                f'allowPrivilegeEscalation != false (container "{name}" must set '
                "securityContext.allowPrivilegeEscalation=false)"
            )
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or set(capabilities.get("add") or []) - {
            "NET_BIND_SERVICE"
        }:
            problems.append(
                f'unrestricted capabilities (container "{name}" must set '
                'securityContext.capabilities.drop=["ALL"])'
            )
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f'runAsNonRoot != true (container "{name}")')
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f'runAsUser=0 (container "{name}")')
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get(
            "type"
        )
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f'seccompProfile (container "{name}" must set a seccompProfile)')
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f'hostPort (container "{name}")')
    return problems


# --- the cluster -------------------------------------------------------------------------------


@dataclass(eq=False)
class Watcher:
    """One open watch request."""

    kind: str
    namespace: str
    label_selector: str
    field_selector: str
    queue: asyncio.Queue[Json | None] = field(default_factory=asyncio.Queue)

    def wants(self, kind: str, namespace: str, obj: Json) -> bool:
        """Whether an event about ``obj`` goes to this watch."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return (
            kind == self.kind
            and namespace == self.namespace
            and label_match(self.label_selector, labels)
            and field_match(self.field_selector, obj)
        )


@dataclass
class Container:
    """The local process standing in for a pod's container."""

    process: asyncio.subprocess.Process
    port: int
    log: Path
    killed_reason: str | None = None


class FakeCluster:
    """The API server, scheduler and kubelet of a one-node cluster, in the test's event loop.

    ``namespaces`` maps namespace names to their labels; ``rules`` (RBAC ``PolicyRule``s)
    limit what the token may do (None: everything).
    """

    def __init__(
        self,
        root: Path,
        *,
        namespaces: dict[str, dict[str, str]],
        rules: list[Json] | None = None,
        python: str | None = None,
        step: float = 0.01,
    ) -> None:
        self.root = root
        self.namespaces = namespaces
        self.rules = rules
        self.python = python or _image_python()
        self.step = step
        self.token = secrets.token_urlsafe(24)  # the platform's: limited by ``rules``
        self.admin_token = secrets.token_urlsafe(24)  # the tests': may do anything
        self.objects: dict[tuple[str, str, str], Json] = {}
        self.history: list[tuple[int, str, str, str, Json]] = []
        self.oldest_version = 0  # watches from before this answer 410 Gone
        self.version = 100
        self.watchers: set[Watcher] = set()
        self.containers: dict[tuple[str, str], Container] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.server: HTTPServer | None = None
        self.port = 0
        # Awaited with (namespace, pod name, agent port) once a pod's agent accepts a
        # connection, before the pod is marked Ready: someone on the pod network who is first.
        self.on_listening: Callable[[str, str, int], Awaitable[None]] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self.root.mkdir(parents=True, exist_ok=True)
        agent_dir = self.root / "opt-agent"  # the image's /opt/agent
        agent_dir.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (agent_dir / "kernel_image").symlink_to(REPO / "kernel_image")
        app = web.Application(
            [
                (r"/api/v1/namespaces/([^/]+)/(pods|secrets|events)", CollectionHandler),
                (r"/api/v1/namespaces/([^/]+)/(pods|secrets|events)/([^/]+)", ObjectHandler),
            ],
            cluster=self,
        )
        self.server = HTTPServer(app)
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server.add_sockets(sockets)

    @property
    def url(self) -> str:
        """The API server's URL."""
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, *, context: str = "fake", admin: bool = False) -> Path:
        """A kubeconfig for this cluster: the platform's token (or a cluster admin's)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [
                {"name": "platform", "user": {"token": self.admin_token if admin else self.token}}
            ],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "platform"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    async def stop(self) -> None:
        """Kill every container, end every watch, stop serving."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for key in list(self.containers):
            await self._kill(key, grace=0)
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()

    # --- what tests look at and do -----------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Json | None:
        """An object as stored."""
        return self.objects.get((kind, namespace, name))

    def list(self, kind: str, namespace: str) -> list[Json]:
        """Every object of a kind in a namespace."""
        return [o for (k, ns, _), o in sorted(self.objects.items()) if (k, ns) == (kind, namespace)]

    def compact(self) -> None:
        """Forget the change history: watches from an older resourceVersion get 410 Gone."""
        self.history.clear()
        self.version += 1
        self.oldest_version = self.version

    async def oom_kill(self, namespace: str, name: str) -> None:
        """Kill a running pod's container as the kernel's OOM killer would."""
        container = self.containers.get((namespace, name))
        assert container is not None, f"pod {name} has no running container"
        container.killed_reason = "OOMKilled"
        family = _descendants(container.process.pid)
        _kill_all([container.process.pid, *family], signal.SIGKILL)
        await container.process.wait()
        await asyncio.sleep(self.step * 5)

    def agent_log(self, namespace: str, name: str) -> str:
        """What a pod's agent printed."""
        path = self.root / "pods" / namespace / name / "agent.log"
        return path.read_text() if path.exists() else ""

    # --- storage and watches ------------------------------------------------------------------

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def _record(self, change: str, kind: str, namespace: str, obj: Json) -> None:
        version = int(obj["metadata"]["resourceVersion"])
        snapshot = json.loads(json.dumps(obj))
        self.history.append((version, change, kind, namespace, snapshot))
        for watcher in list(self.watchers):
            if watcher.wants(kind, namespace, snapshot):
                watcher.queue.put_nowait({"type": change, "object": snapshot})

    def store(self, kind: str, namespace: str, obj: Json, *, change: str = "MODIFIED") -> Json:
        """Save a new version of an object and tell the watches."""
        obj["metadata"]["resourceVersion"] = self._next_version()
        self.objects[(kind, namespace, obj["metadata"]["name"])] = obj
        self._record(change, kind, namespace, obj)
        return obj

    def remove(self, kind: str, namespace: str, name: str) -> Json | None:
        """Delete an object for good and tell the watches."""
        obj = self.objects.pop((kind, namespace, name), None)
        if obj is not None:
            obj["metadata"]["resourceVersion"] = self._next_version()
            self._record("DELETED", kind, namespace, obj)
        return obj

    def authorize(self, token: str, verb: str, kind: str, namespace: str) -> None:
        """403 unless the Role's rules allow the verb on the resource (or it is the admin)."""
        if self.rules is None or token == self.admin_token:
            return
        for rule in self.rules:
            if (
                "" in rule.get("apiGroups", [])
                and kind in rule.get("resources", [])
                and verb in rule.get("verbs", [])
            ):
                return
        message = (
            f'{kind} is forbidden: User "system:serviceaccount:platform:platform-server" '
            f'cannot {verb} resource "{kind}" in API group "" in the namespace "{namespace}"'
        )
        raise ApiError(403, "Forbidden", message, kind=kind)

    def create(self, kind: str, namespace: str, body: Json) -> Json:
        """Admission, then storage; a pod then starts its life."""
        if namespace not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found', name=namespace)
        if body.get("kind") != KINDS[kind]:
            raise ApiError(400, "BadRequest", f"the body is not a {KINDS[kind]}")
        metadata = body.setdefault("metadata", {})
        name = metadata.get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            raise ApiError(422, "Invalid", f'{KINDS[kind]} "{name}" is invalid: metadata.name')
        if metadata.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                           "match the namespace sent on the request")  # fmt: skip
        if (kind, namespace, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind} "{name}" already exists',
                           name=name, kind=kind)  # fmt: skip
        metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now())
        if kind == "secrets":
            data = dict(body.get("data") or {})
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(value.encode()).decode()
            body["data"] = data
        if kind == "pods":
            self._admit_pod(namespace, body)
        stored = self.store(kind, namespace, body, change="ADDED")
        if kind == "pods":
            self._spawn(self._run_pod(namespace, name))
        return stored

    def _admit_pod(self, namespace: str, pod: Json) -> None:
        name = pod["metadata"]["name"]
        if self.namespaces[namespace].get("pod-security.kubernetes.io/enforce") == "restricted":
            problems = restricted_violations(pod)
            if problems:
                message = (
                    f'pods "{name}" is forbidden: violates PodSecurity "restricted:latest": '
                    + ", ".join(problems)
                )
                raise ApiError(403, "Forbidden", message)
        # Mutation (the fake's one liberty): every pod here shares 127.0.0.1, so each agent
        # gets a port of its own, declared where the real one is: the "agent" container port.
        port = _free_port()
        for container in pod["spec"]["containers"]:
            for declared in container.get("ports") or []:
                if declared.get("name") == "agent":
                    old = declared["containerPort"]
                    declared["containerPort"] = port
                    args = container.get("args") or []
                    container["args"] = [str(port) if a == str(old) else a for a in args]
        pod["status"] = {"phase": "Pending", "qosClass": _qos(pod)}

    async def delete(self, kind: str, namespace: str, name: str, grace: int | None) -> Json:
        """Graceful for pods with a running container; at once otherwise."""
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)
        if kind != "pods":
            self.remove(kind, namespace, name)
            details = {"name": name, "kind": kind, "uid": obj["metadata"]["uid"]}
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": details}  # fmt: skip
        if grace is None:
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        obj["metadata"]["deletionTimestamp"] = now()
        obj["metadata"]["deletionGracePeriodSeconds"] = grace
        self.store("pods", namespace, obj)
        self._spawn(self._finish_deletion(namespace, name, grace))
        return obj

    async def _finish_deletion(self, namespace: str, name: str, grace: int) -> None:
        await self._kill((namespace, name), grace=grace)
        self.remove("pods", namespace, name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the scheduler and the kubelet -------------------------------------------------------

    def _pod(self, namespace: str, name: str) -> Json | None:
        pod = self.get("pods", namespace, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        return json.loads(json.dumps(pod))

    def _event(self, pod: Json, reason: str, message: str, *, warning: bool = False) -> None:
        namespace = pod["metadata"]["namespace"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{pod['metadata']['name']}.{secrets.token_hex(8)}",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now(),
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "namespace": namespace,
                "uid": pod["metadata"]["uid"],
                "fieldPath": "spec.containers{agent}",
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": NODE},
            "reportingComponent": "kubelet",
            "reportingInstance": NODE,
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        self.store("events", namespace, event, change="ADDED")

    def _update(self, namespace: str, pod: Json) -> None:
        current = self.get("pods", namespace, pod["metadata"]["name"])
        if current is not None and not current["metadata"].get("deletionTimestamp"):
            self.store("pods", namespace, pod)

    def _condition(self, pod: Json, kind: str, value: bool, **extra: str) -> None:
        conditions = [c for c in pod["status"].setdefault("conditions", []) if c["type"] != kind]
        conditions.append({"type": kind, "status": str(value), "lastTransitionTime": now(),
                           "lastProbeTime": None, **extra})  # fmt: skip
        pod["status"]["conditions"] = conditions

    def _container_state(self, pod: Json, state: Json, *, ready: bool = False) -> None:
        container = pod["spec"]["containers"][0]
        pod["status"]["containerStatuses"] = [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "started": "running" in state,
                "state": state,
                "lastState": {},
            }
        ]

    async def _run_pod(self, namespace: str, name: str) -> None:
        await asyncio.sleep(self.step)
        pod = self._pod(namespace, name)
        if pod is None:
            return
        selector = pod["spec"].get("nodeSelector") or {}
        if any(NODE_LABELS.get(k) != v for k, v in selector.items()):
            message = (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
            self._condition(pod, "PodScheduled", False, reason="Unschedulable", message=message)
            self._update(namespace, pod)
            self._event(pod, "FailedScheduling", message, warning=True)
            return
        pod["spec"]["nodeName"] = NODE
        self._condition(pod, "PodScheduled", True)
        self._update(namespace, pod)
        self._event(pod, "Scheduled", f"Successfully assigned {namespace}/{name} to {NODE}")
        await asyncio.sleep(self.step)

        pod = self._pod(namespace, name)
        if pod is None:
            return
        image = pod["spec"]["containers"][0]["image"]
        pod["status"].update(hostIP=POD_IP, startTime=now())
        self._condition(pod, "Initialized", True)
        self._condition(pod, "Ready", False, reason="ContainersNotReady")
        self._container_state(pod, {"waiting": {"reason": "ContainerCreating"}})
        self._update(namespace, pod)
        self._event(pod, "Pulling", f'Pulling image "{image}"')
        await asyncio.sleep(self.step)
        if image.split("/")[0].endswith(".invalid"):
            await self._fail_pull(namespace, name, image)
            return
        self._event(pod, "Pulled", f'Successfully pulled image "{image}" in 10ms')

        env = await self._environment(namespace, name)
        pod = self._pod(namespace, name)
        if pod is None or env is None:
            return
        await self._start_container(namespace, pod, env)

    async def _fail_pull(self, namespace: str, name: str, image: str) -> None:
        registry = image.split("/")[0]
        message = (
            f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
            f'failed to do request: Head "https://{registry}/v2/": dial tcp: lookup {registry}: '
            "no such host"
        )
        for reason, event, warning in (
            ("ErrImagePull", "Failed", f'Failed to pull image "{image}": {message}'),
            ("ImagePullBackOff", "BackOff", f'Back-off pulling image "{image}"'),
        ):
            pod = self._pod(namespace, name)
            if pod is None:
                return
            self._container_state(pod, {"waiting": {"reason": reason, "message": warning}})
            self._update(namespace, pod)
            self._event(pod, event, warning, warning=True)
            await asyncio.sleep(self.step * 5)

    async def _environment(self, namespace: str, name: str) -> dict[str, str] | None:
        """The container's environment, waiting (as the kubelet does) for missing Secrets."""
        while True:
            pod = self._pod(namespace, name)
            if pod is None:
                return None
            env: dict[str, str] = {}
            missing = None
            for var in pod["spec"]["containers"][0].get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref is None:
                    env[var["name"]] = var.get("value", "")
                    continue
                secret = self.get("secrets", namespace, ref["name"])
                if secret is None or ref["key"] not in (secret.get("data") or {}):
                    missing = f'secret "{ref["name"]}" not found'
                    break
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            if missing is None:
                return env
            self._container_state(
                pod, {"waiting": {"reason": "CreateContainerConfigError", "message": missing}}
            )
            self._update(namespace, pod)
            self._event(pod, "Failed", f"Error: {missing}", warning=True)
            await asyncio.sleep(self.step * 20)

    def _command(self, pod: Json, folder: Path) -> list[str]:
        """The container's args, with the image's paths mapped into ``folder``."""
        args = list(pod["spec"]["containers"][0].get("args") or [])
        mapped = []
        for i, arg in enumerate(args):
            if i == 0 and arg == "python":
                mapped.append(self.python)
            elif i > 0 and args[i - 1] == "--host":
                mapped.append(POD_IP)
            else:
                mapped.append(self._path(arg, folder))
        return mapped

    def _path(self, value: str, folder: Path) -> str:
        for mount in ("/workspace", "/tmp"):  # noqa: S108
            if value == mount or value.startswith(mount + "/"):
                return str(folder / mount.strip("/")) + value[len(mount) :]
        return value

    async def _start_container(self, namespace: str, pod: Json, env: dict[str, str]) -> None:
        name = pod["metadata"]["name"]
        folder = self.root / "pods" / namespace / name
        for mount in ("workspace", "tmp"):
            (folder / mount).mkdir(parents=True, exist_ok=True)
        command = self._command(pod, folder)
        environment = {k: self._path(v, folder) for k, v in env.items()}
        python_bin = str(Path(self.python).parent)
        environment.update(
            PATH=f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
            PYTHONPATH=str(self.root / "opt-agent"),  # the image's ENV PYTHONPATH=/opt/agent
            TMPDIR=str(folder / "tmp"),
        )
        log = folder / "agent.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *command,
                env=environment,
                cwd=str(folder / "workspace"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        port = int(command[command.index("--port") + 1])
        container = Container(process, port, log)
        self.containers[(namespace, name)] = container
        image = pod["spec"]["containers"][0]["image"]
        pod["status"].update(phase="Running", podIP=POD_IP, podIPs=[{"ip": POD_IP}])
        self._container_state(pod, {"running": {"startedAt": now()}})
        self._update(namespace, pod)
        self._event(pod, "Created", "Created container agent")
        self._event(pod, "Started", f"Started container agent (image {image})")
        memory = (pod["spec"]["containers"][0].get("resources") or {}).get("limits", {})
        if "memory" in memory and _bytes(memory["memory"]) < OOM_BELOW:
            container.killed_reason = "OOMKilled"
            _kill_all([process.pid], signal.SIGKILL)
        if self._pod(namespace, name) is None:  # deleted while it was starting
            await self._kill((namespace, name), grace=0)
            return
        self._spawn(self._probe(namespace, name, container))
        self._spawn(self._reap(namespace, name, container))

    async def _probe(self, namespace: str, name: str, container: Container) -> None:
        """The readiness probe: a TCP connect to the agent port."""
        while container.process.returncode is None:
            try:
                _, writer = await asyncio.open_connection(POD_IP, container.port)
            except OSError:
                await asyncio.sleep(self.step * 2)
                continue
            writer.close()
            if self.on_listening is not None:
                await self.on_listening(namespace, name, container.port)
            pod = self._pod(namespace, name)
            if pod is not None and container.process.returncode is None:
                self._condition(pod, "ContainersReady", True)
                self._condition(pod, "Ready", True)
                pod["status"]["containerStatuses"][0]["ready"] = True
                self._update(namespace, pod)
            return

    async def _reap(self, namespace: str, name: str, container: Container) -> None:
        """The container ended: record how, as the kubelet does (restartPolicy Never)."""
        code = await container.process.wait()
        if self.containers.get((namespace, name)) is container:
            del self.containers[(namespace, name)]
        pod = self._pod(namespace, name)
        if pod is None:
            return
        reason = container.killed_reason or ("Completed" if code == 0 else "Error")
        exit_code = 137 if reason == "OOMKilled" else (code if code >= 0 else 128 - code)
        terminated: Json = {"exitCode": exit_code, "reason": reason, "finishedAt": now()}
        if reason == "Error":
            tail = container.log.read_text(errors="replace")[-2000:]
            if tail:
                terminated["message"] = tail
        self._container_state(pod, {"terminated": terminated})
        pod["status"]["phase"] = "Succeeded" if reason == "Completed" else "Failed"
        self._condition(pod, "Ready", False, reason="PodCompleted")
        self._condition(pod, "ContainersReady", False, reason="PodCompleted")
        self._update(namespace, pod)
        if reason == "OOMKilled":
            self._event(pod, "OOMKilling", "Memory cgroup out of memory: Killed process (python)",
                        warning=True)  # fmt: skip

    async def _kill(self, key: tuple[str, str], grace: int) -> None:
        """SIGTERM, then after ``grace`` s SIGKILL to everything of the container (a real
        one's PID namespace ends with it; here the agent's terminals have sessions of their
        own, so they are found through /proc)."""
        container = self.containers.get(key)
        if container is None:
            return
        pid = container.process.pid
        family = _descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(container.process.wait(), grace)
        except TimeoutError:
            family |= _descendants(pid)
            _kill_all([pid], signal.SIGKILL)
            await container.process.wait()
        _kill_all(family, signal.SIGKILL)
        self.containers.pop(key, None)


# --- HTTP ----------------------------------------------------------------------------------------


class Handler(web.RequestHandler):
    """Bearer token, JSON errors as Status objects."""

    @property
    def cluster(self) -> FakeCluster:
        cluster: FakeCluster = self.settings["cluster"]
        return cluster

    def prepare(self) -> None:
        query = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        self.cluster.requests.append((self.request.method or "", self.request.path, query))
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in {self.cluster.token, self.cluster.admin_token}:
            self.answer(status(401, "Unauthorized", "Unauthorized"))
        self.token = token

    def authorize(self, verb: str, kind: str, namespace: str) -> None:
        """403 unless this request's token may do that."""
        self.cluster.authorize(self.token, verb, kind, namespace)

    def answer(self, body: Json, code: int | None = None) -> None:
        """Finish with JSON."""
        self.set_status(code or int(body.get("code") or 200))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, ApiError):
            self.answer(error.body)
        else:
            self.answer(status(status_code, "InternalError", str(error)))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, ApiError):
            super().log_exception(typ, value, tb)

    def body_json(self) -> Json:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"invalid JSON: {e}") from e
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body is not an object")
        return body


class CollectionHandler(Handler):
    """``/api/v1/namespaces/<ns>/<kind>``: list, watch, create."""

    async def get(self, namespace: str, kind: str) -> None:
        watching = self.get_query_argument("watch", "false") in {"true", "1"}
        self.authorize("watch" if watching else "list", kind, namespace)
        labels = self.get_query_argument("labelSelector", "")
        fields = self.get_query_argument("fieldSelector", "")
        if watching:
            await self.watch(namespace, kind, labels, fields)
            return
        watcher = Watcher(kind, namespace, labels, fields)
        items = [o for o in self.cluster.list(kind, namespace) if watcher.wants(kind, namespace, o)]
        self.answer(
            {
                "kind": KINDS[kind] + "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.cluster.version)},
                "items": items,
            }
        )

    async def watch(self, namespace: str, kind: str, labels: str, fields: str) -> None:
        """Stream JSON lines of changes after ``resourceVersion`` until ``timeoutSeconds``."""
        cluster = self.cluster
        version = self.get_query_argument("resourceVersion", "")
        timeout = float(self.get_query_argument("timeoutSeconds", "1800"))
        watcher = Watcher(kind, namespace, labels, fields)
        if version in {"", "0"}:
            for obj in cluster.list(kind, namespace):
                if watcher.wants(kind, namespace, obj):
                    watcher.queue.put_nowait({"type": "ADDED", "object": obj})
        elif int(version) < cluster.oldest_version:
            gone = status(410, "Expired", f"too old resource version: {version} "
                          f"({cluster.oldest_version})")  # fmt: skip
            watcher.queue.put_nowait({"type": "ERROR", "object": gone})
            watcher.queue.put_nowait(None)
        else:
            for recorded, change, k, ns, obj in cluster.history:
                if recorded > int(version) and watcher.wants(k, ns, obj):
                    watcher.queue.put_nowait({"type": change, "object": obj})
        cluster.watchers.add(watcher)
        self.watcher = watcher
        self.set_header("Content-Type", "application/json")  # tornado sends it chunked
        deadline = time.monotonic() + timeout
        try:
            await self.flush()
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                self.write(json.dumps(event) + "\n")
                await self.flush()
        except StreamClosedError:
            self.gone = True
        finally:
            cluster.watchers.discard(watcher)
        if not getattr(self, "gone", False):
            self.finish()

    def on_connection_close(self) -> None:
        self.gone = True
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.queue.put_nowait(None)

    async def post(self, namespace: str, kind: str) -> None:
        self.authorize("create", kind, namespace)
        if kind == "events":
            raise ApiError(405, "MethodNotAllowed", "the fake makes events itself")
        created = self.cluster.create(kind, namespace, self.body_json())
        self.answer(created, 201)


class ObjectHandler(Handler):
    """``/api/v1/namespaces/<ns>/<kind>/<name>``: get, delete."""

    async def get(self, namespace: str, kind: str, name: str) -> None:
        self.authorize("get", kind, namespace)
        obj = self.cluster.get(kind, namespace, name)
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)
        self.answer(obj)

    async def delete(self, namespace: str, kind: str, name: str) -> None:
        self.authorize("delete", kind, namespace)
        grace_arg = self.get_query_argument("gracePeriodSeconds", None)
        options = self.body_json() if self.request.body else {}
        grace = options.get("gracePeriodSeconds", int(grace_arg) if grace_arg else None)
        self.answer(await self.cluster.delete(kind, namespace, name, grace), 200)


# --- helpers -------------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (through /proc/<pid>/task/*/children)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def _kill_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _image_python() -> str:
    """The Python of the "image": the sandboxes' venv (numpy, ...) if built, else ours."""
    sandbox = REPO / ".sandbox-venv" / "bin" / "python"
    return str(sandbox) if sandbox.exists() else sys.executable


UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _bytes(quantity: str) -> int:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity)
    assert m is not None, quantity
    assert m[2] in UNITS, quantity
    return int(float(m[1]) * UNITS[m[2]])


def _qos(pod: Json) -> str:
    resources = [c.get("resources") or {} for c in pod["spec"]["containers"]]
    if all(r.get("limits") and r.get("limits") == r.get("requests") for r in resources):
        return "Guaranteed"
    return "Burstable" if any(r for r in resources) else "BestEffort"


def role_rules(manifest: Path, role: str) -> list[Json]:
    """The rules of a Role in a multi-document manifest."""
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "Role" and doc["metadata"]["name"] == role:
            rules: list[Json] = doc["rules"]
            return rules
    msg = f"no Role {role} in {manifest}"
    raise LookupError(msg)
