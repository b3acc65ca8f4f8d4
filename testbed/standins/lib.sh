# shellcheck shell=bash disable=SC2034
# Shared helpers of the testbed stand-ins (installed at /usr/local/lib/aion-testbed/lib.sh on
# each simulated host). Every stand-in appends one line per call to $STANDIN_LOG.
STANDIN_LOG=/var/log/aion-standins.log
STANDIN_STATE=/var/lib/aion-standins
STANDIN_LIB=/usr/local/lib/aion-testbed
# The real curl (the `curl` command on hosts is a stand-in that keeps traffic on the testbed).
CURL=$STANDIN_LIB/curl.real

# standin_log NAME ARGS... : "<UTC time> uid=<uid> <name> <args shell-quoted>"
# Bash builtins only (no date/id/subshell forks): every stand-in call logs, and the facts of a
# whole inventory are gathered at once.
standin_log() {
  local name=$1; shift
  local line ts q a
  TZ=UTC0 printf -v ts '%(%Y-%m-%dT%H:%M:%SZ)T' -1
  line="$ts uid=$EUID $name"
  for a in "$@"; do printf -v q '%q' "$a"; line+=" $q"; done
  printf '%s\n' "$line" >> "$STANDIN_LOG" 2>/dev/null || true
}

# pkg_installed PKG : true when dpkg (the host's private /var/lib/dpkg) has PKG installed.
pkg_installed() {
  case $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) in
    "install ok installed" | "hold ok installed") return 0 ;;
    *) return 1 ;;
  esac
}

# require_pkg PKG CMD : a command provided by a package exists only once the package is installed.
require_pkg() {
  if ! pkg_installed "$1"; then
    printf '%s: command not found\n' "$2" >&2
    exit 127
  fi
}

# Atomic write: write_file PATH MODE < content
write_file() {
  local path=$1 mode=${2:-644} tmp
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$(dirname "$path")/.tmp.XXXXXX")
  cat > "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}
