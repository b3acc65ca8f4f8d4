# syntax=docker/dockerfile:1
#
# The aion-kanban runtime image, for the devices AION runs on (x86-64 and arm64 such as Jetson).
# Build from the repository root, for both platforms at once:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -f docker/aion-kanban.Dockerfile -t <registryPrefix>/aion-kanban:<version> --push .
#
# The reconciler renders the runtime's Deployment with image
# `<registryPrefix>/aion-kanban:<version of aion-reconcile>` (the workspace version, 0.1.0 now;
# reconciler/src/render.rs), `imagePullPolicy: IfNotPresent`, `command: ["aion-kanban"]` and
# args `run ...`, so tag the image with exactly that reference.
#
# The builder runs on the build machine's own platform ($BUILDPLATFORM) and cross-compiles for
# $TARGETARCH with Debian's cross gcc (ring and the bundled SQLite have C parts): no emulation.
# The runtime stage runs no command either (the CA bundle comes from the builder, which is the
# same Debian release), so building for arm64 on an x86-64 machine needs no QEMU/binfmt.
#
# User: root by default, non-root with `--build-arg AION_UID=10001` (any UID; USER is numeric, so
# Kubernetes' runAsNonRoot can check it). Root is the default because on today's devices nothing
# else works: the runtime creates /var/lib/aion/Data/aion-kanban/kanban.db, stores files
# forwarded from other devices in /var/lib/aion/Data/<service>_<n>/ (directories the
# microservices create, as root in upstream's images) and its sweeper deletes old files there;
# Data is the hostPath /var/lib/aion/<namespace>/Data, which host provisioning
# (roles/directories.yml) keeps root:root 0755 on every `apply`. Non-root needs, per host: that
# directory owned by the UID (`install -d -o 10001 -g 10001 -m 0775 ...`, and the role changed to
# `owner: "10001"`, `mode: "0775"`, or the next apply chowns it back) and every microservice
# writing under Data running as the same UID or group (the example images, built with the same
# AION_UID).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
ARG TARGETARCH
ARG BUILDARCH
# The Rust target, and a cross C toolchain when the target is not the build machine's.
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
# Registry and git caches shared by all builds; the target directory per target architecture
# (the binary is copied out: a cache mount is not part of the image).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=aion-cargo-target-${TARGETARCH},sharing=locked \
    set -eux; \
    . /cross-env; \
    CARGO_PROFILE_RELEASE_STRIP="$STRIP" cargo build --locked --release --target "$TRIPLE" -p aion-kanban --bin aion-kanban; \
    install -D -m 0755 "target/$TRIPLE/release/aion-kanban" /out/aion-kanban

FROM debian:${DEBIAN_RELEASE}-slim
ARG AION_UID=0
LABEL org.opencontainers.image.title="aion-kanban" \
      org.opencontainers.image.description="AION runtime kanban core: routes kanbans between microservices over RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
# TLS to a broker or the Kubernetes API verifies against the system roots (rustls-native-certs).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/aion-kanban /usr/local/bin/aion-kanban
# Numeric, so that Kubernetes' runAsNonRoot can check it; no passwd entry is needed.
USER ${AION_UID}:${AION_UID}
ENTRYPOINT ["aion-kanban"]
CMD ["run"]
