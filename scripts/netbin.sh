#!/usr/bin/env bash
# Pod network and DNS binaries for the testbed's real nodes: flanneld, the flannel CNI plugin,
# coredns and crictl, built from Go modules (tools/netbin/*) into a versioned cache. See docs/testbed.md.
#
#   scripts/netbin.sh build      build the four binaries unless the cache already has them; prints the dir
#   scripts/netbin.sh env        print `export AION_NET_BIN=<dir>` (warns if not built yet)
#   scripts/netbin.sh versions   print one line per program: name and version (from tools/netbin/*/go.mod)
#
# Environment:
#   AION_NET_BIN_CACHE   binary cache root; default ~/.cache/aion/net-bin
#
# Needs Go >= 1.26.6 (cri-tools' go line) and gcc + libc6-dev: flanneld is built with cgo on amd64,
# as upstream does, for its UDP backend.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODROOT="$ROOT/tools/netbin"
BIN_CACHE=${AION_NET_BIN_CACHE:-$HOME/.cache/aion/net-bin}
PROGRAMS=(flanneld flannel coredns crictl)
MODDIRS=(flannel cni-flannel coredns crictl)

log() { printf 'netbin: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# mod_version <module dir> <module path>: the pinned version, read from the committed go.mod (no network).
mod_version() {
    local v
    v=$(awk -v m="$2" '($1==m && $2 ~ /^v/) {print $2; exit} ($1=="require" && $2==m) {print $3; exit}' \
        "$MODROOT/$1/go.mod")
    [ -n "$v" ] || die "no $2 requirement in $MODROOT/$1/go.mod"
    printf '%s\n' "$v"
}
flannel_version() { mod_version flannel github.com/flannel-io/flannel; }
cni_version() { mod_version cni-flannel github.com/containernetworking/plugins; }
coredns_version() { mod_version coredns github.com/coredns/coredns; }
crictl_version() { mod_version crictl sigs.k8s.io/cri-tools; }

bin_dir() {
    local sum d
    sum=$(for d in "${MODDIRS[@]}"; do cat "$MODROOT/$d/go.mod" "$MODROOT/$d/go.sum"; done | sha256sum | cut -c1-16)
    printf '%s/flannel-%s.cni-%s.coredns-%s.crictl-%s-%s\n' "$BIN_CACHE" \
        "$(flannel_version)" "$(cni_version)" "$(coredns_version)" "$(crictl_version)" "$sum"
}

have_bins() {
    local dir=$1 p
    for p in "${PROGRAMS[@]}"; do [ -x "$dir/$p" ] || return 1; done
}

cmd_build() {
    local dir tmp fv cv dv tv
    dir=$(bin_dir)
    if have_bins "$dir"; then
        log "binaries present in $dir (reused)"
        printf '%s\n' "$dir"
        return 0
    fi
    command -v go >/dev/null || die "go is not installed (the Go toolchain named in docs/control-plane.md)"
    command -v gcc >/dev/null || die "gcc is not installed (flanneld needs cgo): apt-get install gcc libc6-dev"
    fv=$(flannel_version) cv=$(cni_version) dv=$(coredns_version) tv=$(crictl_version)
    export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
    mkdir -p "$BIN_CACHE"
    tmp=$(mktemp -d "$BIN_CACHE/.build.XXXXXX")
    log "building flanneld $fv, flannel CNI $cv, coredns $dv, crictl $tv into $dir"
    (
        set -e
        # Upstream (Makefile dist/flanneld, amd64): CGO_ENABLED=1 for the UDP backend's C proxy,
        # `-s -w -X …/pkg/version.Version=$TAG -extldflags "-static"` (linked against musl there).
        # Linked statically against glibc here, so netgo/osusergo keep glibc's NSS out of it.
        cd "$MODROOT/flannel"
        CGO_ENABLED=1 go build -trimpath -tags netgo,osusergo \
            -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$fv -extldflags -static" \
            -o "$tmp/flanneld" github.com/flannel-io/flannel
        # Upstream (scripts/release.sh): CGO_ENABLED=0, -X …/buildversion.BuildVersion=$TAG.
        cd "$MODROOT/cni-flannel"
        CGO_ENABLED=0 go build -trimpath \
            -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cv" \
            -o "$tmp/flannel" github.com/containernetworking/plugins/plugins/meta/flannel
        # Upstream (Makefile.release → make coredns): CGO_ENABLED=0 -tags grpcnotrace,
        # -X coremain.GitCommit=$(git describe --dirty --always); the proxy gives no commit, so the tag.
        cd "$MODROOT/coredns"
        CGO_ENABLED=0 go build -trimpath -tags grpcnotrace \
            -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$dv" \
            -o "$tmp/coredns" github.com/coredns/coredns
        # Upstream (Makefile crictl): CGO_ENABLED=0 -trimpath, -X …/pkg/version.Version=<tag without v>.
        cd "$MODROOT/crictl"
        CGO_ENABLED=0 go build -trimpath \
            -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${tv#v}" \
            -o "$tmp/crictl" sigs.k8s.io/cri-tools/cmd/crictl
    ) || { rm -rf "$tmp"; die "go build failed"; }
    have_bins "$tmp" || { rm -rf "$tmp"; die "build finished but binaries are missing in $tmp"; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built: $(cd "$dir" && ls -s --block-size=M "${PROGRAMS[@]}" | tr '\n' ' ')"
    printf '%s\n' "$dir"
}

cmd_env() {
    local dir
    dir=$(bin_dir)
    have_bins "$dir" || log "warning: binaries not built yet (run: $0 build)"
    printf 'export AION_NET_BIN=%q\n' "$dir"
}

cmd_versions() {
    printf 'flanneld %s\n' "$(flannel_version)"
    printf 'flannel %s\n' "$(cni_version)"
    printf 'coredns %s\n' "$(coredns_version)"
    printf 'crictl %s\n' "$(crictl_version)"
}

case "${1:-}" in
build) cmd_build ;;
env) cmd_env ;;
versions) cmd_versions ;;
*)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
