"""What a sandbox pod's status and events mean for its start: progress, problems, failures.

Pure functions over the JSON the API server sends (pods and core/v1 Events), so every
failure the kubelet and scheduler report is testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from extensions.sandboxes.spawners.k8s_objects import AGENT_CONTAINER, AGENT_PORT_NAME

JsonObject = dict[str, Any]

# Waiting reasons after which the container will not start without someone changing
# something (kubelet's reasons: pkg/kubelet/images/types.go, pkg/kubelet/container).
DEFAULT_FATAL_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
)
IMAGE_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}

# Normal events of a start, in order, as (percent, words for the user).
EVENT_PROGRESS = {
    "Scheduled": (20, "Assigned to a node"),
    "Pulling": (25, "Pulling the sandbox image"),
    "Pulled": (35, "Sandbox image ready"),
    "Created": (40, "Sandbox container created"),
    "Started": (45, "Starting the agent"),
}


@dataclass(frozen=True)
class PodState:
    """A sandbox pod at one moment, as its start sees it."""

    phase: str
    ready: bool
    """Running with the readiness probe passing: the agent listens."""
    deleting: bool
    ip: str | None
    port: int | None
    node: str | None
    percent: int
    message: str
    problem: str | None = None
    """Why it is not progressing (it may yet), e.g. no node can take it now."""
    failure: str | None = None
    """Why it will never become ready."""

    @property
    def running(self) -> bool:
        """Whether the sandbox runs or may still run (what ``Spawner.poll`` answers)."""
        return not self.deleting and self.phase in {"Pending", "Running", "Unknown"}


def pod_state(pod: JsonObject, fatal_reasons: Collection[str] = DEFAULT_FATAL_REASONS) -> PodState:
    """Interpret a pod; ``fatal_reasons`` are the waiting reasons that fail a start."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    container = _agent_status(status)
    image = _agent_spec(spec).get("image", "")
    base: dict[str, Any] = {
        "phase": phase,
        "ready": phase == "Running" and _true(conditions.get("Ready")),
        "deleting": bool(metadata.get("deletionTimestamp")),
        "ip": status.get("podIP") or None,
        "port": agent_port(pod),
        "node": spec.get("nodeName") or None,
    }
    if base["deleting"]:
        return PodState(**base, percent=0, message="Being deleted", failure="The sandbox pod "
                        "was deleted while it was starting.")  # fmt: skip
    failure = _failure(phase, status, container, image, fatal_reasons)
    if failure is not None:
        return PodState(**base, percent=0, message="Failed", failure=failure)
    if base["ready"]:
        return PodState(**base, percent=50, message="Sandbox ready")
    scheduled = conditions.get("PodScheduled")
    if not _true(scheduled):
        problem = None
        if scheduled is not None and scheduled.get("reason") == "Unschedulable":
            problem = f"No node can run the sandbox yet: {scheduled.get('message') or ''}".strip()
        return PodState(**base, percent=15, message="Waiting for a node", problem=problem)
    state = (container or {}).get("state") or {}
    if "running" in state:
        return PodState(**base, percent=45, message="Starting the agent")
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason in IMAGE_REASONS:  # a reason not configured as fatal: retried by the kubelet
        problem = _image_failure(image, reason, waiting.get("message"))
        return PodState(**base, percent=25, message="Pulling the sandbox image", problem=problem)
    if reason:
        message = "Creating the sandbox container" if reason == "ContainerCreating" else reason
        return PodState(**base, percent=30, message=message)
    return PodState(**base, percent=20, message="Assigned to a node")


def agent_port(pod: JsonObject) -> int | None:
    """The agent's port as the pod declares it (the container port named ``agent``)."""
    for port in _agent_spec(pod.get("spec") or {}).get("ports") or []:
        if port.get("name") == AGENT_PORT_NAME and isinstance(port.get("containerPort"), int):
            return int(port["containerPort"])
    return None


@dataclass(frozen=True)
class EventNote:
    """A core/v1 Event about a starting pod, in words for the user."""

    percent: int | None
    message: str
    warning: bool


def event_note(event: JsonObject) -> EventNote | None:
    """What an Event says about a start; None for events that say nothing useful."""
    reason = str(event.get("reason") or "")
    message = str(event.get("message") or "").strip()
    if event.get("type") == "Warning":
        return EventNote(None, f"{reason}: {message}" if message else reason, warning=True)
    if reason in EVENT_PROGRESS:
        percent, words = EVENT_PROGRESS[reason]
        return EventNote(percent, words, warning=False)
    return None


def _failure(
    phase: str,
    status: JsonObject,
    container: JsonObject | None,
    image: str,
    fatal_reasons: Collection[str],
) -> str | None:
    state = (container or {}).get("state") or {}
    terminated = state.get("terminated")
    if terminated is not None:
        return _terminated(terminated)
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason and reason in fatal_reasons:
        if reason in IMAGE_REASONS:
            return _image_failure(image, reason, waiting.get("message"))
        detail = f": {waiting['message']}" if waiting.get("message") else ""
        return f"The sandbox container could not start ({reason}){detail}"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    if "Unschedulable" in fatal_reasons and scheduled.get("reason") == "Unschedulable":
        return f"No node can run the sandbox: {scheduled.get('message') or 'Unschedulable'}"
    if phase == "Failed":
        why = status.get("reason") or "Failed"
        detail = f": {status['message']}" if status.get("message") else ""
        return f"The sandbox pod failed ({why}){detail}"
    if phase == "Succeeded":
        return "The sandbox agent exited."
    return None


def _terminated(terminated: JsonObject) -> str:
    reason = terminated.get("reason") or "Error"
    if reason == "OOMKilled":
        return "The sandbox ran out of memory while starting (OOMKilled): raise its memory limit."
    code = terminated.get("exitCode")
    detail = f": {str(terminated['message']).strip()[-500:]}" if terminated.get("message") else ""
    return f"The sandbox agent exited with code {code} ({reason}){detail}"


def _image_failure(image: str, reason: str, message: str | None) -> str:
    detail = f": {message}" if message else ""
    return (
        f"The sandbox image {image} could not be pulled ({reason}){detail}. Check "
        "KubernetesSpawner.image and image_pull_secrets."
    )


def _agent_status(status: JsonObject) -> JsonObject | None:
    for container in status.get("containerStatuses") or []:
        if container.get("name") == AGENT_CONTAINER:
            return dict(container)
    return None


def _agent_spec(spec: JsonObject) -> JsonObject:
    for container in spec.get("containers") or []:
        if container.get("name") == AGENT_CONTAINER:
            return dict(container)
    return {}


def _true(condition: JsonObject | None) -> bool:
    return condition is not None and condition.get("status") == "True"
