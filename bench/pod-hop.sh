#!/usr/bin/env bash
# Kanban hop latency between two pods on two hosts through the real pod network, beside the
# same hop on loopback; and the time from a kanban to a cold on-demand start (issue 14).
#
#   bench/pod-hop.sh [SAMPLES] [RATE] [COLD]     (defaults 2000 100 10)
#   PONG_NODE=master bench/pod-hop.sh ...        # pong beside the broker (no second VXLAN leg)
#   POD_REQUESTS=1 bench/pod-hop.sh ...          # ping and pong Burstable (CPU/memory requests)
#   AION_BENCH_BIN=DIR bench/pod-hop.sh ...      # binaries of a build kept in DIR (alternating)
#
# Needs root, the control plane (scripts/k8s-testenv.sh start), RabbitMQ on loopback
# (scripts/rabbitmq.sh start), the images (scripts/images build, with ping/pong/cold) and the
# testbed up (scripts/testbed up). Prints a Markdown table (bench/README.md, "Pod hop").
#
# 1. loopback: the `hop` binary as `ping` and `pong` on this machine, on the loopback broker,
#    with the runtime (`aion-kanban run`, no database, no Kubernetes) beside them.
# 2. pods: a copy of the testbed inventory whose worker 1 runs `ping` (a Job, started at
#    apply), `pong` (always; targetNode worker 2: a pod on the other worker, in worker 1's
#    namespace) and `cold` (startup: no, always: no — a suspended Job on worker 2 that the
#    runtime starts for each kanban; it exits after one). Every kanban goes ping (worker 1)
#    → broker pod (master) → pong (worker 2) → broker → ping: through Flannel's VXLAN both
#    ways. `apply --wait`, then ping's JSON lines from its log; `down` at the end (also on
#    failure). The hosts stay provisioned (the testbed tests reset them before they start).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SAMPLES=${1:-2000}
RATE=${2:-100}
COLD=${3:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

log() { printf 'pod-hop: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
[ "$(id -u)" = 0 ] || die "must run as root (the testbed)"
eval "$(scripts/k8s-testenv.sh env)"
eval "$(scripts/rabbitmq.sh env)"
[ -f inventories/testbed/inventory.yml ] || die "the testbed is not up (scripts/testbed up)"
scripts/testbed status >/dev/null || die "the testbed is not up (scripts/testbed up)"

# AION_BENCH_BIN=DIR: the binaries (aion-reconcile, aion-kanban, hop) of a build kept there,
# not built here (to alternate two builds in one session).
if [ -n "${AION_BENCH_BIN:-}" ]; then
    BIN=$AION_BENCH_BIN
else
    log "building (release)"
    cargo build --release -q -p aion-kanban -p aion-examples --bin aion-kanban --bin hop \
        -p aion-reconcile --bin aion-reconcile
    BIN=$CARGO_TARGET_DIR/release
fi

WORK=$(mktemp -d)
PIDS=()
INV=
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ -n "$INV" ]; then
        log "down"
        "$BIN/aion-reconcile" down -i "$INV" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---- 1. loopback -------------------------------------------------------------------------
log "loopback: $SAMPLES kanbans at $RATE/s"
vhost="hop-$$"
url=${AION_RABBITMQ_URL%/*}/$vhost
scripts/rabbitmq.sh ctl a add_vhost "$vhost" >/dev/null
scripts/rabbitmq.sh ctl a set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
cat > "$WORK/services.yml" <<'EOF'
microservices:
  ping:
    startup: yes
    always: no
    nextService:
      default:
        - name: pong
  pong:
    startup: yes
    always: yes
    nextService:
      default:
        - name: ping
EOF
RUST_LOG=warn "$BIN/aion-kanban" run --services "$WORK/services.yml" --amqp "$url" --db none \
    --kubeconfig none --data-dir "$WORK/data" >"$WORK/runtime.log" 2>&1 &
PIDS+=($!)
sleep 1
svc_env() { # NAME
    echo RABBITMQ_URL="$url" QUEUE_ORIGIN="$1-001.in" QUEUE_TO="$1-001.out" \
        AION_SERVICES="$WORK/services.yml" SERVICE_NAME="$1" MS_NUMBER=1 AION_HOME="$WORK"
}
# shellcheck disable=SC2046 # word splitting of NAME=VALUE pairs is intended
env $(svc_env pong) RUST_LOG=warn "$BIN/hop" >"$WORK/pong.log" 2>&1 &
PIDS+=($!)
# shellcheck disable=SC2046
env $(svc_env ping) SAMPLES="$SAMPLES" RATE="$RATE" RUST_LOG=warn "$BIN/hop" >"$WORK/loopback.json" \
    2>"$WORK/ping.log" || { cat "$WORK/ping.log" >&2; die "loopback ping failed"; }
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
wait 2>/dev/null || true
PIDS=()
scripts/rabbitmq.sh ctl a delete_vhost "$vhost" >/dev/null

# ---- 2. pods -----------------------------------------------------------------------------
mapfile -t HOSTS < <(sed -n 's/^  - name: //p' inventories/testbed/inventory.yml)
M=${HOSTS[0]} W1=${HOSTS[1]} W2=${HOSTS[2]:?the benchmark needs two workers}
case ${PONG_NODE:-worker2} in
worker2) PONG_ON=$W2 ;;
master) PONG_ON=$M ;;
*) die "PONG_NODE must be worker2 or master" ;;
esac
D="$WORK/inv"
mkdir -p "$D"
cp inventories/testbed/inventory.yml inventories/testbed/known_hosts inventories/testbed/id_ed25519 "$D/"
chmod 600 "$D/id_ed25519"
printf 'deviceName: %s\nmicroservices: {}\n' "$M" > "$D/services.yml"
printf 'deviceName: %s\nmicroservices: {}\n' "$W2" > "$D/services-$W2.yml"
# POD_REQUESTS=1: ping and pong ask for CPU and memory (Burstable, not BestEffort).
REQ=
[ "${POD_REQUESTS:-0}" = 1 ] && REQ=$'    resources:\n      requests: {cpu: 100m, memory: 32Mi}\n'
cat > "$D/services-$W1.yml" <<EOF
deviceName: $W1
microservices:
  ping:
    startup: yes
    always: no
    targetNode: $W1
$REQ    env:
      SAMPLES: "$SAMPLES"
      RATE: "$RATE"
      COLD_COUNT: "$COLD"
      GAP_MS: "6000"
      TIMEOUT_SECS: "180"
    nextService:
      default:
        - name: pong
      cold:
        - name: cold
  pong:
    startup: yes
    always: yes
    targetNode: $PONG_ON
$REQ    nextService:
      default:
        - name: ping
  cold:
    startup: no
    always: no
    targetNode: $W2
    env:
      COUNT: "1"
    nextService:
      default:
        - name: ping
EOF
INV="$D/inventory.yml"
"$BIN/aion-reconcile" validate -i "$INV" >&2 || die "the benchmark's inventory is invalid"
log "apply --wait"
t0=$SECONDS
"$BIN/aion-reconcile" apply -i "$INV" --wait --timeout 600 >"$WORK/apply.log" 2>&1 ||
    { tail -40 "$WORK/apply.log" >&2; die "apply failed"; }
log "applied in $((SECONDS - t0)) s; waiting for ping-001 (namespace $W1)"
KC="$D/.aion/kubeconfig"
[ -f "$KC" ] || KC=$KUBECONFIG
k() { "$AION_KUBECTL" --kubeconfig "$KC" "$@"; }
limit=$((SAMPLES / RATE + COLD * 10 + 300))
if ! k -n "$W1" wait --for=condition=complete job/ping-001 --timeout="${limit}s" >&2; then
    k -n "$W1" logs job/ping-001 >&2 || true
    k -n "$W1" get pods -o wide >&2 || true
    die "ping-001 did not complete"
fi
k -n "$W1" logs job/ping-001 | grep '^{' >"$WORK/pods.json"
nodes=$(k -n "$W1" get pods -o 'custom-columns=POD:.metadata.name,NODE:.spec.nodeName' --no-headers |
    grep -E '^(ping|pong)-001' | tr -s ' ' | paste -sd ';' -)
log "pods: $nodes"

# ---- results -----------------------------------------------------------------------------
hops() { jq -r 'select(.phase == "hops") | [.samples, .lost, .hop_ms.p50, .hop_ms.p99, .round_trip_ms.p50, .round_trip_ms.p99, .one_way_ms.p50, .one_way_ms.p99] | @tsv' "$1"; }
read -r ls ll l50 l99 lr50 lr99 lo50 lo99 < <(hops "$WORK/loopback.json")
read -r ps pl p50 p99 pr50 pr99 po50 po99 < <(hops "$WORK/pods.json")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f×", a / b }'; }
echo
echo "Measured $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD)${AION_BENCH_BIN:+ (binaries from $AION_BENCH_BIN)}${POD_REQUESTS:+, POD_REQUESTS=$POD_REQUESTS}, $SAMPLES kanbans at $RATE/s, load $(cut -d' ' -f1 /proc/loadavg). Pods: $nodes."
echo
echo "| path | kanbans back (lost) | hop p50 (ms) | hop p99 (ms) | round trip p50 / p99 (ms) | one way p50 / p99 (ms) |"
echo "|---|---|---|---|---|---|"
echo "| loopback (this machine, loopback broker) | $ls ($ll) | $l50 | $l99 | $lr50 / $lr99 | $lo50 / $lo99 |"
echo "| pods: ping on $W1, pong on $PONG_ON (broker pod on the master) | $ps ($pl) | $p50 | $p99 | $pr50 / $pr99 | $po50 / $po99 |"
echo "| pods ÷ loopback | | $(ratio "$p50" "$l50") | $(ratio "$p99" "$l99") | | |"
echo
jq -r 'select(.phase == "cold-start") | "Cold on-demand start (kanban sent → echo back from the started Job), \(.latencies_ms | length) runs: median \(.median_ms | . * 10 | round / 10) ms; all (ms): \(.latencies_ms | map(. * 10 | round / 10) | join(", "))"' "$WORK/pods.json"
