#!/usr/bin/env bash
# Renders every Kubernetes overlay (no cluster needed) and lints it with checkov; fails on
# any finding not accepted in deploy/kubernetes/.checkov.yaml. Also checks what the skip
# list cannot: the API Deployment keeps its probes on /readyz and /healthz.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null || apt-get install -y -qq kubectl >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq kubectl >/dev/null; }
command -v checkov >/dev/null || python3 -m pip install -q 'checkov==3.*'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$out/$name.yaml"
  echo "rendered $name: $(grep -c '^kind:' "$out/$name.yaml") objects"
  report=$(cd "$out" && checkov -f "$out/$name.yaml" --config-file "$OLDPWD/deploy/kubernetes/.checkov.yaml" 2>&1) \
    || { echo "$report"; echo "checkov found problems in $name"; exit 1; }
  echo "$report" | grep -E "Passed checks" | sed "s/^/  $name: /"
  python3 - "$out/$name.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
api = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "agentplane-api"]
assert api, "no API Deployment"
c = api[0]["spec"]["template"]["spec"]["containers"][0]
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", "API readiness probe is not /readyz"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", "API liveness probe is not /healthz"
for d in docs:
    spec = d.get("spec", {}).get("template", {}).get("spec") if d["kind"] in ("Deployment", "Job") else None
    if spec:
        for k in spec["containers"]:
            sc = k["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], d["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"], d["metadata"]["name"]
    assert d["kind"] != "Secret", "a Secret is in the manifests"
PY
done
echo "manifests: every overlay renders and passes checkov (accepted skips: deploy/kubernetes/.checkov.yaml)"
