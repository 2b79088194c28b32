#!/usr/bin/env bash
# Builds the container image with podman and runs it against the local PostgreSQL:
# /readyz must answer 200 and a login must work. Prints the image size.
#
# Where no registry is reachable (this machine), the base images are built from Debian
# packages with debootstrap: a build base (gcc, with the host's Rust toolchain and cargo
# cache mounted into the build) and a runtime base. Elsewhere the Dockerfile's defaults
# (rust:1.95-bookworm, debian:bookworm-slim) are used.
#   deploy/smoke.sh            (as root; needs podman and debootstrap: apt-get install podman debootstrap)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-localhost/agentplane:smoke}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PG=${SMOKE_POSTGRES:-postgres://postgres@127.0.0.1:5432}
PORT=${SMOKE_PORT:-18765}
for tool in podman debootstrap curl psql; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install podman debootstrap curl postgresql-client)"; exit 1; }
done

# A base image from Debian packages, unless it exists already.
base_image() {
  local name=$1 include=$2; shift 2
  if podman image exists "$name"; then return; fi
  local root
  root=$(mktemp -d)
  echo "building $name from Debian packages (debootstrap)"
  debootstrap --variant=minbase --include="$include" bookworm "$root" "$MIRROR" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | podman import "$@" - "$name" >/dev/null
  rm -rf "$root"
}

build_args=()
volumes=()
if ! podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  echo "no registry reachable: base images from Debian packages"
  base_image localhost/agentplane-build-base:bookworm gcc,libc6-dev,ca-certificates,git \
    --change 'ENV PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTUP_HOME=/root/.rustup' --change 'ENV CARGO_HOME=/root/.cargo'
  base_image localhost/agentplane-runtime-base:bookworm ca-certificates,curl
  build_args+=(--build-arg RUST_IMAGE=localhost/agentplane-build-base:bookworm
               --build-arg RUNTIME_IMAGE=localhost/agentplane-runtime-base:bookworm)
  # The host's toolchain and crate cache stand in for the rust image.
  volumes+=(-v "${RUSTUP_HOME:-$HOME/.rustup}:/root/.rustup:ro" -v "${CARGO_HOME:-$HOME/.cargo}:/root/.cargo")
fi

if [ -n "${SMOKE_SKIP_BUILD:-}" ] && podman image exists "$TAG"; then
  echo "using the existing $TAG (SMOKE_SKIP_BUILD)"
else
  echo "building $TAG (log: /tmp/agentplane-smoke-build.log)"
  # Docker format: OCI images cannot carry the HEALTHCHECK. Chroot isolation: builds also
  # where the OCI runtime cannot manage cgroups (sandboxes, nested containers).
  podman build --format docker --isolation "${SMOKE_ISOLATION:-chroot}" --network host \
    "${build_args[@]}" "${volumes[@]}" -t "$TAG" . >/tmp/agentplane-smoke-build.log 2>&1 \
    || { tail -40 /tmp/agentplane-smoke-build.log; exit 1; }
fi

db="agentplane_smoke_$$"
name="agentplane-smoke-$$"
ctr=""
runner=""
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  [ -n "$runner" ] && kill "$runner" 2>/dev/null || true
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql -q "$PG/postgres" -c "CREATE DATABASE $db" >/dev/null
password="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
env_args=(-e DATABASE_URL="$PG/$db" -e AGENTPLANE_LISTEN="127.0.0.1:$PORT"
          -e AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD="$password")
if podman run -d --name "$name" --network host "${env_args[@]}" "$TAG" >/dev/null 2>/tmp/agentplane-smoke-run.err; then
  user=$(podman exec "$name" id -u)
else
  # Sandboxes that forbid what the OCI runtime needs (cgroups, setrlimit) cannot start
  # containers; run the image's own entrypoint in its root filesystem instead.
  echo "podman cannot start a container here ($(tail -1 /tmp/agentplane-smoke-run.err)); running the image with buildah (chroot isolation)"
  ctr=$(buildah from -q "$TAG")
  user=$(buildah run --isolation chroot "$ctr" -- id -u)
  buildah run --isolation chroot "${env_args[@]}" "$ctr" -- agentplane serve >/tmp/agentplane-smoke-serve.log 2>&1 &
  runner=$!
fi
for _ in $(seq 1 60); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" || true)
  [ "$code" = 200 ] && break
  sleep 0.5
done
[ "$code" = 200 ] || { podman logs "$name" 2>/dev/null | tail -20; tail -20 /tmp/agentplane-smoke-serve.log 2>/dev/null; echo "/readyz answered $code"; exit 1; }
echo "/readyz: $(curl -s "http://127.0.0.1:$PORT/readyz")"
login=$(curl -s "http://127.0.0.1:$PORT/graphql" -H 'content-type: application/json' \
  -d "{\"query\":\"mutation { login(input: {email: \\\"admin@agentplane.local\\\", password: \\\"$password\\\"}) { accessToken user { email } } }\"}")
echo "$login" | grep -q '"accessToken":"ey' || { echo "login failed: $login"; exit 1; }
echo "login: ok ($(echo "$login" | grep -o '"email":"[^"]*"'))"
echo "runs as uid $user; healthcheck: $(podman image inspect --format '{{.Config.Healthcheck.Test}}' "$TAG" 2>/dev/null || echo '?')"
size=$(podman image inspect --format '{{.Size}}' "$TAG")
echo "image $TAG: $((size / 1024 / 1024)) MiB"
