"""deploy/kubernetes/: the manifests parse, their ports and names agree with the CLIs,
and they are secure by default (issue 14): mTLS between the LB and the runners with
certificates from Secrets that the documented recipe makes, no plaintext runner port,
and NetworkPolicies that admit only the LB to the runners and only Prometheus to
the metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fnlb.cli import build_parser, config_from_args
from fnlb.config import split_hostport
from fnlb.harness import running
from fnlb.pools.dns import parse_discovery
from fnlb.v1 import lb_pb2, lb_pb2_grpc
from runner_stub.cli import parse_config

yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) parses the manifests")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OPTIONAL_CERT_MANAGER = DEPLOY / "optional" / "cert-manager.yaml"
README = DEPLOY / "README.md"
LB = ("Deployment", "fnlb")
RUNNERS = ("Deployment", "runners")


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


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def lb_config(docs: dict[tuple[str, str], dict[str, Any]]) -> Any:
    return config_from_args(build_parser().parse_args(container(docs[LB])["args"]))


def runner_config(docs: dict[tuple[str, str], dict[str, Any]]) -> Any:
    return parse_config(container(docs[RUNNERS])["args"], environ={})


def lb_tls_files(cfg: Any) -> dict[str, str | None]:
    """The LB's runner-side --tls-cert/--tls-key/--tls-ca (None: not given)."""
    tls = cfg.runner_tls
    return {"--tls-cert": str(tls.cert) if tls else None,
            "--tls-key": str(tls.key) if tls else None,
            "--tls-ca": str(tls.ca) if tls and tls.ca else None}


def runner_tls_files(cfg: Any) -> dict[str, str | None]:
    return {"--tls-cert": cfg.tls_cert or None, "--tls-key": cfg.tls_key or None,
            "--tls-ca": cfg.tls_ca or None}


def secret_file(deployment: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) that the file ``path`` of the pod comes from (read-only mount)."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            prefix = m["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix) and "secret" in volumes[m["name"]]:
                assert m.get("readOnly") is True, f"{m['name']} is mounted writable"
                assert "subPath" not in m, "a subPath mount never sees a rotated Secret"
                return volumes[m["name"]]["secret"]["secretName"], path[len(prefix):]
    raise AssertionError(f"{path} is not a file of a mounted Secret")


# --- the recipe in README.md ----------------------------------------------------------------


def readme_commands() -> list[str]:
    """Every command line of the README's ``sh`` blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no sh blocks"
    lines: list[str] = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", "", block)
        lines += [ln.strip() for ln in joined.splitlines() if ln.strip()]
    return lines


def recipe_certs() -> list[list[str]]:
    return [shlex.split(c) for c in readme_commands() if c.startswith("fnlb certs ")]


def recipe_secrets() -> dict[str, tuple[list[str], dict[str, str]]]:
    """Secret name -> (the kubectl command left of its pipe, {key: local file})."""
    secrets: dict[str, tuple[list[str], dict[str, str]]] = {}
    for line in readme_commands():
        if " create secret " not in line:
            continue
        left, sep, right = line.partition("|")
        assert sep and right.strip() == "kubectl apply -f -", f"not create-or-update: {line}"
        argv = shlex.split(left)
        assert argv[:5] == ["kubectl", "-n", "fnlb", "create", "secret"], line
        name = argv[argv.index("generic") + 1]
        files = dict(a.removeprefix("--from-file=").split("=", 1)
                     for a in argv if a.startswith("--from-file="))
        assert name not in secrets, f"secret {name} made twice"
        secrets[name] = (argv, files)
    return secrets


def cert_manager_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(OPTIONAL_CERT_MANAGER.read_text()) if d]


# --- shape -----------------------------------------------------------------------------------


def test_every_manifest_is_listed_and_parses() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    docs = load()
    assert {("Namespace", "fnlb"), ("Service", "fnlb"), LB, ("Service", "runners"), RUNNERS,
            ("NetworkPolicy", "fnlb-default-deny-ingress"),
            ("NetworkPolicy", "fnlb-runners-from-lb"), ("NetworkPolicy", "fnlb-front-door"),
            ("NetworkPolicy", "fnlb-metrics-from-prometheus")} <= set(docs)
    # The optional file is not applied by `kubectl apply -k`, and says so at the top.
    assert "optional/cert-manager.yaml" not in listed
    assert OPTIONAL_CERT_MANAGER.read_text().startswith("# OPTIONAL:")
    assert cert_manager_docs()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_same_objects() -> None:
    """`kubectl apply -k` sees what these tests see (YAML anchors expanded, modes kept)."""
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    assert built == load()


def test_only_known_containers() -> None:
    """The checks below know two containers; a third must be added to them first."""
    docs = load()
    deployments = {k: d for k, d in docs.items() if k[0] == "Deployment"}
    assert set(deployments) == {LB, RUNNERS}
    assert container(docs[LB])["command"] == ["fnlb"]
    assert container(docs[LB])["args"][0] == "serve"
    assert container(docs[RUNNERS])["command"] == ["runner-stub"]


def test_services_select_their_pods_and_target_real_ports() -> None:
    docs = load()
    for name in ("fnlb", "runners"):
        svc, dep = docs[("Service", name)], docs[("Deployment", name)]
        labels = pod_labels(dep)
        assert svc["spec"]["selector"].items() <= labels.items()
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert svc["metadata"]["namespace"] == dep["metadata"]["namespace"] == "fnlb"
        for port in svc["spec"]["ports"]:
            assert container_port(container(dep), port["targetPort"]) == port["port"]
    assert docs[("Service", "runners")]["spec"]["clusterIP"] == "None"  # headless: A per pod
    # The two kinds of pods must be told apart by the NetworkPolicies' selectors.
    assert pod_labels(docs[LB]) != pod_labels(docs[RUNNERS])


def test_lb_args_parse_and_point_at_the_runner_service() -> None:
    docs = load()
    lb = container(docs[LB])
    cfg = lb_config(docs)  # validates every value like `fnlb serve` would
    target = parse_discovery(cfg.discovery)
    svc = docs[("Service", "runners")]
    assert target.name == f"runners.{svc['metadata']['namespace']}.svc.cluster.local"
    assert target.port == svc["spec"]["ports"][0]["port"]
    listen_port = split_hostport(cfg.listen, "--listen")[1]
    metrics_port = split_hostport(cfg.metrics_listen, "--metrics-listen")[1]
    assert container_port(lb, "grpc") == listen_port
    assert container_port(lb, "metrics") == metrics_port
    assert lb["readinessProbe"]["grpc"]["port"] == listen_port
    annotations = docs[LB]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    # Admin stays on loopback: not a container port, not in the Service.
    admin_host, admin_port = split_hostport(cfg.admin_listen, "--admin-listen")
    assert admin_host == "127.0.0.1"
    assert all(p["containerPort"] != admin_port for p in lb["ports"])
    assert all(p["port"] != admin_port for p in docs[("Service", "fnlb")]["spec"]["ports"])
    grace = docs[LB]["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > cfg.drain_grace


def test_runner_args_parse_and_match_ports() -> None:
    docs = load()
    runner = container(docs[RUNNERS])
    cfg = runner_config(docs)
    port = int(cfg.listen.rsplit(":", 1)[1])
    assert cfg.listen.startswith("0.0.0.0:")  # reachable by pod IP
    assert container_port(runner, "grpc") == port
    spec = docs[RUNNERS]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > cfg.drain_grace


# --- mTLS ------------------------------------------------------------------------------------


def test_the_lb_talks_to_runners_over_mtls_with_files_from_a_secret() -> None:
    docs = load()
    cfg = lb_config(docs)
    files = lb_tls_files(cfg)
    assert all(files.values()), f"the LB dials runners in plaintext: {files}"
    secrets = {secret_file(docs[LB], str(path))[0] for path in files.values()}
    assert len(secrets) == 1, f"certificate, key and CA from one Secret, not {secrets}"
    # Runner pods are dialled by IP: the name in their shared certificate is pinned.
    assert cfg.runner_server_name == "runners.fnlb.svc.cluster.local"


def test_no_runner_listens_without_tls() -> None:
    docs = load()
    runner = container(docs[RUNNERS])
    cfg = runner_config(docs)
    # With all three the stub serves mutual TLS only (the config refuses one or two alone).
    files = runner_tls_files(cfg)
    assert cfg.tls and all(files.values()), f"the runner listens in plaintext: {files}"
    secrets = {secret_file(docs[RUNNERS], str(path))[0] for path in files.values()}
    assert len(secrets) == 1, f"certificate, key and CA from one Secret, not {secrets}"
    # The stub listens on one port only; no other port is declared or served.
    port = int(cfg.listen.rsplit(":", 1)[1])
    assert [p["containerPort"] for p in runner["ports"]] == [port]
    assert [p["port"] for p in docs[("Service", "runners")]["spec"]["ports"]] == [port]
    # The kubelet's grpc/http/tcp probes cannot do mTLS: probes run inside the pod.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in runner:
            assert set(runner[probe]) & {"grpc", "httpGet", "tcpSocket"} == set(), probe
            assert "exec" in runner[probe], probe


def test_secret_files_are_readable_only_by_the_pod_user() -> None:
    docs = load()
    for key in (LB, RUNNERS):
        spec = docs[key]["spec"]["template"]["spec"]
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["fsGroup"] == ctx["runAsGroup"]
        assert spec["automountServiceAccountToken"] is False
        for v in spec["volumes"]:
            if "secret" in v:
                assert v["secret"]["defaultMode"] & 0o007 == 0, f"{key}: world-readable keys"
        c = container(docs[key])
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_every_secret_the_pods_mount_is_made_by_the_recipe_with_the_keys_they_read() -> None:
    docs = load()
    wanted: dict[str, set[str]] = {}
    for key, files in ((LB, lb_tls_files(lb_config(docs))),
                       (RUNNERS, runner_tls_files(runner_config(docs)))):
        for path in files.values():
            name, item = secret_file(docs[key], str(path))
            wanted.setdefault(name, set()).add(item)
    assert set(wanted) == {"fnlb-lb-tls", "fnlb-runner-tls"}
    made = recipe_secrets()
    assert set(made) == set(wanted), "the README recipe makes other Secrets than the pods mount"
    for name, (_, files) in made.items():
        assert set(files) == wanted[name] == {"tls.crt", "tls.key", "ca.crt"}
    # The recipe issues every file it puts into a Secret (the CA by init, the rest by issue).
    issued = set()
    for argv in recipe_certs():
        if argv[2] == "init":
            issued.add(f"{argv[argv.index('--out') + 1]}/ca.crt")
        else:
            out, name = argv[argv.index("--out") + 1], argv[argv.index("--name") + 1]
            issued |= {f"{out}/{name}.crt", f"{out}/{name}.key"}
    for _, files in made.values():
        assert set(files.values()) <= issued
    # The runner certificate carries the name the LB pins.
    runner_crt = made["fnlb-runner-tls"][1]["tls.crt"]
    (issue,) = [a for a in recipe_certs() if a[2] == "issue"
                and runner_crt == f"{a[a.index('--out') + 1]}/{a[a.index('--name') + 1]}.crt"]
    sans = [issue[i + 1] for i, a in enumerate(issue) if a == "--san"]
    assert lb_config(docs).runner_server_name in sans
    # The CA key never goes into the cluster.
    assert not any(f.endswith("ca.key") for _, files in made.values() for f in files.values())


def test_optional_cert_manager_makes_the_same_secrets() -> None:
    docs = load()
    certs = {d["spec"]["secretName"]: d for d in cert_manager_docs()
             if d["kind"] == "Certificate" and not d["spec"].get("isCA")}
    assert set(certs) == set(recipe_secrets()) == {"fnlb-lb-tls", "fnlb-runner-tls"}
    issuers = {d["metadata"]["name"]: d for d in cert_manager_docs() if d["kind"] == "Issuer"}
    for d in cert_manager_docs():
        assert d["metadata"]["namespace"] == "fnlb"
    for cert in certs.values():
        assert cert["spec"]["issuerRef"]["name"] in issuers
        assert "ca" in issuers[cert["spec"]["issuerRef"]["name"]]["spec"]  # ca.crt gets filled
    runner, lb = certs["fnlb-runner-tls"]["spec"], certs["fnlb-lb-tls"]["spec"]
    assert lb_config(docs).runner_server_name in runner["dnsNames"]
    # server auth for the LB; client auth for the runner's own health probe.
    assert {"server auth", "client auth"} <= set(runner["usages"])
    assert "client auth" in lb["usages"]


# --- NetworkPolicy ---------------------------------------------------------------------------

ANYONE = "anyone"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions: teach this test first"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def policies(docs: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    found = [d for (kind, _), d in docs.items() if kind == "NetworkPolicy"]
    for p in found:
        assert p["metadata"]["namespace"] == "fnlb"
        assert p["spec"]["policyTypes"] == ["Ingress"], p["metadata"]["name"]
    return found


def admitted(docs: dict[tuple[str, str], dict[str, Any]], dep: dict[str, Any],
             port: int) -> set[str]:
    """Peers (as JSON) that the policies let reach port ``port`` of ``dep``'s pods."""
    labels, c = pod_labels(dep), container(dep)
    peers: set[str] = set()
    for p in policies(docs):
        if not selects(p["spec"]["podSelector"], labels):
            continue
        for rule in p["spec"].get("ingress", []):
            ports = [container_port(c, x["port"]) if isinstance(x["port"], str) else x["port"]
                     for x in rule.get("ports", [{"port": port}])]
            if port in ports:
                peers |= ({json.dumps(x, sort_keys=True) for x in rule["from"]}
                          if "from" in rule else {ANYONE})
    return peers


def opened_ports(docs: dict[tuple[str, str], dict[str, Any]], dep: dict[str, Any]) -> set[Any]:
    """Every port some rule opens on ``dep``'s pods; ANYONE if a rule names no port."""
    c, opened = container(dep), set()
    for p in policies(docs):
        if selects(p["spec"]["podSelector"], pod_labels(dep)):
            for rule in p["spec"].get("ingress", []):
                if "ports" not in rule:
                    opened.add(ANYONE)
                for x in rule.get("ports", []):
                    assert x.get("protocol", "TCP") == "TCP" and "endPort" not in x
                    opened.add(container_port(c, x["port"]) if isinstance(x["port"], str)
                               else x["port"])
    return opened


def test_every_pod_is_isolated_by_default() -> None:
    docs = load()
    deny = docs[("NetworkPolicy", "fnlb-default-deny-ingress")]["spec"]
    assert deny["podSelector"] == {} and "ingress" not in deny


def test_only_the_lb_reaches_the_runners_and_only_on_their_port() -> None:
    docs = load()
    runners, port = docs[RUNNERS], int(runner_config(docs).listen.rsplit(":", 1)[1])
    (peer,) = [json.loads(p) for p in admitted(docs, runners, port) - {ANYONE}]
    assert admitted(docs, runners, port) == {json.dumps(peer, sort_keys=True)}
    assert set(peer) == {"podSelector"}  # same namespace, no ipBlock
    assert selects(peer["podSelector"], pod_labels(docs[LB]))
    assert not selects(peer["podSelector"], pod_labels(runners))
    assert opened_ports(docs, runners) == {port}


def test_clients_reach_the_front_door_and_only_prometheus_the_metrics() -> None:
    docs = load()
    cfg, lb = lb_config(docs), docs[LB]
    listen = split_hostport(cfg.listen, "--listen")[1]
    metrics = split_hostport(cfg.metrics_listen, "--metrics-listen")[1]
    admin = split_hostport(cfg.admin_listen, "--admin-listen")[1]
    assert admitted(docs, lb, listen) == {ANYONE}
    (peer,) = [json.loads(p) for p in admitted(docs, lb, metrics)]
    # One peer with both selectors (two peers would admit either alone).
    assert set(peer) == {"namespaceSelector", "podSelector"}
    (ns,) = peer["namespaceSelector"]["matchLabels"].items()
    (pod,) = peer["podSelector"]["matchLabels"].items()
    assert ns[0] == "kubernetes.io/metadata.name"
    assert selects(peer["podSelector"], {pod[0]: pod[1]})
    assert not selects(peer["podSelector"], pod_labels(lb))
    readme = README.read_text()
    assert f"namespace `{ns[1]}`" in readme and f"`{pod[0]}={pod[1]}`" in readme
    assert opened_ports(docs, lb) == {listen, metrics}
    assert admitted(docs, lb, admin) == set()
    # Nothing reaches the runners' pods through the LB's policies or vice versa.
    assert admitted(docs, docs[RUNNERS], listen) == set()


def test_metrics_on_the_pod_ip_are_deliberate_and_say_so() -> None:
    lines = (DEPLOY / "lb.yaml").read_text().splitlines()
    (i,) = [i for i, ln in enumerate(lines) if "--metrics-listen=" in ln]
    assert "--metrics-listen=0.0.0.0:" in lines[i]
    above = []
    for ln in reversed(lines[:i]):
        if not ln.strip().startswith("#"):
            break
        above.append(ln)
    comment = " ".join(above) + lines[i].partition("#")[2]
    assert "Prometheus" in comment and "fnlb-metrics-from-prometheus" in comment, comment
    assert "Deliberately" in comment, comment


# --- the recipe and the manifests, run ------------------------------------------------------


def mount_dirs(tmp: Path, made: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, Path]:
    """A directory per Secret holding its keys as files, as the kubelet would mount it."""
    dirs = {}
    for name, (_, files) in made.items():
        d = tmp / "mounts" / name
        d.mkdir(parents=True)
        for key, local in files.items():
            (d / key).write_bytes((tmp / local).read_bytes())
        dirs[name] = d
    return dirs


def rewrite(args: list[str], replace: dict[str, str], drop: set[str],
            mount: str, local: Path) -> list[str]:
    """``--flag=value`` args with some values replaced, some flags dropped, and the
    Secret's mount path pointing at ``local``; every flag named must be there."""
    out, seen = [], set()
    for a in args:
        flag, eq, value = a.partition("=")
        if flag in drop:
            seen.add(flag)
            continue
        if flag in replace:
            seen.add(flag)
            value = replace[flag]
        out.append(f"{flag}{eq}{value.replace(mount, str(local))}" if eq else a)
    assert seen == set(replace) | drop, f"missing in the manifest: {set(replace) | drop - seen}"
    return out


def mount_path(dep: dict[str, Any], volume: str) -> str:
    (m,) = [m for m in container(dep)["volumeMounts"] if m["name"] == volume]
    return str(m["mountPath"])


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """The README's `fnlb certs` lines, run as written in an empty directory."""
    for argv in recipe_certs():
        subprocess.run([sys.executable, "-m", "fnlb", *argv[1:]], cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
    return tmp_path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_recipe_kubectl_lines_make_the_secrets_from_the_issued_files(recipe_dir: Path) -> None:
    """The left half of each `kubectl create secret ... | kubectl apply -f -` line, run
    as written (--dry-run=client needs no cluster)."""
    for name, (argv, files) in recipe_secrets().items():
        out = subprocess.run(argv, cwd=recipe_dir, check=True, capture_output=True,
                             timeout=60).stdout
        secret = yaml.safe_load(out)
        assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", name)
        assert (secret["metadata"]["namespace"], secret["type"]) == ("fnlb", "kubernetes.io/tls")
        assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
            k: (recipe_dir / f).read_bytes() for k, f in files.items()}


@pytest.mark.slow
async def test_recipe_and_manifests_serve_a_call_over_mtls(recipe_dir: Path) -> None:
    """Mounts the recipe's Secrets as files, starts the runner and the LB with the
    manifests' own args (addresses made local), probes the runner and calls."""
    dirs = mount_dirs(recipe_dir, recipe_secrets())
    docs = load()
    runner, lb = docs[RUNNERS], docs[LB]
    runner_mount, lb_mount = mount_path(runner, "tls"), mount_path(lb, "tls")
    runner_args = rewrite(container(runner)["args"], {"--listen": "127.0.0.1:0"}, set(),
                          runner_mount, dirs["fnlb-runner-tls"])
    manifest_addr = f"127.0.0.1:{runner_config(docs).listen.rsplit(':', 1)[1]}"
    with running("runner_stub", runner_args) as stub:
        # The pod's own probe, as written (paths and port made local), reaches the
        # runner over mTLS and reports it serving.
        probe = container(runner)["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["python", "-c"] and len(probe) == 3
        assert manifest_addr in probe[2] and runner_mount in probe[2]
        script = probe[2].replace(runner_mount, str(dirs["fnlb-runner-tls"])).replace(
            manifest_addr, stub.addr)
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script],
                                       capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        # Plaintext gets nothing from the runner, not even its health.
        async with grpc.aio.insecure_channel(stub.addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        lb_args = rewrite(
            container(lb)["args"],
            {"--listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0",
             "--admin-listen": "127.0.0.1:0", "--drain-grace": "1s"},
            {"--discovery", "--discovery-interval"}, lb_mount, dirs["fnlb-lb-tls"])
        # The runner dialled by IP, as in the cluster, and the manifest's name pinned.
        with running("fnlb", [*lb_args, f"--runners={stub.addr}"]) as front:
            async with grpc.aio.insecure_channel(front.addr) as ch:
                reply = await lb_pb2_grpc.LoadBalancerStub(ch).Invoke(
                    lb_pb2.InvokeRequest(fn_id="hello", body=b"hi"), timeout=20)
            assert (reply.status_code, reply.runner) == (200, stub.addr)
            assert "runner connections are plaintext" not in front.output()
