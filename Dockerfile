# agentplane container image: build stage, then a small runtime with a non-root user.
#   podman build -t agentplane:0.1.0 .      (or docker build / buildah bud)
# The base images are arguments, so a site without Docker Hub can point them at its own
# registry or at locally built images.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin agentplane \
 && strip target/release/agentplane

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home agentplane \
 && mkdir -p /data && chown agentplane:agentplane /data
COPY --from=build /src/target/release/agentplane /usr/local/bin/agentplane
USER 10001:10001
WORKDIR /data
ENV AGENTPLANE_LISTEN=0.0.0.0:8000 \
    DATABASE_URL=sqlite:///data/agentplane.db \
    AGENTPLANE_LOG_FORMAT=json
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["agentplane"]
CMD ["serve"]
