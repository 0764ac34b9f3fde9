# The kv image: one `kv` binary on a slim Debian runtime, run as an unprivileged user.
# Build from the repository root:  docker build -t kv:latest .
# Not built in this repository's CI: base images cannot be pulled on its machines; the
# manifest test (kv-cli/tests/deploy_manifests.rs) checks this file's structure instead.
# Ports: 7001 client gRPC, 7002 peer gRPC (node-to-node), 8080 HTTP (/metrics, /healthz,
# /readyz, status page, JSON API). Data: /var/lib/kv (mount a volume there).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate: nothing to install for the build.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kv \
    && cp target/release/kv /usr/local/bin/kv

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN groupadd --system --gid 10001 kv \
    && useradd --system --uid 10001 --gid kv --home-dir /var/lib/kv --no-create-home \
       --shell /usr/sbin/nologin kv \
    && mkdir -p /var/lib/kv \
    && chown kv:kv /var/lib/kv
COPY --from=builder /usr/local/bin/kv /usr/local/bin/kv
COPY deploy/k8s/entrypoint.sh /usr/local/bin/kv-k8s-entrypoint
USER 10001:10001
WORKDIR /var/lib/kv
VOLUME ["/var/lib/kv"]
EXPOSE 7001 7002 8080
ENTRYPOINT ["/usr/local/bin/kv"]
CMD ["--help"]
