# syntax=docker/dockerfile:1
#
# The example microservices of examples/ (crate aion-examples): one stage per service, all three
# built by one cargo run. Build from the repository root, one image per service:
#
#   for s in sensor processor sink; do
#     docker buildx build --platform linux/amd64,linux/arm64 -f docker/examples.Dockerfile \
#       --target "$s" -t "<registryPrefix>/$s:<tag>" --push .
#   done
#
# The reconciler renders a microservice's image as `<registryPrefix>/<name>:<tag>` from the
# inventory's registryPrefix and the services.yml entry (`tag`, default `latest`), so name the
# services `sensor`, `processor`, `sink` there (or tag the images after your names). They are
# configured by the env the reconciler renders (see each binary's module comment).
#
# Cross-compiled on the build machine's platform like docker/aion-kanban.Dockerfile (no QEMU).
# User: root by default, `--build-arg AION_UID=10001` for non-root: the services create
# /var/lib/aion/Data/<service>_<n>/ on the hostPath /var/lib/aion/<namespace>/Data, which must
# then be writable by that UID (see docker/aion-kanban.Dockerfile for what that takes).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
ARG TARGETARCH
ARG BUILDARCH
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; pkg=x86-64-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkg=aarch64-linux-gnu ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    rustup target add "$triple"; \
    env_triple=$(echo "$triple" | tr 'a-z-' 'A-Z_'); \
    { echo "export TRIPLE=$triple"; \
      if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
        echo "export CARGO_TARGET_${env_triple}_LINKER=$gnu-gcc"; \
        echo "export CC_$(echo "$triple" | tr - _)=$gnu-gcc"; \
        echo "export AR_$(echo "$triple" | tr - _)=$gnu-ar"; \
      fi; } > /cross-env; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "gcc-$pkg" "libc6-dev-$TARGETARCH-cross"; \
      rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
# The release profile keeps line tables; an image drops them by default (`debuginfo`: measured
# natively, sensor 122 MB → 15 MB, aion-kanban 144 MB → 27 MB); `--build-arg STRIP=none` keeps them.
ARG STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=aion-cargo-target-${TARGETARCH},sharing=locked \
    set -eux; \
    . /cross-env; \
    CARGO_PROFILE_RELEASE_STRIP="$STRIP" cargo build --locked --release --target "$TRIPLE" -p aion-examples \
      --bin sensor --bin processor --bin sink; \
    for b in sensor processor sink; do \
      install -D -m 0755 "target/$TRIPLE/release/$b" "/out/$b"; \
    done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG AION_UID=0
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER ${AION_UID}:${AION_UID}

FROM runtime AS sensor
LABEL org.opencontainers.image.title="sensor" \
      org.opencontainers.image.description="AION example microservice: emits a reading kanban with a file every INTERVAL_MS"
COPY --from=builder /out/sensor /usr/local/bin/sensor
ENTRYPOINT ["sensor"]

FROM runtime AS processor
LABEL org.opencontainers.image.title="processor" \
      org.opencontainers.image.description="AION example microservice: marks anomalies and forwards each kanban"
COPY --from=builder /out/processor /usr/local/bin/processor
ENTRYPOINT ["processor"]

FROM runtime AS sink
LABEL org.opencontainers.image.title="sink" \
      org.opencontainers.image.description="AION example microservice: stores each kanban and its files"
COPY --from=builder /out/sink /usr/local/bin/sink
ENTRYPOINT ["sink"]
