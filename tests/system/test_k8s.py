"""The container image and the Kubernetes manifests, checked offline.

Every manifest validates against the schemas of one pinned Kubernetes version;
the ConfigMap's settings pass `check-config` and really serve (a gateway started
on them answers the probe and scrape paths the Deployment names); the grace
period covers the drain the settings ask for; every workload runs locked down;
the Dockerfile lints clean and runs the gateway, non-root, in exec form.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import pytest
import yaml

from gateway.contract.settings import load_settings
from loadtest.harness import BIN, Gateway, Upstreams

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.34.0"
# What the grace period must leave over preStop + drain for the process to exit.
EXIT_SLACK_S = 5


def _docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def _all_docs() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in _docs(name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in _all_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def _gateway_container() -> dict[str, Any]:
    container: dict[str, Any] = _one("Deployment", "order-gateway")["spec"]["template"][
        "spec"]["containers"][0]
    return container


def _configmap_settings_text() -> str:
    text: str = _one("ConfigMap", "order-gateway")["data"]["gateway.yaml"]
    return text


def test_the_kustomization_applies_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("name", sorted(_kustomization()["resources"]))
def test_every_manifest_validates_against_the_pinned_kubernetes(name: str) -> None:
    for doc in _docs(name):
        # strict: unknown fields are errors too (a typo is not silently ignored).
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_configmap_settings_pass_check_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(_configmap_settings_text())
    result = subprocess.run([str(BIN / "order-gateway"), "check-config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ports_probes_and_scrape_path_agree_with_a_gateway_on_these_settings(
        log_dir: Path, upstreams: Upstreams) -> None:
    settings = yaml.safe_load(_configmap_settings_text())
    container = _gateway_container()
    assert container["ports"][0]["containerPort"] == settings["server"]["port"]
    annotations = _one("Deployment", "order-gateway")["spec"]["template"]["metadata"][
        "annotations"]
    assert int(annotations["prometheus.io/port"]) == settings["server"]["port"]
    probes = {name: container[name]["httpGet"]
              for name in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert [p["path"] for p in probes.values()] == ["/healthz", "/readyz", "/healthz"]
    assert {p["port"] for p in probes.values()} == {container["ports"][0]["name"]}
    # The same settings, on loopback and in front of the simulators, must serve them.
    del settings["server"]["host"], settings["server"]["port"]  # loopback, a free port
    for name, url in upstreams.urls.items():
        settings["upstreams"][name]["url"] = url
    gw = Gateway(log_dir, upstreams.urls, config=settings)
    try:
        for path in ("/healthz", "/readyz", annotations["prometheus.io/path"]):
            with urllib.request.urlopen(gw.url + path, timeout=5) as resp:
                assert resp.status == 200, path
    finally:
        gw.stop()


def test_the_grace_period_covers_prestop_and_the_drain(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(_configmap_settings_text())
    settings = load_settings(path, env={})
    spec = _one("Deployment", "order-gateway")["spec"]["template"]["spec"]
    pre_stop = _gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = (float(pre_stop[1]) + settings.server.drain_delay_s
              + settings.server.drain_timeout_s + EXIT_SLACK_S)
    assert spec["terminationGracePeriodSeconds"] >= needed
    # A readiness probe that notices the drain well inside the drain delay.
    probe = _gateway_container()["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < settings.server.drain_delay_s


def test_rollouts_keep_capacity_and_scale_up_faster_than_down() -> None:
    deployment = _one("Deployment", "order-gateway")["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["replicas"] >= 3
    hpa = _one("HorizontalPodAutoscaler", "order-gateway")["spec"]
    assert hpa["minReplicas"] == deployment["replicas"]
    behavior = hpa["behavior"]
    assert (behavior["scaleUp"]["stabilizationWindowSeconds"]
            < behavior["scaleDown"]["stabilizationWindowSeconds"])
    assert _one("PodDisruptionBudget", "order-gateway")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("kind,name", [("Deployment", "order-gateway"),
                                       ("StatefulSet", "redis")])
def test_workloads_run_locked_down(kind: str, name: str) -> None:
    pod = _one(kind, name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"] and "requests" in container["resources"]
        assert not container["image"].endswith(":latest") and ":" in container["image"]


def test_every_secret_and_config_reference_exists() -> None:
    secret_keys = set(_one("Secret", "order-gateway")["stringData"])
    for kind, name in (("Deployment", "order-gateway"), ("StatefulSet", "redis")):
        for container in _one(kind, name)["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "order-gateway" and ref["key"] in secret_keys
    volumes = _one("Deployment", "order-gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "order-gateway"} in [v.get("configMap") for v in volumes]


def test_the_dockerfile_lints_clean_and_runs_the_gateway_non_root() -> None:
    lint = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert len(stages) == 2, "multi-stage: build, then a final stage without build tools"
    for image in stages:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image
    final = text.split("\nFROM ")[-1]
    assert 'ENTRYPOINT ["order-gateway", "serve"]' in final  # exec form: SIGTERM reaches it
    assert re.search(r"^USER 10001", final, flags=re.M)
    assert "pip install" not in final and "apt-get" not in final
    assert _gateway_container()["securityContext"]["readOnlyRootFilesystem"]
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[0] == "*" or "*" in ignore, ".dockerignore lets in only what the image needs"


# -- monitoring (Prometheus Operator CRDs: checked for shape, then against real metrics) -----

MONITORING = K8S / "monitoring"
METRIC = re.compile(r"\b(gateway_[a-z_]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _alert_rules() -> list[dict[str, Any]]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = orjson.loads((MONITORING / "grafana-dashboard.json").read_bytes())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_the_monitoring_kustomization_lists_its_files() -> None:
    data = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    listed = set(data["resources"]) | {
        f for gen in data["configMapGenerator"] for f in gen["files"]}
    assert listed == {p.name for p in MONITORING.iterdir()} - {"kustomization.yaml"}
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    service_ports = {p["name"] for p in _one("Service", "order-gateway")["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["port"] in service_ports


def test_alert_rules_cover_the_incidents_the_issue_names() -> None:
    names = {r["alert"] for r in _alert_rules()}
    assert {"OrderGatewayBreakerOpen", "OrderGatewayShedding", "OrderGatewayRedisUnavailable",
            "OrderGatewayBackendErrors", "OrderGatewayLatencyP99",
            "OrderGatewayPaymentOutcomeUnknown", "OrderGatewayReplicaAcksMissing",
            "OrderGatewayWaitingRoomStalled"} <= names
    runbooks = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in (K8S.parent / "docs" / "operations.md").read_text().splitlines()
                if line.startswith("#")}
    for rule in _alert_rules():
        assert rule["for"] and rule["labels"]["severity"] and rule["annotations"]["summary"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in runbooks, rule["alert"]


def test_every_alert_and_panel_names_a_metric_the_gateway_exports(
        log_dir: Path, upstreams: Upstreams) -> None:
    gw = Gateway(log_dir, upstreams.urls)
    try:
        with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        gw.stop()
    exported = {_family(name) for name in re.findall(r"^# TYPE (\S+) ", text, flags=re.M)}
    named = {_family(m) for expr in [r["expr"] for r in _alert_rules()] + _dashboard_exprs()
             for m in METRIC.findall(expr)}
    assert named, "the rules and the dashboard name metrics"
    assert named <= exported, f"not exported: {sorted(named - exported)}"


def test_the_shipped_redis_is_bounded_and_never_evicts_a_live_record() -> None:
    redis = _one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    settings = dict(zip(args[::2], args[1::2], strict=False))
    assert settings["--maxmemory-policy"] == "noeviction"
    assert settings["--maxmemory"].endswith("mb")
    limit_mib = int(redis["resources"]["limits"]["memory"].removesuffix("Mi"))
    assert int(settings["--maxmemory"].removesuffix("mb")) < 0.7 * limit_mib, \
        "room for the append-only file's rewrite"
    assert int(settings["--hash-max-listpack-value"]) >= 1024
