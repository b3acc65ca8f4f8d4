#!/bin/bash
# Runs as PID 1 of one simulated edge host, inside its own network, UTS and mount namespaces
# (started by scripts/testbed). Gives the host private copy-on-write views of the directories
# provisioning writes, its own hostname and a real sshd; then becomes that sshd.
#
# Usage: host-init.sh HOST_DIR
#   HOST_DIR/host.env   HOSTNAME_INIT, LOGIN_USER, OVERLAY_DIRS (space separated absolute paths),
#                       CGROUP_ROOT (the kubelet's cgroup subtree, e.g. aion-tb-0)
#   HOST_DIR/upper/...  overlay upper directories (pre-seeded by scripts/testbed)
#   HOST_DIR/work/...   overlay work directories
#   HOST_DIR/sshd_config, HOST_DIR/authorized_keys
set -euo pipefail
HOST_DIR=$1
# shellcheck source=/dev/null
. "$HOST_DIR/host.env"

# Private copy-on-write directories. Overlays, never single-file bind mounts: an atomic
# write (temp file + rename) onto a bind-mounted file fails with EBUSY.
for d in $OVERLAY_DIRS; do
  key=${d#/}; key=${key//\//_}
  mkdir -p "$HOST_DIR/upper/$key" "$HOST_DIR/work/$key"
  mount -t overlay "aion-tb-$key" -o "lowerdir=$d,upperdir=$HOST_DIR/upper/$key,workdir=$HOST_DIR/work/$key" "$d"
done
# Private scratch space: /run (sshd privsep dir, sudo timestamps, containerd's state and pod
# network namespaces) and /tmp.
mount -t tmpfs -o mode=755 aion-tb-run /run
mount -t tmpfs -o mode=1777 aion-tb-tmp /tmp
mkdir -p /run/sshd /run/lock
chmod 755 /run/sshd

# --- what a real node needs (docs/testbed.md, "Real nodes") ---------------------------------------
# containerd's overlayfs snapshotter cannot stack on the host's overlay /var/lib: its content
# and snapshots live in a plain directory of this host's state.
mkdir -p "$HOST_DIR/containerd" /var/lib/containerd
mount --bind "$HOST_DIR/containerd" /var/lib/containerd

# The kubelet checks (protectKernelDefaults) or would write machine-wide sysctls. The kernel is
# shared with everything on this machine, so inside this host's mount namespace the files read
# what a kubelet expects, and the machine keeps its own values; nothing here ever writes them.
mkdir -p "$HOST_DIR/sysctl"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  key=${kv%%=*}
  printf '%s\n' "${kv#*=}" > "$HOST_DIR/sysctl/${key//\//.}"
  mount --bind -o ro "$HOST_DIR/sysctl/${key//\//.}" "/proc/sys/$key"
done

# `ip netns exec` gave this host a fresh /sys without the cgroup mounts: mount the machine's
# hierarchies again (the same ones, as the machine's PID 1 sees them), as a node's init does.
mount -t tmpfs -o mode=755 aion-tb-cgroup /sys/fs/cgroup
while read -r mp fstype opts; do
  mkdir -p "$mp"
  mount -t "$fstype" -o "$opts" "$fstype" "$mp"
done < <(awk '{ split($0, lr, " - "); split(lr[1], l, " "); split(lr[2], r, " ");
  if ((r[1] == "cgroup" || r[1] == "cgroup2") && l[5] ~ "^/sys/fs/cgroup/") {
    o = r[3]; sub(/^r[wo],?/, "", o); if (o == "") o = "rw"; print l[5], r[1], o } }' /proc/1/mountinfo)

# The kubelet's cgroupRoot: a subtree of its own in every cgroup v1 hierarchy, so the hosts'
# pods never share cgroups (scripts/testbed down removes it).
if [ -n "${CGROUP_ROOT:-}" ]; then
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ "$(stat -f -c %T "$h")" = cgroupfs ] || continue
    mkdir -p "$h/$CGROUP_ROOT"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" > "$h/$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h/$CGROUP_ROOT/cpuset.mems"
    fi
  done
fi

# Mounts the kubelet makes for pods (service-account tokens, hostPath, ...) reach the containers'
# mount namespaces; the host's namespace started private, so nothing propagates to the machine.
mount --make-rshared /

hostname "$HOSTNAME_INIT"
ip link set lo up
# No default route (a host reaches the bridge subnet only), but the Service range must be
# routable from the host itself: hostNetwork pods (Flannel, kube-proxy) reach the apiserver at
# its ClusterIP, which kube-proxy rewrites to 10.213.0.1 (on the bridge) after the route lookup.
# A ClusterIP that nothing rewrites reaches the machine's bridge address and ends there.
ip route add 10.96.0.0/12 dev eth0 2>/dev/null || true

# Login user. Root logs in with a key; the non-root user gets passwordless sudo.
if [ "$LOGIN_USER" = root ]; then
  home=/root
else
  if ! id "$LOGIN_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash -U "$LOGIN_USER"
    # '*' = no password but not locked: with UsePAM no, sshd refuses accounts locked with '!'.
    usermod -p '*' "$LOGIN_USER"
  fi
  home=$(getent passwd "$LOGIN_USER" | cut -d: -f6)
  printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$LOGIN_USER" > "/etc/sudoers.d/90-$LOGIN_USER"
  chmod 440 "/etc/sudoers.d/90-$LOGIN_USER"
fi
install -d -m 700 -o "$LOGIN_USER" -g "$(id -gn "$LOGIN_USER")" "$home/.ssh"
install -m 600 -o "$LOGIN_USER" -g "$(id -gn "$LOGIN_USER")" "$HOST_DIR/authorized_keys" "$home/.ssh/authorized_keys"

# Stand-in call log, appendable by every user on the host.
touch /var/log/aion-standins.log
chmod 666 /var/log/aion-standins.log

echo "aion-testbed: host $HOSTNAME_INIT ready, starting sshd"
exec /usr/sbin/sshd -D -e -f "$HOST_DIR/sshd_config"
