"""Pure builders of a sandbox's Kubernetes objects: its pod (the agent's token is not in it: the
platform hands it to the agent over HTTP once the pod answers).

Nothing here talks to a cluster; every function returns the same objects for the same input,
so the pod's security properties are tested without one (kubespawner's ``make_pod`` split).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from kubernetes import client

# The image's unprivileged user (kernel_image/Dockerfile creates it).
SANDBOX_UID = 1000
SANDBOX_GID = 1000
AGENT_PORT = 8800
AGENT_CONTAINER = "agent"
AGENT_PORT_NAME = "agent"
WORKSPACE = "/workspace"
POD_PREFIX = "sandbox-"

# Labels every sandbox object carries (https://kubernetes.io/docs/concepts/overview/
# working-with-objects/common-labels/), plus our own for the sandbox and workspace ids.
APP_NAME = "code-execution-platform"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
LABEL_PREFIX = "code-execution-platform/"  # of the labels a caller names without a prefix
SANDBOX_LABEL = LABEL_PREFIX + "sandbox-id"
WORKSPACE_LABEL = LABEL_PREFIX + "workspace-id"

# A DNS-1123 label, short enough for ``sandbox-<id>`` (63 characters at most).
SANDBOX_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,53}[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
SUFFIXES: dict[str | None, Decimal] = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(["k", "M", "G", "T", "P", "E"])},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])},
}
TOLERATION_KEYS = {
    "key": "key",
    "operator": "operator",
    "value": "value",
    "effect": "effect",
    "tolerationSeconds": "toleration_seconds",
}


@dataclass(frozen=True)
class PodOptions:
    """Everything that decides a sandbox's pod (never its token: see ``agent_args``)."""

    sandbox_id: str
    namespace: str
    image: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    agent_port: int = AGENT_PORT
    cpu_request: str = "500m"
    cpu_limit: str = "500m"
    memory_request: str = "512Mi"
    memory_limit: str = "512Mi"
    disk_limit: str = "1Gi"
    tmp_limit: str = "256Mi"
    ephemeral_storage_limit: str = ""
    """Empty: the two emptyDir sizes plus 256Mi for logs."""
    runtime_class_name: str = ""
    priority_class_name: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    user_namespaces: bool = False
    termination_grace_period: int = 5
    agent_options: tuple[str, ...] = ()
    """Added to the agent's command line (``agent_args``): the limits it keeps by itself."""

    @property
    def name(self) -> str:
        """The pod's name."""
        return pod_name(self.sandbox_id)


def pod_name(sandbox_id: str) -> str:
    """``sandbox-<id>``; ``ValueError`` if the id cannot name a pod."""
    if not SANDBOX_ID.fullmatch(sandbox_id):
        msg = (
            f"Invalid sandbox id {sandbox_id!r}: 1-55 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit."
        )
        raise ValueError(msg)
    return POD_PREFIX + sandbox_id


def sandbox_labels(
    instance: str, sandbox_id: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The labels of one platform instance's sandbox objects (all of them if no id)."""
    labels = dict(extra or {})
    labels.update(
        {
            NAME_LABEL: APP_NAME,
            COMPONENT_LABEL: "sandbox",
            INSTANCE_LABEL: instance,
            MANAGED_BY_LABEL: "platform-server",
        }
    )
    if sandbox_id is not None:
        labels[SANDBOX_LABEL] = sandbox_id
    check_labels(labels)
    return labels


def selector(labels: Mapping[str, str]) -> str:
    """A label selector matching every object that has all ``labels``."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def check_labels(labels: Mapping[str, str]) -> None:
    """``ValueError`` unless every key and value is a valid Kubernetes label."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        valid_key = LABEL_NAME.fullmatch(name) and (
            not prefix or (len(prefix) <= 253 and DNS_SUBDOMAIN.fullmatch(prefix))
        )
        if not valid_key or not LABEL_VALUE.fullmatch(value):
            msg = f"Invalid label {key}={value!r}."
            raise ValueError(msg)


def parse_quantity(value: str) -> Decimal:
    """A Kubernetes quantity (``"500m"``, ``"512Mi"``, ``"1G"``) as a number."""
    match = QUANTITY.fullmatch(value.strip())
    if match is None:
        msg = f"{value!r} is not a Kubernetes quantity (e.g. 500m, 512Mi, 1Gi)."
        raise ValueError(msg)
    try:
        return Decimal(match[1]) * SUFFIXES[match[2]]
    except InvalidOperation as e:  # pragma: no cover - the regex admits only numbers
        raise ValueError(str(e)) from e


def ephemeral_storage(options: PodOptions) -> str:
    """The pod's ephemeral-storage limit: the option, or both emptyDirs plus room for logs."""
    if options.ephemeral_storage_limit:
        return options.ephemeral_storage_limit
    total = parse_quantity(options.disk_limit) + parse_quantity(options.tmp_limit)
    mebibytes = int(-(-total // (1 << 20))) + 256
    return f"{mebibytes}Mi"


def agent_args(port: int) -> list[str]:
    """The agent's command line; the image's entrypoint (tini) runs it.

    ``--token-on-first-contact``: the agent starts without a token and the platform hands it
    over (``PUT /api/token``) once the pod answers. A token in the pod's environment would stay
    readable by the user's code in ``/proc/1/environ`` (tini runs under the same uid).
    ``-P`` keeps the working folder (/workspace, the user's files) off the agent's import
    path: the agent is found through ``PYTHONPATH`` (/opt/agent).
    """
    # Every address of the pod: the platform reaches it at the pod IP.
    host = "0.0.0.0"  # noqa: S104
    return ["python", "-s", "-P", "-m", "kernel_image", "--port", str(port), "--host", host,
            "--root", WORKSPACE, "--token-on-first-contact"]  # fmt: skip


def make_sandbox_pod(options: PodOptions) -> client.V1Pod:
    """The pod of one sandbox, within the restricted Pod Security Standard.

    Non-root with a fixed uid, no privilege escalation, no capabilities, the runtime's
    seccomp profile, a read-only root filesystem with size-limited emptyDirs for
    ``/workspace`` and ``/tmp``, no service account token, no service links, and no agent
    token (the platform hands it over once the pod answers).
    """
    name = options.name
    for value in (options.cpu_request, options.cpu_limit, options.memory_request,
                  options.memory_limit, options.disk_limit, options.tmp_limit):  # fmt: skip
        parse_quantity(value)
    check_labels(options.labels)
    storage = ephemeral_storage(options)
    container = client.V1Container(
        name=AGENT_CONTAINER,
        image=options.image,
        image_pull_policy=options.image_pull_policy,
        args=[*agent_args(options.agent_port), *options.agent_options],
        ports=[
            client.V1ContainerPort(
                name=AGENT_PORT_NAME, container_port=options.agent_port, protocol="TCP"
            )
        ],
        env=[
            client.V1EnvVar(name="HOME", value=WORKSPACE),
            client.V1EnvVar(name="USER", value="user"),
            client.V1EnvVar(name="SHELL", value="/bin/bash"),
            client.V1EnvVar(name="LANG", value="C.UTF-8"),
        ],
        resources=client.V1ResourceRequirements(
            requests={
                "cpu": options.cpu_request,
                "memory": options.memory_request,
                "ephemeral-storage": storage,
            },
            limits={
                "cpu": options.cpu_limit,
                "memory": options.memory_limit,
                "ephemeral-storage": storage,
            },
        ),
        # The agent answers only with its token, so the probe is a TCP connect: an HTTP
        # probe would need the token in the pod spec (readable by anyone who can get pods),
        # and an exec probe would start a Python in the sandbox, on its CPU, every period.
        readiness_probe=client.V1Probe(
            tcp_socket=client.V1TCPSocketAction(port=AGENT_PORT_NAME),
            period_seconds=1,
            timeout_seconds=1,
            failure_threshold=3,
        ),
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=SANDBOX_UID,
            run_as_group=SANDBOX_GID,
            allow_privilege_escalation=False,
            privileged=False,
            read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=[
            client.V1VolumeMount(name="workspace", mount_path=WORKSPACE),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),  # noqa: S108
        ],
        termination_message_policy="FallbackToLogsOnError",
    )
    spec = client.V1PodSpec(
        containers=[container],
        restart_policy="Never",
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=options.termination_grace_period,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=SANDBOX_UID,
            run_as_group=SANDBOX_GID,
            fs_group=SANDBOX_GID,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=[
            client.V1Volume(
                name="workspace",
                empty_dir=client.V1EmptyDirVolumeSource(size_limit=options.disk_limit),
            ),
            client.V1Volume(
                name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit=options.tmp_limit)
            ),
        ],
        image_pull_secrets=[
            client.V1LocalObjectReference(name=secret) for secret in options.image_pull_secrets
        ]
        or None,
        node_selector=dict(options.node_selector) or None,
        tolerations=[make_toleration(t) for t in options.tolerations] or None,
        runtime_class_name=options.runtime_class_name or None,
        priority_class_name=options.priority_class_name or None,
        host_users=False if options.user_namespaces else None,
    )
    return client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=options.namespace,
            labels=dict(options.labels),
            annotations=dict(options.annotations) or None,
        ),
        spec=spec,
    )


def make_toleration(toleration: Mapping[str, Any]) -> client.V1Toleration:
    """A toleration written as in a manifest (``{"key": ..., "effect": "NoSchedule"}``)."""
    unknown = set(toleration) - set(TOLERATION_KEYS)
    if unknown:
        msg = f"Unknown toleration fields {sorted(unknown)}; use {sorted(TOLERATION_KEYS)}."
        raise ValueError(msg)
    return client.V1Toleration(**{TOLERATION_KEYS[k]: v for k, v in toleration.items()})


@cache
def _serializer() -> client.ApiClient:
    return client.ApiClient()


def to_dict(obj: Any) -> dict[str, Any]:
    """An object as the JSON the API server receives (camelCase keys, no nulls)."""
    result: dict[str, Any] = _serializer().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return result
