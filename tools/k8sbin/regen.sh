#!/usr/bin/env bash
# Regenerate go.mod/go.sum of the k8s builder module for one Kubernetes version.
# Usage: tools/k8sbin/regen.sh v1.37.2
# The staging replace list is generated from upstream's own go.mod (served by the Go proxy):
# every module that k8s.io/kubernetes requires at v0.0.0 is replaced by its published v0.X.Y.
set -euo pipefail
K8S_VERSION=${1:?usage: regen.sh v1.X.Y}
STAGING_VERSION=v0.${K8S_VERSION#v1.}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
cd "$(dirname "$0")"

upstream_mod=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | jq -r .GoMod)
go_line=$(go mod edit -json "$upstream_mod" | jq -r .Go)
godebug=$(go mod edit -json "$upstream_mod" | jq -r '(.GoDebug // [])[] | "\(.Key)=\(.Value)"')
mapfile -t staging < <(go mod edit -json "$upstream_mod" | jq -r '.Require[] | select(.Version=="v0.0.0") | .Path')
echo "k8s.io/kubernetes ${K8S_VERSION}: go ${go_line}, ${#staging[@]} staging modules at ${STAGING_VERSION}" >&2

rm -f go.mod go.sum
go mod init aion.invalid/k8sbin
go mod edit -go="$go_line"
for kv in $godebug; do go mod edit -godebug="$kv"; done
for p in "${staging[@]}"; do go mod edit -replace="$p=$p@${STAGING_VERSION}"; done
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@${K8S_VERSION}"
go get -tool "k8s.io/kubernetes/cmd/kube-controller-manager@${K8S_VERSION}"
go get -tool "k8s.io/kubernetes/cmd/kubectl@${K8S_VERSION}"
# Node and scheduling components for the testbed's real nodes (docs/testbed.md).
go get -tool "k8s.io/kubernetes/cmd/kube-scheduler@${K8S_VERSION}"
go get -tool "k8s.io/kubernetes/cmd/kubelet@${K8S_VERSION}"
go get -tool "k8s.io/kubernetes/cmd/kube-proxy@${K8S_VERSION}"
# etcd: pin the server version already in the Kubernetes graph (a bare @latest would move the client).
etcd_version=$(go mod edit -json "$upstream_mod" | jq -r '.Require[] | select(.Path=="go.etcd.io/etcd/server/v3") | .Version')
go get -tool "go.etcd.io/etcd/server/v3@${etcd_version}"
go mod tidy
# Tidy must not move what upstream pins for the apiserver's etcd client.
go list -m go.etcd.io/etcd/client/v3 go.etcd.io/etcd/server/v3 k8s.io/kubernetes
