#!/usr/bin/env bash
# Issue #15: a ~200 MB image of six layers to 12 hosts without a registry, ours against
# `ssh host ctr -n k8s.io images import - < archive` run by hand (sequential, parallel), and a
# version bump that changes one ~5 MB layer — in one run, side by side (bench/src/bin/image_fanout.rs
# measures; this script makes and removes what it needs). Needs root.
#
#   bench/image-fanout.sh [ARGS...]           run the benchmark (ARGS go to image_fanout, e.g. --runs 2)
#   bench/image-fanout.sh containerd ACTION   install|start|stop|reset every host's containerd (used by the run)
#
# What it makes, and removes at the end (trap, also on failure or Ctrl-C):
# * its own testbed instance, 1 master + 11 workers: AION_TESTBED_NAME=testbed-img,
#   AION_TESTBED_FIRST_HOST=100 (hosts 10.213.0.100-111, namespaces aion-img-N, inventory in
#   inventories/testbed-img/); the development testbed (`scripts/testbed` without a name) is not
#   touched;
# * on each host, Debian's containerd (the files the testbed's apt-get stand-in would install,
#   copied into the host's /usr/bin) started inside the host's namespaces with a private config:
#   no CRI plugin (no kubelet here: 12 kubelets are too heavy for this machine), root
#   /var/lib/containerd (a plain directory of the host's state, see docs/testbed.md), state and
#   socket in the host's private /run, so `ctr -n k8s.io ...` there reaches it by default;
# * a temporary directory (images, archives, SSH control sockets).
# `scripts/testbed up` starts the shared control plane when it is not running; if this script
# started it and no other testbed instance is up at the end, it stops it again.
#
# Environment: AION_BENCH_BIN   an image_fanout binary to run (else a release build of this tree)
#              AION_BENCH_KEEP_CP=1  leave the control plane running in any case
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export AION_TESTBED_NAME=testbed-img AION_TESTBED_FIRST_HOST=100
WORKERS=11
TB=inventories/$AION_TESTBED_NAME
NS_PREFIX=aion-img-
log() { printf '==> %s [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

# Runs inside a host's namespaces (scripts/testbed exec): $1 = install|start|stop|reset.
# shellcheck disable=SC2016
HOST_HELPER='set -eu
P=/run/aion-bench-containerd.pid
CONF=/etc/aion-bench/containerd.toml
LOG=/var/log/aion-bench-containerd.log
start() {
  if [ -f $P ] && kill -0 "$(cat $P)" 2>/dev/null; then return 0; fi
  mkdir -p /var/lib/containerd /run/containerd
  setsid containerd --config $CONF </dev/null >>$LOG 2>&1 &
  echo $! > $P
  n=0
  until ctr version >/dev/null 2>&1; do
    n=$((n + 1))
    if [ $n -ge 300 ]; then echo "containerd did not start:" >&2; tail -20 $LOG >&2; exit 1; fi
    sleep 0.1
  done
}
stop() {
  [ -f $P ] || return 0
  pid=$(cat $P)
  if [ "$(cat /proc/$pid/comm 2>/dev/null)" = containerd ]; then
    kill "$pid" 2>/dev/null || true
    n=0
    # (a zombie counts as stopped: its parent, init, reaps it)
    while kill -0 "$pid" 2>/dev/null && [ "$(cut -d" " -f3 /proc/$pid/stat 2>/dev/null)" != Z ]; do
      n=$((n + 1)); [ $n -lt 100 ] || kill -9 "$pid" 2>/dev/null || true
      sleep 0.1
    done
  fi
  rm -f $P
}
case $1 in
  install)
    for f in /usr/local/lib/aion-testbed/payload/containerd/usr/bin/*; do install -m 755 "$f" /usr/bin/; done
    mkdir -p /etc/aion-bench
    printf "%s\n" "version = 2" "root = \"/var/lib/containerd\"" "state = \"/run/containerd\"" \
      "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]" > $CONF ;;
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf /var/lib/containerd/* /var/lib/aion/images /run/containerd; start ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac'

on_host() { scripts/testbed exec "$1" -- bash -c "$HOST_HELPER" aion-bench-containerd "$2"; }
all_hosts() {
  local action=$1 i rc=0 pids=()
  for i in $(seq 0 "$WORKERS"); do on_host "$i" "$action" & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  return $rc
}

if [ "${1:-}" = containerd ]; then
  all_hosts "${2:?containerd install|start|stop|reset}"
  exit
fi

[ "$(id -u)" = 0 ] || { echo "bench/image-fanout.sh: needs root (testbed)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/aion-image-fanout.XXXXXX)
CP_WAS_UP=0
bash scripts/k8s-testenv.sh status >/dev/null 2>&1 && CP_WAS_UP=1
UP=0
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ $UP = 1 ]; then
    log "stopping the hosts' containerds"
    all_hosts stop
  fi
  log "removing the testbed instance $AION_TESTBED_NAME"
  scripts/testbed down >&2
  rm -rf "$OUT"
  if [ $CP_WAS_UP = 0 ] && [ "${AION_BENCH_KEEP_CP:-0}" != 1 ]; then
    if ip netns list 2>/dev/null | grep -q '^aion-'; then
      log "control plane left running: another testbed instance is up"
    else
      log "stopping the control plane this run started"
      bash scripts/k8s-testenv.sh stop >&2
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BIN=${AION_BENCH_BIN:-}
if [ -z "$BIN" ]; then
  log "building image_fanout (release)"
  cargo build -q --release -p aion-bench --bin image_fanout
  BIN=$OUT/image_fanout
  cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/image_fanout" "$BIN"
  log "image_fanout built from this tree: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- reconciler model bench || echo ', with uncommitted changes in reconciler/, model/ or bench/')"
else
  log "image_fanout given by AION_BENCH_BIN"
fi
log "image_fanout: $BIN (sha256 $(sha256sum < "$BIN" | cut -c1-16))"

log "testbed instance $AION_TESTBED_NAME: 1 master + $WORKERS workers"
UP=1
scripts/testbed up --workers "$WORKERS" >&2 || { scripts/testbed down >&2 || true; scripts/testbed up --workers "$WORKERS" >&2; }
log "containerd on every host"
all_hosts install
all_hosts start

# The uplink is the bridge's tx_bytes: check that frames bridged between two hosts are not
# counted there (but are in the receiving host's veth), and that frames from this machine are.
bridge_check() {
  local n=$((100 * 1024 * 1024)) from=$1 b0 v0 b1 v1 lp
  local dst=10.213.0.$((AION_TESTBED_FIRST_HOST + 2)) veth=aiontb$((AION_TESTBED_FIRST_HOST + 2))
  ip netns exec "${NS_PREFIX}2" socat -u TCP-LISTEN:5999,reuseaddr OPEN:/dev/null & lp=$!
  sleep 0.5
  b0=$(cat /sys/class/net/aionbr0/statistics/tx_bytes); v0=$(cat /sys/class/net/$veth/statistics/tx_bytes)
  if [ "$from" = machine ]; then
    head -c $n /dev/zero | socat -u - TCP:$dst:5999
  else
    ip netns exec "${NS_PREFIX}1" sh -c "head -c $n /dev/zero | socat -u - TCP:$dst:5999"
  fi
  wait $lp
  b1=$(cat /sys/class/net/aionbr0/statistics/tx_bytes); v1=$(cat /sys/class/net/$veth/statistics/tx_bytes)
  echo "bridge check: 104857600 B from $from to host 2: aionbr0 tx +$((b1 - b0)) B, host 2's veth ($veth) tx +$((v1 - v0)) B"
}
bridge_check host-1 | tee "$OUT/bridge-check.txt"
bridge_check machine | tee -a "$OUT/bridge-check.txt"

log "benchmark; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" --inventory "$TB/inventory.yml" --work "$OUT/work" --reset "$ROOT/bench/image-fanout.sh containerd reset" "$@"
log "done; load $(cut -d' ' -f1-3 /proc/loadavg)"
