"""The deployment manifests stay in step with the code: every setting they pass exists, and the
probes and Services point at the ports the containers open."""

from pathlib import Path
from typing import Any

import typer.main
import yaml

from realm.cli.main import app
from tests.servers import REPO

MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _serve_envvars(service: str) -> set[str]:
    root: Any = typer.main.get_command(app)  # typer's own click groups
    command = root.commands["serve"].commands[service]
    return {p.envvar for p in command.params if isinstance(p.envvar, str)}


def test_there_is_a_manifest_per_service() -> None:
    assert [p.name for p in MANIFESTS] == ["generator.yaml", "retriever.yaml"]


def test_every_environment_setting_is_one_the_server_reads() -> None:
    for path in MANIFESTS:
        for document in _documents(path):
            if document["kind"] not in ("Deployment", "StatefulSet"):
                continue
            [container] = document["spec"]["template"]["spec"]["containers"]
            service = container["args"][1]
            known = _serve_envvars(service)
            names = {e["name"] for e in container["env"]}
            assert names <= known, f"{path.name}: unknown settings {sorted(names - known)}"


def test_probes_and_services_use_the_container_port() -> None:
    for path in MANIFESTS:
        documents = _documents(path)
        [workload] = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]
        [service] = [d for d in documents if d["kind"] == "Service"]
        [container] = workload["spec"]["template"]["spec"]["containers"]
        [port] = container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port["containerPort"]
        assert service["spec"]["clusterIP"] == "None", "clients balance per call over pods"
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["REALM_PORT"] == str(port["containerPort"])
