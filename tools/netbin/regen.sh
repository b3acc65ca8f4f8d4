#!/usr/bin/env bash
# Regenerate go.mod/go.sum of the pod-network/DNS builder modules (scripts/netbin.sh, docs/testbed.md).
# Usage: tools/netbin/regen.sh [flannel|cni-flannel|coredns|crictl ...]   (default: all four)
#
# One Go module per program: their dependency graphs differ (cni-flannel needs
# containernetworking/plugins v0.9.1, flanneld requires v1.6.2; coredns and crictl pull different
# k8s.io/* minors), and a module of their own keeps each program on exactly the dependency versions
# its upstream go.mod selects. Each module copies upstream's `go`/`godebug` lines; where upstream's
# `go` line is older than 1.24 (needed for `tool` directives) the line is raised to 1.24 and
# `godebug default=go1.X` keeps upstream's runtime defaults. After tidy the script lists every
# module whose selected version differs from what upstream's go.mod requires (should print nothing).
#
# Versions (pinned here; scripts/netbin.sh reads them back from the committed go.mod files):
#   flanneld  github.com/flannel-io/flannel v0.26.7 — templates/flannel.yaml names v0.26.4, but the
#             Go module proxy refuses v0.26.4 ("This module version is not available"); v0.26.7 is the
#             last release of the same v0.26 line.
#   flannel   the flannel CNI plugin. github.com/flannel-io/cni-plugin (v1.6.2-flannel1) is refused by
#             the proxy as a whole module; its source originates in containernetworking/plugins
#             plugins/meta/flannel, whose last release carrying it is v0.9.1.
#   coredns   github.com/coredns/coredns v1.14.6, the CoreDNS kubeadm 1.37 installs (its constants.go)
#   crictl    sigs.k8s.io/cri-tools v1.37.0 (cmd/crictl), matching Kubernetes 1.37
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
cd "$(dirname "$0")"

FLANNEL_VERSION=v0.26.7
CNI_PLUGINS_VERSION=v0.9.1
COREDNS_VERSION=v1.14.6
CRI_TOOLS_VERSION=v1.37.0

# regen <dir> <upstream module> <version> <package...>
regen() {
    local dir=$1 mod=$2 ver=$3
    shift 3
    local upstream_mod go_line minor kv
    upstream_mod=$(go mod download -json "$mod@$ver" | jq -r .GoMod)
    go_line=$(go mod edit -json "$upstream_mod" | jq -r .Go)
    echo "$dir: $mod $ver (upstream go $go_line)" >&2
    mkdir -p "$dir"
    (
        cd "$dir"
        rm -f go.mod go.sum
        go mod init "aion.invalid/netbin/$dir" 2>/dev/null
        minor=$(echo "$go_line" | cut -d. -f2)
        if [ "$minor" -lt 24 ]; then
            go mod edit -go=1.24 -godebug="default=go1.$minor"
        else
            go mod edit -go="$go_line"
        fi
        for kv in $(go mod edit -json "$upstream_mod" | jq -r '(.GoDebug // [])[] | "\(.Key)=\(.Value)"'); do
            go mod edit -godebug="$kv"
        done
        local pkg
        for pkg in "$@"; do go get -tool "$pkg@$ver"; done
        go mod tidy
        go list -m "$mod"
        # Anything upstream requires that this module selects at another version.
        go mod edit -json "$upstream_mod" | jq -r '.Require[] | "\(.Path) \(.Version)"' | sort >"${TMPDIR:-/tmp}/netbin-up.$$"
        go list -m -f '{{.Path}} {{.Version}}' all | sort |
            join "${TMPDIR:-/tmp}/netbin-up.$$" - | awk '$2 != $3 {print "  differs from upstream: " $0}'
        rm -f "${TMPDIR:-/tmp}/netbin-up.$$"
    )
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(flannel cni-flannel coredns crictl)
for w in "${want[@]}"; do
    case $w in
    flannel) regen flannel github.com/flannel-io/flannel "$FLANNEL_VERSION" github.com/flannel-io/flannel ;;
    cni-flannel) regen cni-flannel github.com/containernetworking/plugins "$CNI_PLUGINS_VERSION" \
        github.com/containernetworking/plugins/plugins/meta/flannel ;;
    coredns) regen coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns ;;
    crictl) regen crictl sigs.k8s.io/cri-tools "$CRI_TOOLS_VERSION" sigs.k8s.io/cri-tools/cmd/crictl ;;
    *) echo "unknown module: $w" >&2; exit 2 ;;
    esac
done
