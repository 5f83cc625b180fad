"""The ``KubernetesSpawner``'s options (traits), their checks, and the pod options from them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from traitlets import Bool, Dict, Enum, Float, Integer, List, TraitError, Unicode, validate

from extensions.sandboxes.spawners.base import Spawner
from extensions.sandboxes.spawners.k8s_objects import (
    AGENT_PORT,
    LABEL_PREFIX,
    PodOptions,
    check_labels,
    parse_quantity,
    sandbox_labels,
)
from extensions.sandboxes.spawners.k8s_status import DEFAULT_FATAL_REASONS


class KubernetesSettings(Spawner):
    """The configuration of ``KubernetesSpawner`` (set it as ``c.KubernetesSpawner.<name>``)
    and what it makes of it: labels and ``PodOptions``. No API calls here."""

    namespace = Unicode(
        "code-execution-sandboxes",
        help="Namespace of the sandbox pods. Label it "
        "pod-security.kubernetes.io/enforce=restricted; keep nothing else in it.",
    ).tag(config=True)

    kubeconfig = Unicode(
        "",
        help="Path of a kubeconfig file. Empty: the pod's service account when the platform "
        "runs in a cluster, else $KUBECONFIG or ~/.kube/config.",
    ).tag(config=True)

    context = Unicode("", help="Context of the kubeconfig to use. Empty: its current one.").tag(
        config=True
    )

    instance = Unicode(
        "default",
        help="Name of this platform installation, in every sandbox's app.kubernetes.io/instance "
        "label: installations sharing a namespace never see, nor reap, each other's sandboxes.",
    ).tag(config=True)

    image = Unicode(
        "code-execution-platform/kernel:0.1.0",
        help="The sandbox image (kernel_image/Dockerfile). Pin a version or a digest.",
    ).tag(config=True)

    image_pull_policy = Enum(
        ["Always", "IfNotPresent", "Never"], "IfNotPresent", help="The pod's imagePullPolicy."
    ).tag(config=True)

    image_pull_secrets = List(
        Unicode(), help="Names of Secrets (in the sandbox namespace) for a private registry."
    ).tag(config=True)

    cpu_request = Unicode("500m", help="CPU reserved for a sandbox (Kubernetes quantity).").tag(
        config=True
    )
    cpu_limit = Unicode("500m", help="Most CPU a sandbox may use (Kubernetes quantity).").tag(
        config=True
    )
    memory_request = Unicode(
        "512Mi", help="Memory reserved for a sandbox (Kubernetes quantity)."
    ).tag(config=True)
    memory_limit = Unicode(
        "512Mi", help="Most memory a sandbox may use; beyond it, it is OOM-killed."
    ).tag(config=True)
    disk_limit = Unicode(
        "1Gi", help="Size limit of /workspace (an emptyDir; Kubernetes quantity)."
    ).tag(config=True)
    tmp_limit = Unicode("256Mi", help="Size limit of /tmp (an emptyDir).").tag(config=True)
    ephemeral_storage_limit = Unicode(
        "",
        help="The pod's ephemeral-storage request and limit. Empty: disk_limit + tmp_limit + "
        "256Mi for logs.",
    ).tag(config=True)

    runtime_class_name = Unicode(
        "", help="RuntimeClass of sandbox pods (e.g. gvisor or kata). Empty: the node's default."
    ).tag(config=True)
    priority_class_name = Unicode("", help="PriorityClass of sandbox pods. Empty: none.").tag(
        config=True
    )
    node_selector = Dict(
        value_trait=Unicode(), help="Node labels a sandbox pod's node must have."
    ).tag(config=True)
    tolerations = List(
        Dict(),
        help='Tolerations of sandbox pods, written as in a manifest: [{"key": "sandboxes", '
        '"operator": "Exists", "effect": "NoSchedule"}].',
    ).tag(config=True)
    user_namespaces = Bool(
        False,
        help="Run sandboxes in a user namespace (hostUsers: false; needs Kubernetes 1.33+ or "
        "the UserNamespacesSupport feature, and a runtime that supports it).",
    ).tag(config=True)
    extra_labels = Dict(value_trait=Unicode(), help="More labels on every sandbox pod.").tag(
        config=True
    )
    extra_annotations = Dict(value_trait=Unicode(), help="Annotations on every sandbox pod.").tag(
        config=True
    )

    agent_port = Integer(
        AGENT_PORT, help="Port the agent listens on in its pod (the container port 'agent')."
    ).tag(config=True)

    launch_timeout = Float(
        50.0,
        help="Seconds a pod may take to be scheduled, pull its image and pass its readiness "
        "probe (formerly start_timeout, still accepted for one release). Keep it below "
        "Sandboxes.start_timeout, or that one ends the start first.",
    ).tag(config=True)

    stop_grace_period = Float(
        5.0,
        help="Seconds a deleted sandbox's agent gets between SIGTERM and SIGKILL (the pod's "
        "terminationGracePeriodSeconds, rounded up to whole seconds).",
    ).tag(config=True)

    watch_fallback_interval = Float(
        2.0,
        help="Seconds between two reads of a starting pod while the pod watch is broken (it "
        "reconnects by itself).",
    ).tag(config=True)

    api_threads = Integer(
        8,
        help="Threads that make blocking Kubernetes API calls (creates, deletes, lists). "
        "Watches have their own thread each.",
    ).tag(config=True)

    request_timeout = Float(
        30.0, help="Seconds one Kubernetes API call may take before it fails."
    ).tag(config=True)

    events_enabled = Bool(
        True,
        help="Watch the namespace's pod Events, for progress messages (pulling the image, ...) "
        "and the words of warnings (FailedScheduling, ...). The pods' status is used either way.",
    ).tag(config=True)

    fail_fast_reasons = List(
        Unicode(),
        list(DEFAULT_FATAL_REASONS),
        help="Container waiting reasons that fail a start at once instead of at launch_timeout. "
        "Add 'Unschedulable' to fail when no node fits (without a cluster autoscaler).",
    ).tag(config=True)

    @validate(
        "cpu_request", "cpu_limit", "memory_request", "memory_limit", "disk_limit", "tmp_limit"
    )
    def _valid_quantity(self, proposal: dict[str, Any]) -> str:
        try:
            parse_quantity(proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from e
        return str(proposal["value"])

    @validate("ephemeral_storage_limit")
    def _valid_optional_quantity(self, proposal: dict[str, Any]) -> str:
        return self._valid_quantity(proposal) if proposal["value"] else ""

    @validate("instance")
    def _valid_instance(self, proposal: dict[str, Any]) -> str:
        try:
            sandbox_labels(proposal["value"])
        except ValueError as e:
            msg = f"KubernetesSpawner.instance: {e}"
            raise TraitError(msg) from e
        return str(proposal["value"])

    # --- what a sandbox is made of ---------------------------------------------------------

    @property
    def match_labels(self) -> dict[str, str]:
        """The labels that all of this installation's sandbox objects carry."""
        return sandbox_labels(self.instance)

    def object_labels(self, sandbox_id: str, labels: Mapping[str, str] | None) -> dict[str, str]:
        """Labels of a sandbox's pod: ours, ``extra_labels``, and the caller's
        (``workspace-id`` becomes ``code-execution-platform/workspace-id``)."""
        extra = dict(self.extra_labels)
        for key, value in (labels or {}).items():
            name = key if "/" in key else LABEL_PREFIX + key
            try:
                check_labels({name: value})
            except ValueError as e:
                self.log.warning("sandbox %s | label ignored: %s", sandbox_id, e)
                continue
            extra[name] = value
        return sandbox_labels(self.instance, sandbox_id, extra)

    def pod_options(self, sandbox_id: str, labels: Mapping[str, str]) -> PodOptions:
        """The options of a sandbox's pod. Override in a subclass to change the pod."""
        return PodOptions(
            sandbox_id=sandbox_id,
            namespace=self.namespace,
            image=self.image,
            labels=labels,
            annotations=dict(self.extra_annotations),
            image_pull_policy=self.image_pull_policy,
            image_pull_secrets=tuple(self.image_pull_secrets),
            agent_port=self.agent_port,
            agent_options=(*self.lifetime.args(), *self.features.args()),
            cpu_request=self.cpu_request,
            cpu_limit=self.cpu_limit,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
            disk_limit=self.disk_limit,
            tmp_limit=self.tmp_limit,
            ephemeral_storage_limit=self.ephemeral_storage_limit,
            runtime_class_name=self.runtime_class_name,
            priority_class_name=self.priority_class_name,
            node_selector=dict(self.node_selector),
            tolerations=tuple(self.tolerations),
            user_namespaces=self.user_namespaces,
            termination_grace_period=self._grace_seconds,
        )

    @property
    def _grace_seconds(self) -> int:
        """``stop_grace_period`` in whole seconds, as Kubernetes takes it (rounded up)."""
        return math.ceil(self.stop_grace_period)
