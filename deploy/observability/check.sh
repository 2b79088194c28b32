#!/usr/bin/env bash
# Checks the observability kit against a real, busy server:
#   1. the alert rules parse (`promtool check rules`) and their unit tests pass
#      (`promtool test rules alerts.test.yml`);
#   2. a scrape of /metrics, taken after the demo workflow ran, a sign-in failed, a
#      subscription streamed and a node with (fake) GPUs heartbeated, passes
#      `promtool check metrics` (names, types, units, HELP);
#   3. every metric the alert rules and the Grafana dashboard query is in that scrape.
# Usage: deploy/observability/check.sh [path/to/agentplane]   (default: target/debug/agentplane)
# Needs promtool (Debian: apt-get install prometheus), jq and curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
BIN=$(realpath "${1:-target/debug/agentplane}")
[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build first"; exit 1; }
command -v promtool >/dev/null || { echo "promtool is missing: apt-get install prometheus"; exit 1; }

echo "== alert rules"
promtool check rules "$here/alerts.yml"
(cd "$here" && promtool test rules alerts.test.yml)

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a busy server"
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
(
  cd "$work"
  AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD="observability-$token" \
  AGENTPLANE_MASTER_KEY=$(head -c 32 /dev/urandom | base64) \
  AGENTPLANE_FAKE_GPUS="A100:81920,A100:81920" \
  AGENTPLANE_HEARTBEAT_MS=200 \
  AGENTPLANE_METRICS_TOKEN="$token" \
  DATABASE_URL="sqlite://$work/agentplane.db" RUST_LOG=warn \
    exec "$BIN" serve --demo --listen 127.0.0.1:0 >"$work/stdout" 2>"$work/server.log"
) &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening on' "$work/stdout" 2>/dev/null && grep -q ' start ' "$work/stdout" && break
  sleep 0.2
done
AP=$(grep -o 'listening on http://[0-9.:]*' "$work/stdout" | sed 's/listening on //')
[ -n "$AP" ] || { echo "server did not start:"; cat "$work/stdout" "$work/server.log"; exit 1; }

# The demo's ready-made command (start the demo workflow, watch it over a websocket),
# run as printed, twice.
sed -n '/run it and watch it live:/,$p' "$work/stdout" | tail -n +2 | head -2 >"$work/start.sh"
grep -q ' start ' "$work/start.sh" || { echo "serve --demo printed no start command:"; cat "$work/stdout"; exit 1; }
bash "$work/start.sh" >/dev/null
bash "$work/start.sh" >/dev/null
key=$(grep -o 'API key (OPERATOR): [^ ]*' "$work/stdout" | sed 's/.*: //')
# A refused sign-in and a refused token.
curl -s "$AP/graphql" -H 'content-type: application/json' \
  -d '{"query":"mutation { login(input: {email: \"nobody@example.com\", password: \"wrong password\"}) { accessToken } }"}' >/dev/null
curl -s "$AP/graphql" -H 'content-type: application/json' -H 'authorization: Bearer not-a-token' \
  -d '{"query":"{ me { id } }"}' >/dev/null
curl -s "$AP/graphql" -H 'content-type: application/json' -H "authorization: Bearer $key" \
  -d '{"query":"query Dashboard { me { id } }","operationName":"Dashboard"}' >/dev/null
sleep 2.5 # a heartbeat with the GPUs, and the scrape cache (2 s) expired

echo "== /metrics"
code=$(curl -s -o /dev/null -w '%{http_code}' "$AP/metrics")
[ "$code" = 401 ] || { echo "/metrics without the token answered $code, not 401"; exit 1; }
curl -sf "$AP/metrics" -H "authorization: Bearer $token" >"$work/scrape.txt"
head -40 "$work/scrape.txt"
echo "… $(wc -l <"$work/scrape.txt") lines"
promtool check metrics <"$work/scrape.txt"
[ -n "${KEEP_SCRAPE:-}" ] && cp "$work/scrape.txt" "$KEEP_SCRAPE"

echo "== every metric the rules and the dashboard query is exported"
python3 - "$work/scrape.txt" "$here/alerts.yml" "$here/grafana-dashboard.json" <<'EOF'
import json, re, sys
scrape, rules, dashboard = sys.argv[1:]
exported = set()
for line in open(scrape):
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()
        exported.add(name)
        if kind in ("histogram", "summary"):
            exported |= {name + "_bucket", name + "_sum", name + "_count"}
wanted = {}
def names(expr, where):
    for n in re.findall(r"\b(agentplane_[a-z0-9_]+)", expr):
        wanted.setdefault(n, where)
for line in open(rules):
    if "expr:" in line or line.startswith("          "):
        names(line.split("#")[0], "alerts.yml")
d = json.load(open(dashboard))
for p in d["panels"]:
    for t in p.get("targets", []):
        names(t["expr"], "dashboard: " + p["title"])
for v in d["templating"]["list"]:
    q = v.get("query")
    if isinstance(q, dict):
        names(q.get("query", ""), "dashboard variable " + v["name"])
missing = sorted((n, w) for n, w in wanted.items() if n not in exported)
for n, w in missing:
    print(f"not exported: {n} (queried by {w})")
if missing:
    sys.exit(1)
panels = [p for p in d["panels"] if p["type"] != "row"]
print(f"{len(wanted)} metric names queried by the rules and {len(panels)} panels: all exported")
EOF
