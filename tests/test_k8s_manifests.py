"""deploy/kubernetes/: the manifests parse, and their ports and names agree with the CLIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fnlb.cli import build_parser, config_from_args
from fnlb.config import split_hostport
from fnlb.pools.dns import parse_discovery
from runner_stub.cli import parse_config

yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) parses the manifests")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def load() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in docs, f"duplicate {key}"
                docs[key] = doc
    return docs


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def container_port(c: dict[str, Any], name_or_port: str | int) -> int:
    for p in c["ports"]:
        if name_or_port in (p["name"], p["containerPort"]):
            return int(p["containerPort"])
    raise AssertionError(f"no container port {name_or_port!r} in {c['name']}")


def test_every_manifest_is_listed_and_parses() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    docs = load()
    assert {("Namespace", "fnlb"), ("Service", "fnlb"), ("Deployment", "fnlb"),
            ("Service", "runners"), ("Deployment", "runners")} <= set(docs)


def test_services_select_their_pods_and_target_real_ports() -> None:
    docs = load()
    for name in ("fnlb", "runners"):
        svc, dep = docs[("Service", name)], docs[("Deployment", name)]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert svc["metadata"]["namespace"] == dep["metadata"]["namespace"] == "fnlb"
        for port in svc["spec"]["ports"]:
            assert container_port(container(dep), port["targetPort"]) == port["port"]
    assert docs[("Service", "runners")]["spec"]["clusterIP"] == "None"  # headless: A per pod


def test_lb_args_parse_and_point_at_the_runner_service() -> None:
    docs = load()
    lb = container(docs[("Deployment", "fnlb")])
    assert lb["command"] == ["fnlb"]
    args = build_parser().parse_args(lb["args"])
    cfg = config_from_args(args)  # validates every value like `fnlb serve` would
    target = parse_discovery(cfg.discovery)
    svc = docs[("Service", "runners")]
    assert target.name == f"runners.{svc['metadata']['namespace']}.svc.cluster.local"
    assert target.port == svc["spec"]["ports"][0]["port"]
    listen_port = split_hostport(cfg.listen, "--listen")[1]
    metrics_port = split_hostport(cfg.metrics_listen, "--metrics-listen")[1]
    assert container_port(lb, "grpc") == listen_port
    assert container_port(lb, "metrics") == metrics_port
    assert lb["readinessProbe"]["grpc"]["port"] == listen_port
    annotations = docs[("Deployment", "fnlb")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    # Admin stays on loopback: not a container port, not in the Service.
    admin_host, admin_port = split_hostport(cfg.admin_listen, "--admin-listen")
    assert admin_host == "127.0.0.1"
    assert all(p["containerPort"] != admin_port for p in lb["ports"])
    grace = docs[("Deployment", "fnlb")]["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > cfg.drain_grace


def test_runner_args_parse_and_match_ports() -> None:
    docs = load()
    runner = container(docs[("Deployment", "runners")])
    assert runner["command"] == ["runner-stub"]
    cfg = parse_config(runner["args"], environ={})
    port = int(cfg.listen.rsplit(":", 1)[1])
    assert cfg.listen.startswith("0.0.0.0:")  # reachable by pod IP
    assert container_port(runner, "grpc") == port
    assert runner["readinessProbe"]["grpc"]["port"] == port
    spec = docs[("Deployment", "runners")]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > cfg.drain_grace
