#!/usr/bin/env python3
"""Assertions on the rendered ryze-events chart (run by deploy/helm-lint.sh).

`helm lint` and schema validation prove the chart renders valid objects; these tests prove the
objects say what the operator needs: autoscaling on connections, a grace period that covers the
drain, an internal-only publisher, no secret values, hardened pods, stable selectors.

Environment: HELM (helm binary), HELM_KUBE_VERSION, CHART (chart directory), NODE_TOOLS (node
prefix with @kubernetes-models/keda and @kubernetes-models/prometheus-operator). Python stdlib
plus PyYAML. Each test is a function whose name is a sentence; the closing line is
"chart-tests: N passed, M failed" and the exit status is 1 when any failed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

HELM = os.environ.get("HELM", "helm")
KUBE_VERSION = os.environ.get("HELM_KUBE_VERSION", "1.35.0")
CHART = Path(os.environ.get("CHART", Path(__file__).resolve().parents[2] / "helm" / "ryze-events"))
NODE_TOOLS = os.environ.get("NODE_TOOLS", "")
HERE = Path(__file__).resolve().parent

SCENARIOS = sorted(p.name[: -len("-values.yaml")] for p in (CHART / "ci").glob("*-values.yaml"))
SECRET_ENV = {"DATABASE_URL", "REDIS_URL", "PUBLISHER_API_KEY", "ENCRYPTION_KEY", "REGION_REDIS_URLS"}
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
REQUIRED = ["--set", "secrets.existingSecret=ryze-secrets", "--set", "config.publicBaseUrl=https://events.example.com"]

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class RenderError(Exception):
    pass


def helm_template(*args: str) -> str:
    cmd = [HELM, "template", "ryze", str(CHART), "--namespace", "ryze", "--kube-version", KUBE_VERSION, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


@functools.lru_cache(maxsize=None)
def render_text(*args: str) -> str:
    return helm_template(*args)


Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=Loader) if d]


@functools.lru_cache(maxsize=None)
def render(*args: str) -> list[dict]:
    """Parsed objects of one render (cached: tests must not mutate them)."""
    return load_all(render_text(*args))


def scenario_args(name: str) -> tuple[str, ...]:
    return ("-f", str(CHART / "ci" / f"{name}-values.yaml"))


def scenario(name: str, *extra: str) -> list[dict]:
    return render(*scenario_args(name), *extra)


def all_scenarios():
    for name in SCENARIOS:
        yield name, scenario(name)


def of_kind(docs, kind, name_suffix=None):
    found = [d for d in docs if d.get("kind") == kind]
    if name_suffix is not None:
        found = [d for d in found if d["metadata"]["name"].endswith(name_suffix)]
    return found


def one(docs, kind, name_suffix=None):
    found = of_kind(docs, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix or ''}, found {len(found)}"
    return found[0]


def render_fails(*args: str) -> str:
    try:
        helm_template(*args)
    except RenderError as e:
        return str(e)
    raise AssertionError(f"render with {' '.join(args)} should have failed")


def duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    assert m, f"not a duration: {text!r}"
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def pod_templates(docs):
    """(owner name, pod template) for every workload."""
    for d in docs:
        if d.get("kind") in ("Deployment", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]


def configmap_env(docs, deployment) -> dict:
    names = [
        ref["configMapRef"]["name"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for ref in c.get("envFrom", [])
        if "configMapRef" in ref
    ]
    env = {}
    for name in names:
        env.update(next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == name)["data"])
    return env


def prestop_seconds(container) -> int:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre["exec"]["command"]
    assert cmd[0] == "sleep", cmd
    return int(cmd[1])


# --- autoscaling ----------------------------------------------------------------------------


@test
def hpa_targets_ryze_gateway_connections_as_a_pods_metric():
    docs = scenario("autoscaling-hpa")
    values = yaml.safe_load((CHART / "ci" / "autoscaling-hpa-values.yaml").read_text())
    hpa = one(docs, "HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ryze-ryze-events-gateway"}
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1, hpa["spec"]["metrics"]
    assert pods[0]["pods"]["metric"]["name"] == "ryze_gateway_connections"
    target = pods[0]["pods"]["target"]
    assert target["type"] == "AverageValue"
    assert int(target["averageValue"]) == values["gateway"]["autoscaling"]["targetConnectionsPerPod"]


@test
def hpa_keeps_cpu_as_a_fallback_metric():
    hpa = one(scenario("autoscaling-hpa"), "HorizontalPodAutoscaler", "-gateway")
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert len(cpu) == 1 and cpu[0]["resource"]["target"]["type"] == "Utilization"
    gateway = one(scenario("autoscaling-hpa"), "Deployment", "-gateway")
    assert gateway["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"], "CPU metric needs requests"


@test
def gateway_scale_down_is_slow_and_one_step_at_a_time():
    for name in ("autoscaling-hpa", "autoscaling-keda"):
        docs = scenario(name)
        if name == "autoscaling-hpa":
            behavior = one(docs, "HorizontalPodAutoscaler", "-gateway")["spec"]["behavior"]
        else:
            behavior = one(docs, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        down, up = behavior["scaleDown"], behavior["scaleUp"]
        assert down["stabilizationWindowSeconds"] >= 300, down
        assert down["selectPolicy"] == "Min", down
        pods = [p for p in down["policies"] if p["type"] == "Pods"]
        assert pods and all(p["value"] <= 2 and p["periodSeconds"] >= 60 for p in pods), down
        assert up["stabilizationWindowSeconds"] < down["stabilizationWindowSeconds"], (up, down)


@test
def keda_scaledobject_is_rendered_only_when_enabled():
    for name, docs in all_scenarios():
        enabled = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()).get("gateway", {}).get(
            "autoscaling", {}).get("keda", {}).get("enabled", False)
        assert len(of_kind(docs, "ScaledObject")) == (1 if enabled else 0), name
        if enabled:
            assert not of_kind(docs, "HorizontalPodAutoscaler", "-gateway"), f"{name}: KEDA owns the gateway HPA"
    assert not of_kind(render(*REQUIRED), "ScaledObject"), "chart defaults render no ScaledObject"


@test
def keda_scaledobject_uses_a_prometheus_trigger_on_connections_and_cpu():
    so = one(scenario("autoscaling-keda"), "ScaledObject")
    values = yaml.safe_load((CHART / "ci" / "autoscaling-keda-values.yaml").read_text())
    assert so["spec"]["scaleTargetRef"]["name"] == "ryze-ryze-events-gateway"
    prom = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    assert len(prom) == 1
    assert prom[0]["metricType"] == "AverageValue"
    meta = prom[0]["metadata"]
    assert "ryze_gateway_connections" in meta["query"] and 'namespace="ryze"' in meta["query"], meta["query"]
    assert int(meta["threshold"]) == values["gateway"]["autoscaling"]["targetConnectionsPerPod"]
    assert meta["serverAddress"].startswith("http")
    assert any(t["type"] == "cpu" for t in so["spec"]["triggers"]), "CPU fallback trigger"


@test
def hpa_and_keda_together_are_refused():
    err = render_fails(*REQUIRED, "--set", "gateway.autoscaling.hpa.enabled=true",
                       "--set", "gateway.autoscaling.keda.enabled=true",
                       "--set", "gateway.autoscaling.keda.prometheus.serverAddress=http://prom:9090")
    assert "not both" in err, err


@test
def replicas_are_left_to_the_autoscaler_when_one_is_enabled():
    for name, docs in all_scenarios():
        gw = one(docs, "Deployment", "-gateway")
        autoscaled = bool(of_kind(docs, "HorizontalPodAutoscaler", "-gateway") or of_kind(docs, "ScaledObject"))
        assert ("replicas" in gw["spec"]) != autoscaled, name


@test
def autoscaling_is_off_by_default():
    docs = render(*REQUIRED)
    for kind in ("HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget", "ServiceMonitor", "Ingress"):
        assert not of_kind(docs, kind), f"{kind} must be off by default"


@test
def prometheus_adapter_rule_serves_the_metric_the_hpa_asks_for():
    docs = scenario("autoscaling-hpa")
    hpa = one(docs, "HorizontalPodAutoscaler", "-gateway")
    metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]["metric"]["name"]
    cm = one(docs, "ConfigMap", "-prometheus-adapter")
    assert cm["metadata"]["namespace"] == "monitoring"
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    assert any(r["name"]["as"] == metric and "ryze_gateway_connections" in r["seriesQuery"]
               and set(r["resources"]["overrides"]) == {"namespace", "pod"} for r in rules), rules


# --- shutdown and drain ---------------------------------------------------------------------


@test
def grace_period_covers_prestop_sleep_plus_shutdown_timeout():
    for name, docs in all_scenarios():
        for dep in of_kind(docs, "Deployment"):
            spec = dep["spec"]["template"]["spec"]
            container = spec["containers"][0]
            shutdown = duration_seconds(configmap_env(docs, dep)["SHUTDOWN_TIMEOUT"])
            needed = prestop_seconds(container) + shutdown
            grace = spec["terminationGracePeriodSeconds"]
            assert grace > needed, f"{name} {dep['metadata']['name']}: grace {grace}s <= preStop+SHUTDOWN_TIMEOUT {needed}s"


@test
def grace_period_follows_the_shutdown_values():
    docs = render(*REQUIRED, "--set", "gateway.shutdown.preStopSleepSeconds=20",
                  "--set", "gateway.shutdown.timeoutSeconds=90", "--set", "gateway.shutdown.graceMarginSeconds=7")
    gw = one(docs, "Deployment", "-gateway")
    assert gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 117
    assert configmap_env(docs, gw)["SHUTDOWN_TIMEOUT"] == "90s"
    assert prestop_seconds(gw["spec"]["template"]["spec"]["containers"][0]) == 20


@test
def drain_at_the_autoscaling_target_fits_in_shutdown_timeout():
    for name in ("autoscaling-hpa", "autoscaling-keda", "multi-region"):
        docs = scenario(name)
        values = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
        target = values["gateway"]["autoscaling"].get("targetConnectionsPerPod", 20000)
        env = configmap_env(docs, one(docs, "Deployment", "-gateway"))
        drain = target / int(env["DRAIN_RATE"])
        assert drain <= duration_seconds(env["SHUTDOWN_TIMEOUT"]), f"{name}: drain {drain}s"


@test
def chart_refuses_an_autoscaling_target_that_cannot_drain_in_time():
    err = render_fails(*REQUIRED, "--set", "gateway.autoscaling.hpa.enabled=true",
                       "--set", "gateway.autoscaling.targetConnectionsPerPod=100000",
                       "--set", "gateway.config.drainRate=2000", "--set", "gateway.shutdown.timeoutSeconds=30")
    assert "drainRate" in err and "50s" in err, err


@test
def prestop_can_use_exec_sleep_for_older_clusters():
    gw = one(render(*REQUIRED, "--set", "gateway.shutdown.nativeSleepAction=false"), "Deployment", "-gateway")
    pre = gw["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
    assert pre == {"exec": {"command": ["sleep", "10"]}}, pre


@test
def gateway_rollout_surges_and_never_removes_a_pod_first():
    gw = one(render(*REQUIRED), "Deployment", "-gateway")
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# --- probes and ports ---------------------------------------------------------------------------


@test
def gateway_probes_hit_readyz_and_livez_on_the_admin_port():
    for name, docs in all_scenarios():
        c = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": 8080, "admin": 9090}, ports
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, (name, c["readinessProbe"])
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}, (name, c["livenessProbe"])
        env = configmap_env(docs, one(docs, "Deployment", "-gateway"))
        assert env["ADMIN_LISTEN_ADDR"] == "0.0.0.0:9090" and env["LISTEN_ADDR"] == "0.0.0.0:8080"


@test
def publisher_probes_hit_readyz_and_livez():
    c = one(render(*REQUIRED), "Deployment", "-publisher")["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"


@test
def gateway_public_service_does_not_expose_the_admin_port():
    for name, docs in all_scenarios():
        svc = one(docs, "Service", "-gateway")
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"], name
        admin = one(docs, "Service", "-gateway-admin")
        assert admin["spec"]["type"] == "ClusterIP"


# --- publisher stays internal ------------------------------------------------------------------


@test
def publisher_service_is_cluster_ip_in_every_scenario():
    for name, docs in all_scenarios():
        for svc in of_kind(docs, "Service", "-publisher"):
            assert svc["spec"]["type"] == "ClusterIP", name
            assert all("nodePort" not in p for p in svc["spec"]["ports"]), name


@test
def publisher_service_type_cannot_be_changed():
    err = render_fails(*REQUIRED, "--set", "publisher.service.type=LoadBalancer")
    assert "type" in err, err


@test
def ingress_routes_only_to_the_gateway_public_port():
    seen = 0
    for name, docs in all_scenarios():
        for ing in of_kind(docs, "Ingress"):
            seen += 1
            for rule in ing["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    assert backend["name"] == "ryze-ryze-events-gateway", (name, backend)
                    assert backend["port"] == {"name": "http"}, (name, backend)
            assert "publisher" not in json.dumps(ing), name
    assert seen, "some scenario enables the Ingress"


@test
def ingress_carries_websocket_timeout_annotations():
    ing = one(scenario("autoscaling-hpa"), "Ingress")
    ann = ing["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600


@test
def publisher_network_policy_admits_only_configured_peers():
    for name, docs in all_scenarios():
        np = one(docs, "NetworkPolicy", "-publisher")
        assert np["spec"]["policyTypes"] == ["Ingress"]
        for rule in np["spec"]["ingress"]:
            assert rule.get("from"), f"{name}: a rule without `from` admits every source"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, name
    default = one(render(*REQUIRED), "NetworkPolicy", "-publisher")
    assert default["spec"]["ingress"][0]["from"] == [{"podSelector": {}}], "default: same namespace only"
    closed = one(render(*REQUIRED, "--set-json", "networkPolicy.publisher.from=[]"), "NetworkPolicy", "-publisher")
    assert closed["spec"]["ingress"] == [], "no peers means deny all, never allow all"


@test
def gateway_admin_port_is_not_open_to_everyone():
    np = one(render(*REQUIRED), "NetworkPolicy", "-gateway")
    for rule in np["spec"]["ingress"]:
        if any(p["port"] == "admin" for p in rule.get("ports", [])):
            assert rule.get("from"), "admin port rule must name its sources"


# --- secrets ----------------------------------------------------------------------------------


DUMMY = {
    "DATABASE_URL": "postgres://ryze:S3NTINEL-db-password@db.internal:5432/ryze",
    "REDIS_URL": "rediss://:S3NTINEL-redis-password@redis.internal:6380",
    "PUBLISHER_API_KEY": "S3NTINEL-publisher-key",
    "ENCRYPTION_KEY": "UzNOVElORUwtZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM=",
    "REGION_REDIS_URLS": "eu=rediss://:S3NTINEL-eu@eu.internal:6380,us=rediss://:S3NTINEL-us@us.internal:6380",
}


@test
def no_secret_value_appears_in_rendered_manifests():
    # The dummy Secret exists only as its own manifest; the chart gets nothing but its name.
    with tempfile.TemporaryDirectory() as tmp:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ryze-dummy-secret"}, "stringData": DUMMY}
        (Path(tmp) / "secret.yaml").write_text(yaml.safe_dump(secret))
        for name in SCENARIOS:
            text = helm_template(*scenario_args(name), "--set", "secrets.existingSecret=ryze-dummy-secret")
            for key, value in DUMMY.items():
                assert value not in text, f"{name}: value of {key} rendered"
            assert "S3NTINEL" not in text, name
            assert not re.search(r"[a-z]+://[^\s/@:]*:[^\s/@]+@", text), f"{name}: URL with credentials rendered"
            docs = load_all(text)
            assert not of_kind(docs, "Secret"), f"{name}: the chart must not create Secrets"
            refs = 0
            for owner, tpl in pod_templates(docs):
                for c in tpl["spec"]["containers"]:
                    for env in c.get("env", []):
                        if env["name"] in SECRET_ENV:
                            assert "value" not in env, f"{name} {owner}: {env['name']} has a literal value"
                            ref = env["valueFrom"]["secretKeyRef"]
                            assert ref["name"] == "ryze-dummy-secret", (owner, ref)
                            refs += 1
            assert refs >= 3, f"{name}: expected secretKeyRefs, found {refs}"


@test
def secret_values_cannot_be_passed_inline():
    err = render_fails(*REQUIRED, "--set", "secrets.databaseUrl=postgres://u:p@h/db")
    assert "databaseUrl" in err, err
    err = render_fails(*REQUIRED, "--set", "gateway.extraEnv[0].name=DATABASE_URL",
                       "--set", "gateway.extraEnv[0].value=postgres://u:p@h/db")
    assert "existingSecret" in err, err
    err = render_fails(*REQUIRED, "--set", "publisher.extraEnv[0].name=PUBLISHER_API_KEY",
                       "--set", "publisher.extraEnv[0].value=k")
    assert "existingSecret" in err, err


@test
def rendering_without_existing_secret_fails_with_a_clear_message():
    err = render_fails("--set", "config.publicBaseUrl=https://events.example.com")
    assert "secrets.existingSecret is required" in err, err
    err = render_fails("--set", "secrets.existingSecret=s")
    assert "config.publicBaseUrl is required" in err, err


@test
def encryption_key_is_optional_and_other_secret_refs_are_not():
    docs = render(*REQUIRED)
    for dep in of_kind(docs, "Deployment"):
        for env in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
            if env["name"] in SECRET_ENV:
                optional = env["valueFrom"]["secretKeyRef"].get("optional", False)
                assert optional == (env["name"] == "ENCRYPTION_KEY"), (dep["metadata"]["name"], env)


# --- pod hardening and labels ----------------------------------------------------------------


@test
def pods_run_non_root_with_read_only_root_fs_and_all_capabilities_dropped():
    for name, docs in all_scenarios():
        for owner, tpl in pod_templates(docs):
            spec = tpl["spec"]
            psc = spec.get("securityContext", {})
            assert psc.get("runAsNonRoot") is True, (name, owner)
            assert psc.get("runAsUser", 0) != 0, (name, owner)
            assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", (name, owner)
            assert spec.get("automountServiceAccountToken") is False, (name, owner)
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, (name, owner, c["name"])
                assert sc["allowPrivilegeEscalation"] is False, (name, owner, c["name"])
                assert "ALL" in sc["capabilities"]["drop"], (name, owner, c["name"])
                assert not sc["capabilities"].get("add"), (name, owner, c["name"])
                assert sc.get("privileged") is not True, (name, owner, c["name"])


@test
def selectors_use_name_instance_and_component_only():
    for name, docs in all_scenarios():
        for d in docs:
            kind = d["kind"]
            if kind in ("Deployment", "PodDisruptionBudget", "ServiceMonitor"):
                sel = d["spec"]["selector"]["matchLabels"]
            elif kind == "NetworkPolicy":
                sel = d["spec"]["podSelector"]["matchLabels"]
            elif kind == "Service":
                sel = d["spec"]["selector"]
            else:
                continue
            extra = {"ryze-events/endpoint"} if kind == "ServiceMonitor" else set()
            assert set(sel) - extra == SELECTOR_KEYS, (name, kind, sel)
            assert "helm.sh/chart" not in sel and "app.kubernetes.io/version" not in sel, (name, kind)
        for dep in of_kind(docs, "Deployment"):
            labels = dep["spec"]["template"]["metadata"]["labels"]
            for k, v in dep["spec"]["selector"]["matchLabels"].items():
                assert labels.get(k) == v, (name, dep["metadata"]["name"], k)


@test
def gateway_and_publisher_selectors_do_not_overlap():
    docs = render(*REQUIRED)
    gw = one(docs, "Deployment", "-gateway")["spec"]["selector"]["matchLabels"]
    pub = one(docs, "Deployment", "-publisher")["spec"]["selector"]["matchLabels"]
    assert gw["app.kubernetes.io/component"] == "gateway" and pub["app.kubernetes.io/component"] == "publisher"


@test
def every_object_carries_the_standard_labels():
    for name, docs in all_scenarios():
        for d in docs:
            labels = d["metadata"].get("labels", {})
            for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                        "app.kubernetes.io/managed-by", "app.kubernetes.io/component"):
                assert key in labels, (name, d["kind"], d["metadata"]["name"], key)


@test
def pods_get_a_checksum_of_their_configmap():
    base = render(*REQUIRED)
    changed = render(*REQUIRED, "--set", "gateway.config.drainRate=1000", "--set", "publisher.config.maxIngestBytes=1024")
    for suffix in ("-gateway", "-publisher"):
        a = one(base, "Deployment", suffix)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        b = one(changed, "Deployment", suffix)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert re.fullmatch(r"[0-9a-f]{64}", a) and a != b, suffix


@test
def image_tag_defaults_to_the_chart_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for _, tpl in pod_templates(render(*REQUIRED)):
        assert tpl["spec"]["containers"][0]["image"] == f"ryze-events:{chart['appVersion']}"
    pinned = one(scenario("ha-pdb-servicemonitor"), "Deployment", "-gateway")
    assert re.fullmatch(r".+:0\.1\.0@sha256:[0-9a-f]{64}", pinned["spec"]["template"]["spec"]["containers"][0]["image"])


@test
def configmaps_hold_no_secret_variables():
    for name, docs in all_scenarios():
        for cm in of_kind(docs, "ConfigMap"):
            assert not SECRET_ENV & set(cm.get("data", {})), (name, cm["metadata"]["name"])


@test
def gateway_config_keys_match_the_contract():
    env = configmap_env(docs := render(*REQUIRED), one(docs, "Deployment", "-gateway"))
    expected = {"LISTEN_ADDR", "ADMIN_LISTEN_ADDR", "PUBLIC_BASE_URL", "DATABASE_POOL_SIZE", "REDIS_PREFIX", "LOG_FORMAT",
                "RUST_LOG", "SHUTDOWN_TIMEOUT", "CONFIG_CACHE_TTL", "RATE_LIMIT_PER_MINUTE", "WS_PING_INTERVAL",
                "WS_PONG_TIMEOUT", "WS_MAX_MESSAGE_BYTES", "WS_SEND_QUEUE", "WS_SEND_QUEUE_BYTES", "MAX_CONNECTIONS",
                "DRAIN_RATE", "UNSUBSCRIBE_DELAY", "TRUST_PROXY_HEADERS", "METRICS_INSTANCE_LABELS", "CONSOLE_ENABLED",
                "WS_SLOW_CONSUMER_GRACE", "HTTP_HEADER_TIMEOUT", "REDIS_STALL_TIMEOUT",
                "HISTORY_SIZE", "HISTORY_TTL",
                "REBALANCE_THRESHOLD", "REBALANCE_INTERVAL", "REBALANCE_RATE", "REBALANCE_MIN_AGE", "REBALANCE_WARMUP"}
    assert set(env) == expected, set(env) ^ expected
    assert env["REBALANCE_THRESHOLD"] == "1.25" and env["REBALANCE_INTERVAL"] == "5s" and env["REBALANCE_RATE"] == "50"
    assert env["REBALANCE_MIN_AGE"] == "60s" and env["REBALANCE_WARMUP"] == "60s"
    assert env["REDIS_STALL_TIMEOUT"] == "3s"
    assert env["CONSOLE_ENABLED"] == "false" and env["WS_SEND_QUEUE_BYTES"] == "8388608" and env["MAX_CONNECTIONS"] == "100000"
    assert env["DRAIN_RATE"] == "2000" and env["WS_PING_INTERVAL"] == "54s"
    assert env["WS_SLOW_CONSUMER_GRACE"] == "1s" and env["HTTP_HEADER_TIMEOUT"] == "10s"


# --- hooks, multi-region --------------------------------------------------------------------


@test
def migrate_job_is_a_pre_install_and_pre_upgrade_hook():
    for name, docs in all_scenarios():
        job = one(docs, "Job", "-migrate")
        ann = job["metadata"]["annotations"]
        assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}, ann
        assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["ryze-publisher", "migrate"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        # A pre-install hook runs before the release's objects exist.
        assert "envFrom" not in c, "must not need the release's ConfigMap"
        assert "serviceAccountName" not in job["spec"]["template"]["spec"], "must not need the release's ServiceAccount"


@test
def multi_region_publisher_gets_the_region_set_from_the_secret():
    docs = scenario("multi-region")
    env = {e["name"]: e for e in one(docs, "Deployment", "-publisher")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REGION_REDIS_URLS"]["valueFrom"]["secretKeyRef"] == {"name": "ryze-events-eu-west", "key": "REGION_REDIS_URLS"}
    gw = one(docs, "Deployment", "-gateway")
    assert gw["spec"]["template"]["metadata"]["labels"]["ryze-events/region"] == "eu-west"
    assert "REGION_REDIS_URLS" not in {e["name"] for e in gw["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "REGION_REDIS_URLS" not in {e["name"] for e in one(render(*REQUIRED), "Deployment", "-publisher")[
        "spec"]["template"]["spec"]["containers"][0]["env"]}


@test
def redis_tls_files_are_mounted_read_only_from_the_secret_into_both_components():
    docs = scenario("redis-tls-sentinel")
    for suffix in ("-gateway", "-publisher"):
        spec = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-tls")
        assert mount["readOnly"] is True, mount
        base = mount["mountPath"]
        assert env["REDIS_TLS_CA_FILE"] == f"{base}/ca.crt", env
        assert env["REDIS_TLS_CERT_FILE"] == f"{base}/tls.crt", env
        assert env["REDIS_TLS_KEY_FILE"] == f"{base}/tls.key", env
        volume = next(v for v in spec["volumes"] if v["name"] == "redis-tls")
        assert volume["secret"]["secretName"] == "redis-tls", volume
        assert {i["path"] for i in volume["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    default = one(render(*REQUIRED), "Deployment", "-gateway")["spec"]["template"]["spec"]
    assert "REDIS_TLS_CA_FILE" not in {e["name"] for e in default["containers"][0]["env"]}
    assert "redis-tls" not in {v["name"] for v in default["volumes"]}


@test
def redis_tls_client_certificate_needs_its_key():
    err = render_fails(*REQUIRED, "--set", "redisTls.existingSecret=t", "--set", "redisTls.keys.cert=tls.crt")
    assert "redisTls.keys.cert and redisTls.keys.key go together" in err, err


@test
def secondary_region_release_runs_gateways_only():
    docs = scenario("multi-region", "--set", "region=us-east", "--set", "publisher.enabled=false",
                    "--set", "migrate.enabled=false", "--set", "publisher.regionRedisUrls.enabled=false")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-publisher")], "no publisher objects"
    assert not of_kind(docs, "Job")
    assert one(docs, "Deployment", "-gateway")


# --- CRDs (no schema in kubernetes-validate) ---------------------------------------------------

CRD_VALIDATOR = r"""
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { readFileSync } from "node:fs";
const models = { ScaledObject, ServiceMonitor, PrometheusRule };
let bad = 0;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  try { new models[doc.kind](doc).validate(); }
  catch (e) { bad++; console.log(`${doc.kind}/${doc.metadata.name}: ${e.message}`); }
}
process.exit(bad ? 1 : 0);
"""

KNOWN_CR_KEYS = {
    # Fields we render, per CRD, checked for unknown keys (the model validators only check
    # types and required fields, the API server would prune unknown ones silently).
    "ScaledObject": {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount",
                     "fallback", "advanced", "triggers", "idleReplicaCount", "initialCooldownPeriod"},
    "ServiceMonitor": {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                       "sampleLimit", "attachMetadata"},
    "PrometheusRule": {"groups"},
}


def run_crd_validator(objects: list[dict]) -> subprocess.CompletedProcess:
    # The module must sit in NODE_TOOLS so that node resolves the packages from node_modules.
    with tempfile.NamedTemporaryFile("w", suffix=".mjs", dir=NODE_TOOLS, delete=False) as f:
        f.write(CRD_VALIDATOR)
        script = f.name
    try:
        return subprocess.run(["node", script], input=json.dumps(objects), capture_output=True, text=True,
                              cwd=NODE_TOOLS)
    finally:
        os.unlink(script)


@test
def crds_validate_against_the_keda_and_prometheus_operator_models():
    assert NODE_TOOLS, "NODE_TOOLS not set"
    crs = []
    for name, docs in all_scenarios():
        crs += [d for d in docs if d["kind"] in KNOWN_CR_KEYS]
    assert {d["kind"] for d in crs} == set(KNOWN_CR_KEYS), "scenarios cover every CRD"
    for d in crs:
        unknown = set(d["spec"]) - KNOWN_CR_KEYS[d["kind"]]
        assert not unknown, (d["kind"], unknown)
    proc = run_crd_validator(crs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The validator itself must reject a broken object.
    so = next(d for d in crs if d["kind"] == "ScaledObject")
    broken = dict(so, spec=dict(so["spec"], minReplicaCount="two"))
    assert run_crd_validator([broken]).returncode == 1, "a string minReplicaCount must be rejected"


# --- monitoring: Grafana dashboard and PrometheusRule -----------------------------------------


@test
def dashboard_and_rules_are_off_by_default():
    for name, docs in all_scenarios():
        if name == "monitoring":
            continue
        assert not of_kind(docs, "PrometheusRule"), name
        assert not [d for d in of_kind(docs, "ConfigMap") if "ryze-events.json" in d.get("data", {})], name


@test
def dashboard_configmap_carries_the_sidecar_label_and_the_chart_file():
    docs = render(*REQUIRED, "--set", "grafanaDashboard.enabled=true")
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if "ryze-events.json" in d.get("data", {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "ryze", cm["metadata"]
    dashboard = json.loads(cm["data"]["ryze-events.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "ryze-events.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables, variables
    docs = render(*REQUIRED, "--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=grafana",
                  "--set", "grafanaDashboard.labels.grafana_dashboard=null", "--set", "grafanaDashboard.labels.dash=yes")
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if "ryze-events.json" in d.get("data", {})]
    assert cm["metadata"]["namespace"] == "grafana", cm["metadata"]
    assert cm["metadata"]["labels"].get("dash") == "yes" and "grafana_dashboard" not in cm["metadata"]["labels"], cm


def runbook_anchors() -> set[str]:
    """GitHub-style anchors of the level-3 headings of docs/operations.md."""
    text = (CHART.parents[1] / "docs" / "operations.md").read_text()
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{2,4} (.+)$", text, re.M)}


@test
def every_alert_links_to_a_runbook_section_that_exists():
    base = "https://docs.example.com/operations.md"
    docs = render(*REQUIRED, "--set", "prometheusRule.enabled=true", "--set", f"prometheusRule.runbookBaseUrl={base}",
                  "--set", "prometheusRule.labels.release=prom")
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom", rule["metadata"]
    anchors = runbook_anchors()
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(alerts) >= 8, [a["alert"] for a in alerts]
    for a in alerts:
        url = a["annotations"]["runbook_url"]
        assert url.startswith(base + "#"), url
        assert url.split("#", 1)[1] in anchors, (a["alert"], url, "no such heading in docs/operations.md")
        assert url.split("#", 1)[1] == a["alert"].lower(), (a["alert"], url)


@test
def alert_thresholds_follow_the_values():
    docs = render(*REQUIRED, "--set", "prometheusRule.enabled=true", "--set",
                  "prometheusRule.runbookBaseUrl=https://x.example.com/ops.md", "--set-json",
                  "prometheusRule.publishToSendP99Seconds=0.75", "--set", "gateway.config.maxConnections=20000",
                  "--set-json", "prometheusRule.connectionsNearCapacityRatio=0.5")
    rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert rules["RyzePublishToSendP99High"]["expr"].rstrip().endswith("> 0.75"), rules["RyzePublishToSendP99High"]
    assert rules["RyzeConnectionsNearCapacity"]["expr"].rstrip().endswith("> 10000"), rules["RyzeConnectionsNearCapacity"]


@test
def rebalancing_alert_follows_the_threshold_and_is_absent_when_rebalancing_is_off():
    on = ("--set", "prometheusRule.enabled=true", "--set", "prometheusRule.runbookBaseUrl=https://x.example.com/ops.md")
    docs = render(*REQUIRED, *on, "--set-json", "gateway.config.rebalanceThreshold=1.5",
                  "--set", "prometheusRule.rebalancingNotConvergingFor=20m")
    rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    rule = rules["RyzeRebalancingNotConverging"]
    assert "(ryze_gateway_fleet_share) > 1.5" in rule["expr"], rule
    assert 'outcome="closing"}[20m]' in rule["expr"] and rule["for"] == "20m", rule
    docs = render(*REQUIRED, *on, "--set-json", "gateway.config.rebalanceThreshold=0")
    rules = {r["alert"] for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert "RyzeRebalancingNotConverging" not in rules, rules


@test
def prometheus_rule_needs_a_runbook_base_url():
    err = render_fails(*REQUIRED, "--set", "prometheusRule.enabled=true")
    assert "runbookBaseUrl" in err, err


# --- values.yaml hygiene -----------------------------------------------------------------------


@test
def every_value_is_commented():
    """Each key has a comment right above it, or sits inside a value whose key's comment
    starts with "# --" (a documented block, such as a security context or HPA behavior)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack = []  # (indent, documented_block)
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z0-9_./-]+):(\s|$)", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m[1]) + (2 if m[2] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        comment = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        inside_documented = any(doc for _, doc in stack)
        if not comment and not inside_documented:
            missing.append(f"line {i + 1}: {line.strip()}")
        stack.append((indent, bool(comment) and comment[0].startswith("# --") or inside_documented))
    assert not missing, "uncommented values:\n  " + "\n  ".join(missing)


@test
def postgres_ca_bundle_is_mounted_read_only_in_every_workload():
    docs = render(*REQUIRED, "--set", "postgresTls.caSecret=pg-ca", "--set", "postgresTls.caKey=rds-ca.pem")
    owners = []
    for name, pod in pod_templates(docs):
        owners.append(name)
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        secret = volumes["postgres-ca"]["secret"]
        assert secret["secretName"] == "pg-ca", secret
        assert secret["items"] == [{"key": "rds-ca.pem", "path": "rds-ca.pem"}], secret
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["postgres-ca"] == {"name": "postgres-ca", "mountPath": "/etc/ryze/pg-ca", "readOnly": True}, mounts
    assert len(owners) == 3 and any(o.endswith("-migrate") for o in owners), owners
    for name, pod in pod_templates(render(*REQUIRED)):
        assert "postgres-ca" not in {v["name"] for v in pod["spec"]["volumes"]}, name


@test
def values_schema_rejects_unknown_keys():
    err = render_fails(*REQUIRED, "--set", "gateway.replicas=3")
    assert "replicas" in err, err
    err = render_fails(*REQUIRED, "--set", "gateway.config.drainRate=fast")
    assert "drainRate" in err, err
    for bad in ["0.5", "-1"]:
        err = render_fails(*REQUIRED, "--set-json", f"gateway.config.rebalanceThreshold={bad}")
        assert "rebalanceThreshold" in err, (bad, err)
    err = render_fails(*REQUIRED, "--set", "gateway.config.rebalanceRate=0")
    assert "rebalanceRate" in err, err
    for ok, want in [("0", "0"), ("1", "1"), ("1.5", "1.5")]:
        docs = render(*REQUIRED, "--set-json", f"gateway.config.rebalanceThreshold={ok}")
        env = configmap_env(docs, one(docs, "Deployment", "-gateway"))
        assert env["REBALANCE_THRESHOLD"] == want, (ok, env["REBALANCE_THRESHOLD"])


# --- runner -------------------------------------------------------------------------------------


def main() -> int:
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            detail = str(e) if isinstance(e, (AssertionError, RenderError)) else traceback.format_exc()
            print(f"FAIL  chart test {fn.__name__}")
            for line in (detail or "assertion failed").splitlines():
                print(f"      {line}")
        else:
            passed += 1
            print(f"ok    chart test {fn.__name__}")
    print(f"chart-tests: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
