#!/usr/bin/env bash
# aion-reconcile vs Ansible on the same SSH testbed hosts, in one run: for 3 and 12 hosts,
# the wall time of a first run on fresh hosts and of a no-change run (ours: `apply` then `plan`
# and `apply` again; Ansible: `ansible-playbook` then `--check` and a second run).
# Prints a Markdown table (paste into bench/README.md). Needs root and the control plane
# (scripts/k8s-testenv.sh). Runs on its own testbed instance (AION_TESTBED_NAME=testbed-b, hosts
# 10.213.0.100..), made fresh for each host count and removed at the end, so the development
# testbed is left alone.
#
#   bench/provision-vs-ansible.sh [HOST_COUNTS...]     (default: 3 12)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(3 12)
VENV=${AION_ANSIBLE_VENV:-$HOME/.cache/aion/ansible-venv}
OUT=$(mktemp -d /tmp/aion-bench.XXXXXX)
export AION_TESTBED_NAME=${AION_TESTBED_NAME:-testbed-b} AION_TESTBED_FIRST_HOST=${AION_TESTBED_FIRST_HOST:-100}
TB=inventories/$AION_TESTBED_NAME
log() { printf '==> %s [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

if [ ! -x "$VENV/bin/ansible-playbook" ]; then
  log "installing ansible-core into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'ansible-core==2.19.*'
fi
# Ours is always the release build: built here unless AION_RECONCILE_BIN names one (e.g. a
# copy, so a concurrent build cannot replace it mid-run). The copy's path and hash are logged.
BIN=${AION_RECONCILE_BIN:-}
if [ -z "$BIN" ]; then
  cargo build -q --release -p aion-reconcile
  BIN=$OUT/aion-reconcile
  cp "$ROOT/target/release/aion-reconcile" "$BIN"
fi
log "ours: $BIN (sha256 $(sha256sum < "$BIN" | cut -c1-16)); commit $(git -C "$ROOT" rev-parse --short HEAD)"
PLAN_RUNS=${PLAN_RUNS:-5}
eval "$(scripts/k8s-testenv.sh env)"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

# host lines of the testbed inventory: name address role user
hosts_of() {
  "$VENV/bin/python" - "$1" <<'PY'
import sys, yaml
inv = yaml.safe_load(open(sys.argv[1]))
user = inv.get("ssh", {}).get("user", "root")
for h in inv["hosts"]:
    print(h["name"], h["address"], h["role"], h.get("ssh", {}).get("user", user))
PY
}

# Undo everything provisioning did (hosts as `scripts/testbed up` made them).
reset_hosts() {
  local inv=$1 name addr role user home i
  while read -r name addr role user; do
    home=/root; [ "$user" = root ] || home=/home/$user
    i=$(( ${addr##*.} - AION_TESTBED_FIRST_HOST ))
    ssh -n -i $TB/id_ed25519 -o UserKnownHostsFile=$TB/known_hosts -o BatchMode=yes "$user@$addr" \
      "sudo -n bash -c 'kubeadm reset -f; apt-mark unhold kubelet kubeadm kubectl
for p in kubelet kubeadm kubectl kubernetes-cni cri-tools docker.io containerd; do apt-get remove -y \$p; done
rm -rf /var/lib/aion /etc/docker/daemon.json /etc/apt/sources.list.d/kubernetes.list /etc/apt/keyrings/kubernetes-apt-keyring.gpg /etc/kubernetes $home/.kube $home/$name
sed -i \"/^export AION_HOME=/d; /^export DOCKER_BUILDKIT=/d\" $home/.profile
gpasswd -d $user docker; echo tb-host-$i > /etc/hostname; hostname tb-host-$i; sed -i \"/^127.0.1.1 /d\" /etc/hosts'" >/dev/null 2>&1 || true
    "$AION_KUBECTL" --kubeconfig "$AION_TEST_KUBECONFIG" delete node "$name" --ignore-not-found >/dev/null 2>&1 || true
  done < <(hosts_of "$inv")
  "$AION_KUBECTL" --kubeconfig "$AION_TEST_KUBECONFIG" delete namespace kube-flannel --ignore-not-found --wait=true >/dev/null 2>&1 || true
}

ansible_inventory() {
  local inv=$1 dir=$2 name addr role user master
  master=$(hosts_of "$inv" | awk '$3=="master"{print $1; exit}')
  {
    echo "[all]"
    while read -r name addr role user; do
      echo "$name ansible_host=$addr ansible_user=$user role=$role"
    done < <(hosts_of "$inv")
    echo "[all:vars]"
    echo "ansible_ssh_private_key_file=$ROOT/$TB/id_ed25519"
    echo "ansible_ssh_common_args='-o UserKnownHostsFile=$ROOT/$TB/known_hosts -o StrictHostKeyChecking=yes'"
    echo "master_host=$master"
    echo "pod_cidr=10.244.0.0/16"
    echo "services_file=$ROOT/$TB/services.yml"
    echo "kubeconfig_dest=$dir/kubeconfig"
    echo "flannel_file=$dir/flannel.yaml"
  } > "$dir/hosts.ini"
}

ROWS=()
for n in "${COUNTS[@]}"; do
  workers=$((n - 1))
  log "testbed with $n hosts"
  # Objects an earlier run left in the (shared) cluster would show as deletions in the
  # no-change plan: remove them and wait until their namespaces are gone.
  if [ -f "$TB/inventory.yml" ] && [ -f "$TB/.aion/kubeconfig" ]; then "$BIN" down -i "$TB/inventory.yml" >/dev/null 2>&1 || true; fi
  "$AION_KUBECTL" --kubeconfig "$AION_TEST_KUBECONFIG" wait --for=delete ns -l "aion.latona.io/inventory=$AION_TESTBED_NAME" --timeout=180s >/dev/null 2>&1 || true
  scripts/testbed down >&2 || true
  # (a loaded machine can make a host's sshd slow to answer: one retry)
  scripts/testbed up --workers "$workers" >&2 || { scripts/testbed down >&2 || true; scripts/testbed up --workers "$workers" >&2; }
  inv=$TB/inventory.yml
  # The generated services.yml pins to the development testbed's worker names.
  sed -i "s/targetNode: aion-worker-/targetNode: $AION_TESTBED_NAME-worker-/" "$TB/services.yml"
  d="$OUT/$n"; mkdir -p "$d"

  log "[$n] aion-reconcile apply (fresh hosts)"
  t0=$(now); "$BIN" apply -i "$inv" --parallel 16 > "$d/ours-first.log" 2>&1 || { tail -30 "$d/ours-first.log" >&2; exit 1; }; t1=$(now)
  log "[$n] aion-reconcile plan (no changes) x $PLAN_RUNS; load: $(cut -d' ' -f1-3 /proc/loadavg)"
  plans=()
  for _ in $(seq "$PLAN_RUNS"); do
    t2=$(now); "$BIN" plan -i "$inv" --parallel 16 --detailed-exitcode > "$d/ours-plan.log" 2>&1 || { echo "plan found changes or failed, see $d/ours-plan.log" >&2; exit 1; }; t3=$(now)
    plans+=("$(secs "$t2" "$t3")")
  done
  log "[$n] plan runs: ${plans[*]}"
  log "[$n] aion-reconcile apply (no changes)"
  t4=$(now); "$BIN" apply -i "$inv" --parallel 16 > "$d/ours-second.log" 2>&1; t5=$(now)
  grep -q '^Apply: nothing to change' "$d/ours-second.log" || { echo "no-change apply changed something, see $d/ours-second.log" >&2; exit 1; }
  ours_first=$(secs "$t0" "$t1"); ours_second=$(secs "$t4" "$t5")
  ours_plan=$(printf '%s\n' "${plans[@]}" | sort -n | awk '{v[NR]=$1} END{printf "%.2f", v[int((NR+1)/2)]}')
  plan_range=$(printf '%s\n' "${plans[@]}" | sort -n | awk 'NR==1{a=$1} {b=$1} END{printf "%s–%s", a, b}')

  log "[$n] resetting hosts for Ansible; load: $(cut -d' ' -f1-3 /proc/loadavg)"
  reset_hosts "$inv"
  sed 's|{{ pod_cidr }}|10.244.0.0/16|' templates/flannel.yaml > "$d/flannel.yaml"
  ansible_inventory "$inv" "$d"
  export ANSIBLE_CONFIG=$ROOT/bench/ansible/ansible.cfg ANSIBLE_FORKS=$n
  log "[$n] ansible-playbook (fresh hosts)"
  t0=$(now); "$VENV/bin/ansible-playbook" -i "$d/hosts.ini" bench/ansible/playbook.yml > "$d/ansible-first.log" 2>&1 || { tail -30 "$d/ansible-first.log" >&2; exit 1; }; t1=$(now)
  log "[$n] ansible-playbook --check (no changes)"
  t2=$(now); "$VENV/bin/ansible-playbook" -i "$d/hosts.ini" bench/ansible/playbook.yml --check > "$d/ansible-check.log" 2>&1; t3=$(now)
  log "[$n] ansible-playbook (no changes)"
  t4=$(now); "$VENV/bin/ansible-playbook" -i "$d/hosts.ini" bench/ansible/playbook.yml > "$d/ansible-second.log" 2>&1; t5=$(now)
  an_first=$(secs "$t0" "$t1"); an_check=$(secs "$t2" "$t3"); an_second=$(secs "$t4" "$t5")
  grep -E 'changed=' "$d/ansible-second.log" | sed 's/^/    ansible no-change run: /' >&2 || true
  ROWS+=("| $n | $ours_first | $an_first | $ours_plan ($plan_range) | $an_check | $(awk -v a="$an_check" -v b="$ours_plan" 'BEGIN{printf "%.0f×", a/b}') | $ours_second | $an_second |")
  log "[$n] row: ${ROWS[-1]}"
done

log "removing the benchmark testbed"
scripts/testbed down >&2 || true

log "done; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| hosts | first run: ours \`apply\` (s) | first run: \`ansible-playbook\` (s) | no-change: ours \`plan\` (s, median of $PLAN_RUNS (range)) | no-change: \`ansible-playbook --check\` (s) | plan speed-up | no-change: ours \`apply\` (s) | no-change: \`ansible-playbook\` (s) |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo "logs: $OUT" >&2
