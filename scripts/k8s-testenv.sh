#!/usr/bin/env bash
# A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager +
# kube-scheduler, built from Go modules (tools/k8sbin) and run on this machine; the same build
# gives the testbed nodes their kubelet and kube-proxy. See docs/control-plane.md.
#
#   scripts/k8s-testenv.sh build    build (or reuse) the binaries in the versioned cache
#   scripts/k8s-testenv.sh start    build if needed, start etcd/apiserver/controller-manager (idempotent)
#   scripts/k8s-testenv.sh stop     stop the processes by PID (idempotent, also after a crash)
#   scripts/k8s-testenv.sh status   print what runs where; exit 0 only if the apiserver is ready
#   scripts/k8s-testenv.sh env      print `export AION_TEST_KUBECONFIG=... AION_KUBECTL=... AION_K8S_BIN=...`
#
# Environment:
#   AION_K8S_STATE       state dir (certs, kubeconfig, pids, logs, etcd data); default ~/.cache/aion/k8s-run
#   AION_K8S_BIN_CACHE   binary cache root; default ~/.cache/aion/k8s-bin
#   AION_K8S_API_PORT    apiserver secure port; default 16443
#   AION_K8S_ETCD_PORT   etcd client port; default 12379 (peer port = +1)
#   AION_K8S_READY_TIMEOUT  seconds to wait for /readyz; default 180
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODDIR="$ROOT/tools/k8sbin"
STATE=${AION_K8S_STATE:-$HOME/.cache/aion/k8s-run}
BIN_CACHE=${AION_K8S_BIN_CACHE:-$HOME/.cache/aion/k8s-bin}
API_PORT=${AION_K8S_API_PORT:-16443}
ETCD_PORT=${AION_K8S_ETCD_PORT:-12379}
PEER_PORT=$((ETCD_PORT + 1))
READY_TIMEOUT=${AION_K8S_READY_TIMEOUT:-180}
BRIDGE_IP=10.213.0.1
PROGRAMS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

log() { printf 'k8s-testenv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

k8s_version() {
    # The pinned k8s.io/kubernetes version, read from the committed go.mod (no network).
    awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$MODDIR/go.mod"
}

bin_dir() {
    local v sum
    v=$(k8s_version)
    [ -n "$v" ] || die "no k8s.io/kubernetes requirement in $MODDIR/go.mod"
    sum=$(sha256sum "$MODDIR/go.sum" | cut -c1-16)
    printf '%s/%s-%s\n' "$BIN_CACHE" "$v" "$sum"
}

have_bins() {
    local dir=$1 p
    for p in "${PROGRAMS[@]}"; do [ -x "$dir/$p" ] || return 1; done
}

cmd_build() {
    local dir v minor tmp date ldf
    dir=$(bin_dir)
    if have_bins "$dir"; then
        log "binaries present in $dir (reused)"
        return 0
    fi
    command -v go >/dev/null || die "go is not installed (Debian: the Go toolchain named in docs/control-plane.md)"
    v=$(k8s_version)
    minor=${v#v1.}; minor=${minor%%.*}
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
    # Reproducible build date: the module's publication time from the proxy metadata, if cached.
    date=$(cd "$MODDIR" && info=$(go mod download -json "k8s.io/kubernetes@$v" 2>/dev/null | jq -r '.Info // empty') &&
        [ -n "$info" ] && jq -r '.Time // empty' "$info" || true)
    [ -n "$date" ] || date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    ldf="-s -w"
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldf+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    mkdir -p "$BIN_CACHE"
    tmp=$(mktemp -d "$BIN_CACHE/.build.XXXXXX")
    log "building Kubernetes $v into $dir (cold builds take a long while; see docs/control-plane.md)"
    (
        cd "$MODDIR"
        go build -trimpath -tags selinux,notest -ldflags "$ldf" -o "$tmp/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kubectl \
            k8s.io/kubernetes/cmd/kube-scheduler \
            k8s.io/kubernetes/cmd/kubelet \
            k8s.io/kubernetes/cmd/kube-proxy
        go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
    ) || { rm -rf "$tmp"; die "go build failed"; }
    have_bins "$tmp" || { rm -rf "$tmp"; die "build finished but binaries are missing in $tmp"; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built: $(cd "$dir" && ls -s --block-size=M "${PROGRAMS[@]}" | tr '\n' ' ')"
}

PKI="$STATE/pki"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"
KUBECONFIG_ADMIN_BRIDGE="$STATE/admin-bridge.kubeconfig"
KUBECONFIG_KCM="$STATE/controller-manager.kubeconfig"
KUBECONFIG_SCHED="$STATE/scheduler.kubeconfig"
SERVICES=(etcd kube-apiserver kube-controller-manager kube-scheduler)
# kubeadm's defaults, so the testbed nodes' kubelets (clusterDNS 10.96.0.10) and Flannel
# (podCidr 10.244.0.0/16, one /24 per node allocated by the controller-manager) fit.
SERVICE_CIDR=10.96.0.0/12
SERVICE_IP=10.96.0.1
CLUSTER_CIDR=10.244.0.0/16
# Bumped when the set of certificates or their SANs change: older state is regenerated.
PKI_LAYOUT=2

# --- certificates -------------------------------------------------------------------------------

# issue <name> <subject> <extensions> : key + cert signed by the CA in $PKI
issue() {
    local name=$1 subj=$2 ext=$3
    openssl req -new -newkey rsa:2048 -nodes -subj "$subj" \
        -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
    printf '%b\n' "$ext" >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

ensure_pki() {
    if [ -s "$PKI/ca.crt" ] && [ -s "$PKI/apiserver.crt" ] && [ -s "$PKI/admin.crt" ] &&
        [ -s "$PKI/controller-manager.crt" ] && [ -s "$PKI/sa.key" ] && [ -s "$PKI/sa.pub" ] &&
        [ "$(cat "$PKI/layout" 2>/dev/null)" = "$PKI_LAYOUT" ] &&
        openssl x509 -checkend 86400 -noout -in "$PKI/apiserver.crt" >/dev/null 2>&1; then
        return 0
    fi
    log "generating certificates in $PKI"
    rm -rf "$PKI"
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=aion-test-ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    local sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    sans+=",DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$BRIDGE_IP,IP:$SERVICE_IP"
    issue apiserver "/CN=kube-apiserver" \
        "subjectAltName=$sans\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
    issue admin "/O=system:masters/CN=aion-test-admin" \
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
    issue controller-manager "/CN=system:kube-controller-manager" \
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
    issue scheduler "/CN=system:kube-scheduler" \
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
    # The apiserver's client identity towards the kubelets (logs, exec, port-forward), as kubeadm
    # issues it; authorised on the kubelets through system:kubelet-api-admin (bootstrap_objects).
    issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" \
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI"/*.key
    echo "$PKI_LAYOUT" >"$PKI/layout"
}

# write_kubeconfig <file> <server> <user> <cert> <key>
write_kubeconfig() {
    local file=$1 server=$2 user=$3 cert=$4 key=$5 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: aion-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: aion-test
  context:
    cluster: aion-test
    user: $user
current-context: aion-test
KUBECONFIG
    chmod 600 "$tmp"
    mv "$tmp" "$file"
}

# --- processes ----------------------------------------------------------------------------------

# pid_of <service>: prints the PID if the recorded process is alive and is that program.
pid_of() {
    local f="$PIDS/$1.pid" pid exe
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ -d "/proc/$pid" ] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    case "$exe" in */"$1" | */"$1"" (deleted)") ;; *) return 1 ;; esac
    printf '%s\n' "$pid"
}

launch() {
    local name=$1
    shift
    mkdir -p "$PIDS" "$LOGS"
    printf '\n=== %s started %s: %s\n' "$name" "$(date -u +%FT%TZ)" "$*" >>"$LOGS/$name.log"
    # setsid: own session, so the caller's Ctrl-C / terminal hangup does not reach it.
    # 9>&-: do not hand the state lock to the daemon.
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
    echo $! >"$PIDS/$name.pid"
}

stop_one() {
    local name=$1 pid i
    if pid=$(pid_of "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            [ -d "/proc/$pid" ] || break
            sleep 0.2
        done
        if [ -d "/proc/$pid" ]; then
            log "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$PIDS/$name.pid"
}

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

curl_api() {
    curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "https://127.0.0.1:$API_PORT$1"
}

api_ready() { [ "$(curl_api /readyz 2>/dev/null)" = ok ]; }

all_running() {
    local s
    for s in "${SERVICES[@]}"; do pid_of "$s" >/dev/null || return 1; done
}

# wait_until <what> <timeout> <service whose death aborts the wait> <command...>
wait_until() {
    local what=$1 timeout=$2 svc=$3 start
    shift 3
    start=$SECONDS
    until "$@"; do
        if ! pid_of "$svc" >/dev/null; then
            log "$svc exited while waiting for $what; last lines of $LOGS/$svc.log:"
            tail -n 30 "$LOGS/$svc.log" >&2 || true
            return 1
        fi
        if ((SECONDS - start >= timeout)); then
            log "timed out after ${timeout}s waiting for $what; see $LOGS/$svc.log"
            tail -n 30 "$LOGS/$svc.log" >&2 || true
            return 1
        fi
        sleep 1
    done
    log "$what after $((SECONDS - start))s"
}

etcd_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }

default_sa_exists() { curl_api /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1; }

# Objects kubeadm creates at init so that `kubeadm join`-style bootstrap works: RBAC for bootstrap
# tokens and CSR auto-approval, and the kube-public/cluster-info ConfigMap the bootstrapsigner signs.
bootstrap_objects() {
    local bridge_kubeconfig
    bridge_kubeconfig=$(
        cat <<KC
apiVersion: v1
kind: Config
clusters:
- name: ""
  cluster:
    server: https://$BRIDGE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
contexts: null
current-context: ""
users: null
KC
    )
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" apply --server-side --field-manager=aion-k8s-testenv \
        --force-conflicts -f - >>"$LOGS/bootstrap-objects.log" 2>&1 <<OBJECTS
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:kubelet-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-bootstrapper"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers:kubeadm:default-node-token"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers:kubeadm:default-node-token"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-certificate-rotation"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cluster-info, namespace: kube-public}
data:
  kubeconfig: |
$(printf '%s\n' "$bridge_kubeconfig" | sed 's/^/    /')
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: "kubeadm:bootstrap-signer-clusterinfo", namespace: kube-public}
rules:
- {apiGroups: [""], resources: [configmaps], resourceNames: [cluster-info], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: "kubeadm:bootstrap-signer-clusterinfo", namespace: kube-public}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: "kubeadm:bootstrap-signer-clusterinfo"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:anonymous"}
OBJECTS
}

# Serialize start/stop: the testbed and CI may both call `start`; the second one waits and reuses.
lock_state() {
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 600 9 || die "another k8s-testenv.sh holds $STATE/.lock"
}

cmd_start() {
    local t0=$SECONDS s
    lock_state
    mkdir -p "$PIDS" "$LOGS"
    if all_running && [ -s "$PKI/ca.crt" ] && api_ready; then
        log "already running (apiserver https://127.0.0.1:$API_PORT, state $STATE)"
        return 0
    fi
    # Partially running or crashed: clean up whatever is left, then start fresh.
    for s in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_one "$s"; done
    for p in "$API_PORT" "$ETCD_PORT" "$PEER_PORT"; do
        port_busy "$p" && die "port $p is in use by another process (set AION_K8S_API_PORT / AION_K8S_ETCD_PORT)"
    done
    cmd_build
    BIN=$(bin_dir)
    ensure_pki
    write_kubeconfig "$KUBECONFIG_ADMIN" "https://127.0.0.1:$API_PORT" aion-test-admin "$PKI/admin.crt" "$PKI/admin.key"
    write_kubeconfig "$KUBECONFIG_ADMIN_BRIDGE" "https://$BRIDGE_IP:$API_PORT" aion-test-admin "$PKI/admin.crt" "$PKI/admin.key"
    write_kubeconfig "$KUBECONFIG_KCM" "https://127.0.0.1:$API_PORT" system:kube-controller-manager \
        "$PKI/controller-manager.crt" "$PKI/controller-manager.key"
    write_kubeconfig "$KUBECONFIG_SCHED" "https://127.0.0.1:$API_PORT" system:kube-scheduler \
        "$PKI/scheduler.crt" "$PKI/scheduler.key"
    printf '%s\n' "$BIN" >"$STATE/bin-dir"

    # A fresh store on every cold start: tests and the testbed must not see objects of earlier runs.
    rm -rf "$STATE/etcd"
    launch etcd "$BIN/etcd" --name aion-test --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "aion-test=http://127.0.0.1:$PEER_PORT" --unsafe-no-fsync
    wait_until "etcd healthy" 60 etcd etcd_healthy

    # Bound to 0.0.0.0 because the testbed bridge (aionbr0, 10.213.0.1) may appear after we start.
    launch kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=0.0.0.0 --advertise-address="$BRIDGE_IP" --secure-port="$API_PORT" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --cert-dir="$PKI" \
        --client-ca-file="$PKI/ca.crt" \
        --enable-bootstrap-token-auth \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=true --profiling=false
    wait_until "kube-apiserver /readyz ok" "$READY_TIMEOUT" kube-apiserver api_ready

    launch kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$KUBECONFIG_KCM" --leader-elect=false --secure-port=0 \
        --controllers='*,bootstrapsigner,tokencleaner' \
        --use-service-account-credentials=true \
        --cluster-name=aion-test \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
        --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --profiling=false
    launch kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$KUBECONFIG_SCHED" \
        --leader-elect=false --secure-port=0 \
        --profiling=false
    bootstrap_objects || { log "creating bootstrap objects failed; see $LOGS/bootstrap-objects.log"; exit 1; }
    # The controller-manager is working once it has created the default ServiceAccount.
    wait_until "controller-manager created default/default ServiceAccount" "$READY_TIMEOUT" \
        kube-controller-manager default_sa_exists
    log "control plane up in $((SECONDS - t0))s; kubeconfig $KUBECONFIG_ADMIN"
}

cmd_stop() {
    local s
    lock_state
    for s in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_one "$s"; done
    log "stopped (state kept in $STATE)"
}

cmd_status() {
    local s pid rc=0
    for s in "${SERVICES[@]}"; do
        if pid=$(pid_of "$s"); then
            printf '%-24s running  pid %-8s log %s\n' "$s" "$pid" "$LOGS/$s.log"
        else
            printf '%-24s stopped           log %s\n' "$s" "$LOGS/$s.log"
            rc=1
        fi
    done
    if [ -s "$PKI/ca.crt" ] && api_ready; then
        printf 'apiserver                https://127.0.0.1:%s ready (%s)\n' "$API_PORT" \
            "$(curl_api /version 2>/dev/null | jq -r .gitVersion)"
    else
        printf 'apiserver                https://127.0.0.1:%s not ready\n' "$API_PORT"
        rc=1
    fi
    printf 'kubeconfig               %s\n' "$KUBECONFIG_ADMIN"
    printf 'binaries                 %s\n' "$(cat "$STATE/bin-dir" 2>/dev/null || bin_dir)"
    return $rc
}

cmd_env() {
    local bin
    bin=$(cat "$STATE/bin-dir" 2>/dev/null || bin_dir)
    all_running || log "warning: the control plane is not running (run: $0 start)"
    printf 'export AION_TEST_KUBECONFIG=%q\n' "$KUBECONFIG_ADMIN"
    printf 'export AION_KUBECTL=%q\n' "$bin/kubectl"
    printf 'export AION_K8S_BIN=%q\n' "$bin"
    printf 'export AION_K8S_STATE=%q\n' "$STATE"
}

case "${1:-}" in
build) cmd_build ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
