#!/usr/bin/env bash
# Start/stop two loopback RabbitMQ brokers (Debian's rabbitmq-server) that act as two devices'
# brokers for aion-kanban's tests and benchmarks.
#
#   scripts/rabbitmq.sh start|stop|status|env
#   scripts/rabbitmq.sh restart [a|b]     # stop and start again (both, or one), same state
#   scripts/rabbitmq.sh ctl a|b ARGS...   # rabbitmqctl ARGS on that node (e.g. import_definitions)
#
# Instance A: node aion-kanban-a@localhost, AMQP 127.0.0.1:5672, Erlang distribution port 25672.
# Instance B: node aion-kanban-b@localhost, AMQP 127.0.0.1:5673, Erlang distribution port 25673.
# Both run as non-service processes (not systemd) with all state under
# ${AION_RABBITMQ_STATE:-$HOME/.cache/aion/rabbitmq}; `start` is idempotent and installs
# rabbitmq-server from Debian when it is missing. `env` prints AION_RABBITMQ_URL(_B).
set -euo pipefail

STATE="${AION_RABBITMQ_STATE:-$HOME/.cache/aion/rabbitmq}"
RMQ_BIN=/usr/lib/rabbitmq/bin
INSTANCES=("a 5672 25672" "b 5673 25673")

die() { echo "rabbitmq.sh: $*" >&2; exit 1; }

ensure_installed() {
  if [ ! -x "$RMQ_BIN/rabbitmq-server" ]; then
    [ "$(id -u)" = 0 ] || die "rabbitmq-server is not installed and we are not root"
    echo "rabbitmq.sh: installing rabbitmq-server from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  # Debian's package may start the system service; we never use it (it would take port 5672).
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
    systemctl stop rabbitmq-server || true
  fi
}

# Environment for one instance: name port distport
inst_env() {
  local name=$1 port=$2 dist=$3 dir="$STATE/$1"
  export HOME="$STATE"   # the Erlang cookie lives in $STATE/.erlang.cookie
  export RABBITMQ_NODENAME="aion-kanban-$name@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$port"
  export RABBITMQ_DIST_PORT="$dist"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"   # rabbitmq.conf (new-style)
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export ERL_EPMD_ADDRESS=127.0.0.1
}

is_up() { (inst_env "$@"; "$RMQ_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" status >/dev/null 2>&1); }

start_one() {
  local name=$1 port=$2 dist=$3 dir="$STATE/$1"
  if is_up "$@"; then echo "rabbitmq.sh: $name already running on 127.0.0.1:$port"; return 0; fi
  mkdir -p "$dir/mnesia" "$dir/log"
  (
    inst_env "$@"
    # management/prometheus listeners would collide between instances: keep them off.
    printf '[rabbitmq_shovel].\n' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users = none
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 50MB
log.file.level = warning
EOF
    # A test's extra settings (tests/src/rabbitmq.rs `ExtraConf`: e.g. the TLS listener as
    # aion-reconcile renders it), until it removes them; `start` drops a stale one.
    if [ -f "$dir/extra.conf" ]; then cat "$dir/extra.conf" >>"$dir/rabbitmq.conf"; fi
    printf '[].\n' >"$RABBITMQ_ADVANCED_CONFIG_FILE"
    nohup "$RMQ_BIN/rabbitmq-server" >"$dir/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
  )
  local i
  for i in $(seq 1 120); do
    if (inst_env "$@"; "$RMQ_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" await_startup >/dev/null 2>&1); then
      echo "rabbitmq.sh: $name up on 127.0.0.1:$port"
      return 0
    fi
    sleep 1
  done
  tail -30 "$dir/log/stdout.log" >&2 || true
  die "instance $name did not start (log: $dir/log)"
}

stop_one() {
  local name=$1 dir="$STATE/$1"
  if is_up "$@"; then
    (inst_env "$@"; "$RMQ_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1) || true
  fi
  if [ -f "$dir/server.pid" ]; then
    local pid; pid=$(cat "$dir/server.pid")
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/server.pid"
  fi
  echo "rabbitmq.sh: $name stopped"
}

cmd=${1:-}
case "$cmd" in
  start)
    ensure_installed
    mkdir -p "$STATE"
    if [ ! -f "$STATE/.erlang.cookie" ]; then
      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/.erlang.cookie"
      chmod 400 "$STATE/.erlang.cookie"
    fi
    for i in "${INSTANCES[@]}"; do set -- $i; rm -f "$STATE/$1/extra.conf"; start_one "$@"; done
    ;;
  stop)
    for i in "${INSTANCES[@]}"; do stop_one $i; done
    ;;
  restart)
    # A broker restart for fault tests: the node stops (connections drop) and starts again on
    # the same state (durable queues and persistent messages survive).
    which=${2:-}
    found=0
    for i in "${INSTANCES[@]}"; do
      set -- $i
      if [ -z "$which" ] || [ "$which" = "$1" ]; then
        found=1
        stop_one "$@"
        start_one "$@"
      fi
    done
    [ "$found" = 1 ] || die "no instance named '$which' (a or b)"
    ;;
  status)
    rc=0
    for i in "${INSTANCES[@]}"; do
      set -- $i
      if [ -x "$RMQ_BIN/rabbitmqctl" ] && is_up "$@"; then echo "$1: running on 127.0.0.1:$2"; else echo "$1: stopped"; rc=1; fi
    done
    exit $rc
    ;;
  ctl)
    which=${2:-}
    shift 2 || die "usage: $0 ctl a|b ARGS..."
    for i in "${INSTANCES[@]}"; do
      set -- $i "$@"
      if [ "$1" = "$which" ]; then
        inst_env "$1" "$2" "$3"
        shift 3
        exec "$RMQ_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@"
      fi
      shift 3
    done
    die "no instance named '$which' (a or b)"
    ;;
  env)
    echo "export AION_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
    echo "export AION_RABBITMQ_URL_B=amqp://guest:guest@127.0.0.1:5673/%2f"
    ;;
  *)
    die "usage: $0 start|stop|status|env|restart [a|b]|ctl a|b ARGS..."
    ;;
esac
