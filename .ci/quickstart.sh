#!/usr/bin/env bash
# Runs README.md's "First ten minutes" block verbatim against a real server: a fresh
# SQLite database, a known admin password and an ephemeral master key. Also checks the
# server's log on a pipe: no colour codes, one INFO line per execution lifecycle change.
# Usage: .ci/quickstart.sh [path/to/agentplane]   (default: target/debug/agentplane)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/debug/agentplane}")
[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build first"; exit 1; }
command -v jq >/dev/null || { apt-get install -y -qq jq >/dev/null; }

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export ADMIN_PASSWORD="quickstart-$(od -An -N9 -tx1 /dev/urandom | tr -d ' \n')"
(
  cd "$work"
  AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
  AGENTPLANE_MASTER_KEY=$(head -c 32 /dev/urandom | base64) \
  DATABASE_URL="sqlite://$work/agentplane.db" RUST_LOG=info \
    exec "$BIN" serve --listen 127.0.0.1:0 >"$work/stdout" 2>"$work/server.log"
) &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening on' "$work/stdout" 2>/dev/null && break
  sleep 0.2
done
AP=$(grep -o 'listening on http://[0-9.:]*' "$work/stdout" | sed 's/listening on //')
[ -n "$AP" ] || { echo "server did not start:"; cat "$work/stdout" "$work/server.log"; exit 1; }
export AP AGENTPLANE_BIN="$BIN"

awk '/<!-- quickstart:begin -->/{on=1; next} /<!-- quickstart:end -->/{on=0} on' README.md \
  | sed '/^```/d' >"$work/quickstart.sh"
[ -s "$work/quickstart.sh" ] || { echo "README.md has no quickstart block"; exit 1; }
echo "running README's quickstart ($(wc -l <"$work/quickstart.sh") lines) against $AP"
bash -euo pipefail ${QUICKSTART_TRACE:+-x} "$work/quickstart.sh"

kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
if grep -q $'\x1b\[' "$work/server.log"; then
  echo "the server's log on a pipe carries colour codes"; exit 1
fi
for want in 'execution QUEUED' 'execution RUNNING' 'step SUCCEEDED' 'step SKIPPED' 'execution SUCCEEDED'; do
  grep "$want" "$work/server.log" | grep -q 'tenant=' \
    || { echo "no '$want' line with its tenant in the log:"; tail -40 "$work/server.log"; exit 1; }
done
echo "quickstart: every README command ran; the log has one line per lifecycle change"
