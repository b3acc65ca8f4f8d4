#!/bin/bash
# Runs as PID 1 of one simulated edge host, inside its own network, UTS and mount namespaces
# (started by scripts/testbed). Gives the host private copy-on-write views of the directories
# provisioning writes, its own hostname and a real sshd; then becomes that sshd.
#
# Usage: host-init.sh HOST_DIR
#   HOST_DIR/host.env   HOSTNAME_INIT, LOGIN_USER, OVERLAY_DIRS (space separated absolute paths)
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
# Private scratch space: /run (sshd privsep dir, sudo timestamps) and /tmp.
mount -t tmpfs -o mode=755 aion-tb-run /run
mount -t tmpfs -o mode=1777 aion-tb-tmp /tmp
mkdir -p /run/sshd /run/lock
chmod 755 /run/sshd

hostname "$HOSTNAME_INIT"
ip link set lo up

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
