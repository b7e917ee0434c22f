"""The deployment manifests stay in step with the code: every setting they pass exists, and the
probes and Services point at the ports the containers open."""

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from realm.app.cli.main import app
from realm.ports import GENERATOR_PORT, RETRIEVER_PORT
from tests.servers import REPO

KUBERNETES_VERSION = "1.33"  # the oldest release the manifests promise to work on
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
# The services' own manifests; nats.yaml runs the NATS server's image.
REALM_MANIFESTS = [p for p in MANIFESTS if p.name != "nats.yaml"]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _serve_envvars(service: str) -> set[str]:
    root: Any = typer.main.get_command(app)  # typer's own click groups
    command = root.commands["serve"].commands[service]
    return {p.envvar for p in command.params if isinstance(p.envvar, str)}


def test_there_is_a_manifest_per_service_and_for_the_log() -> None:
    assert [p.name for p in MANIFESTS] == [
        "generator.yaml",
        "nats.yaml",
        "retriever-sharded.yaml",
        "retriever.yaml",
    ]


def _workloads() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, document)
        for path in REALM_MANIFESTS
        for document in _documents(path)
        if document["kind"] in ("Deployment", "StatefulSet")
    ]


def test_every_environment_setting_is_one_the_server_reads() -> None:
    for name, workload in _workloads():
        [container] = workload["spec"]["template"]["spec"]["containers"]
        service = container["args"][1]
        known = _serve_envvars(service)
        names = {e["name"] for e in container["env"]}
        assert names <= known, f"{name}: unknown settings {sorted(names - known)}"


def test_probes_and_services_use_the_container_port() -> None:
    """YAML cannot import realm.ports, so this ties the manifests' numbers to it."""
    well_known = {"retriever": RETRIEVER_PORT, "generator": GENERATOR_PORT}
    for path in REALM_MANIFESTS:
        documents = _documents(path)
        workloads = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]
        [service] = [d for d in documents if d["kind"] == "Service"]
        for workload in workloads:
            _check_ports(documents, workload, service, well_known)


def _check_ports(
    documents: list[dict[str, Any]],
    workload: dict[str, Any],
    service: dict[str, Any],
    well_known: dict[str, int],
) -> None:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    port, metrics = container["ports"]
    assert port["containerPort"] == well_known[container["args"][1]]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["realm", "health", "--target"]
        assert command[3] == f"localhost:{port['containerPort']}"
    assert service["spec"]["clusterIP"] == "None", "clients balance per call over pods"
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REALM_PORT"] == str(port["containerPort"])
    # The metrics port: the variable, the container port, the scrape annotations, and the
    # one port besides gRPC that the NetworkPolicy lets Prometheus reach.
    assert metrics["name"] == "metrics"
    assert env["REALM_METRICS_PORT"] == str(metrics["containerPort"])
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics["containerPort"])
    [policy] = [d for d in documents if d["kind"] == "NetworkPolicy"]
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {port["containerPort"], metrics["containerPort"]}


def test_pods_run_locked_down_with_tls_a_required_token_and_cpu_limits() -> None:
    """What a security review asks of a pod that binds 0.0.0.0."""
    for name, workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"], name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        [container] = pod["containers"]
        hardened = container["securityContext"]
        assert hardened["readOnlyRootFilesystem"] is True, name
        assert hardened["allowPrivilegeEscalation"] is False, name
        assert hardened["capabilities"] == {"drop": ["ALL"]}, name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["REALM_TLS_CERT"], f"{name}: TLS is off"
        assert env["REALM_TLS_KEY"], f"{name}: TLS is off"
        assert env["REALM_TOKEN_FILE"], f"{name}: no token"
        assert not any("valueFrom" in e for e in container["env"]), "secrets come as files"
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert volume["secret"].get("optional", False) is False, f"{name}: {volume}"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {str(Path(env["REALM_TOKEN_FILE"]).parent), "/tmp"} <= mounts, name


def test_a_network_policy_admits_only_the_callers_of_each_service() -> None:
    prometheus = [{"app.kubernetes.io/name": "prometheus"}]  # the metrics port only
    callers = [{"app": "realm-generator"}, {"realm-client": "true"}]
    allowed = {
        "retriever.yaml": [callers, prometheus],
        # Replicas of a sharded collection ask each other for their shards.
        "retriever-sharded.yaml": [[*callers, {"app": "realm-retriever"}], prometheus],
        "generator.yaml": [[{"realm-client": "true"}], prometheus],
        # Retriever replicas reach NATS; the NATS servers reach each other.
        "nats.yaml": [[{"app": "realm-retriever"}], [{"app": "realm-nats"}]],
    }
    policies = {
        path.name: d for path in MANIFESTS for d in _documents(path) if d["kind"] == "NetworkPolicy"
    }
    assert set(policies) == set(allowed)
    for manifest, policy in policies.items():
        name = policy["metadata"]["name"]
        assert manifest.startswith(name.removeprefix("realm-")), manifest
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app": name}
        rules = policy["spec"]["ingress"]
        peers = [[peer["podSelector"]["matchLabels"] for peer in rule["from"]] for rule in rules]
        assert peers == allowed[manifest]


def test_the_retrievers_follow_a_three_server_jetstream_cluster_on_volumes() -> None:
    """What replication needs of the manifests: three NATS servers that route to each other
    and keep JetStream on persistent volumes, and retrievers that name all three, with streams
    kept on all three (R3)."""
    documents = {d["kind"]: d for d in _documents(REPO / "deploy" / "kubernetes" / "nats.yaml")}
    nats = documents["StatefulSet"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    config = documents["ConfigMap"]["data"]["nats.conf"]
    assert "store_dir: /data/jetstream" in config
    pods = [f"realm-nats-{i}.realm-nats" for i in range(3)]
    assert all(f"nats://{pod}:6222" in config for pod in pods)
    retrievers = [w for _, w in _workloads() if w["kind"] == "StatefulSet"]
    assert len(retrievers) == 3  # retriever.yaml's, and retriever-sharded.yaml's two groups
    for retriever in retrievers:
        [container] = retriever["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["REALM_NATS_URL"].split(",") == [f"nats://{pod}:4222" for pod in pods]
        assert env["REALM_NATS_REPLICAS"] == "3"


def test_the_sharded_layout_keeps_two_replicas_of_every_shard_through_a_drain() -> None:
    """retriever-sharded.yaml: every shard of a 4-shard collection is held by two replicas,
    each group of replicas has a PodDisruptionBudget that lets one go at a time, and the
    replicas call each other over TLS at the names their Service gives them."""
    documents = _documents(REPO / "deploy" / "kubernetes" / "retriever-sharded.yaml")
    groups = [d for d in documents if d["kind"] == "StatefulSet"]
    budgets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PodDisruptionBudget"}
    [service] = [d for d in documents if d["kind"] == "Service"]
    holders = dict.fromkeys(range(4), 0)
    for group in groups:
        spec = group["spec"]
        [container] = spec["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        for shard in env["REALM_SERVE_SHARDS"].split(","):
            holders[int(shard)] += spec["replicas"]
        assert env["REALM_PEER_TLS_CA"] == "/etc/realm/tls/ca.crt"
        assert env["REALM_HOST"] == "0.0.0.0"  # advertises the pod's DNS name
        assert spec["serviceName"] == service["metadata"]["name"]
        labels = spec["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        budget = budgets[group["metadata"]["name"]]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"] == labels
        assert spec["replicas"] >= 2
    assert holders == dict.fromkeys(range(4), 2)


def test_the_manifests_match_the_kubernetes_schemas() -> None:
    for path in MANIFESTS:
        for document in _documents(path):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    [(_, workload)] = [w for w in _workloads() if w[1]["kind"] == "Deployment"]
    misspelt = copy.deepcopy(workload)
    misspelt["spec"]["template"]["spec"]["securityContext"]["runAsNonRoots"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
