# shellcheck shell=bash
# Shared by the bench/*.sh scripts (sourced, not run): build once, start and stop a
# release replgate on loopback with a throw-away data directory, read /proc, and append
# results to BENCHMARKS.md. Every process started here is stopped by its pid on exit.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BIN=${BENCH_BIN:-$ROOT/target/release/replgate}
CLIENT=${BENCH_CLIENT:-$ROOT/target/release/examples/bench_client}
RESULTS=${BENCH_RESULTS:-$ROOT/BENCHMARKS.md}
PASSWORD=bench-root-password

SCRIPT_ARGS="$*"
# The knobs given in the environment (before the scripts fill in defaults), for the record;
# a script names its own in BENCH_KNOBS before sourcing this file.
ENV_KNOBS=""
for knob in DURATION ROUNDS NGINX_WORKERS N THREADS LEVELS POLL_INTERVAL ${BENCH_KNOBS:-}; do
  [ -n "${!knob:-}" ] && ENV_KNOBS="$ENV_KNOBS$knob=\"${!knob}\" "
done
QUICK=0
RECORD=1
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1; RECORD=0 ;;
    --record) RECORD=1 ;;
    --no-record) RECORD=0 ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done
# --quick --record: record the smoke figures anyway (marked as quick).
for arg in "$@"; do [ "$arg" = --record ] && RECORD=1; done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/replgate-bench.XXXXXX")
PIDS=()
# Commands run at exit after every process above is stopped and before $WORK is removed
# (bench/scale.sh unmounts its small filesystem there).
CLEANUP_HOOKS=()

cleanup() {
  local pid hook
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for hook in "${CLEANUP_HOOKS[@]}"; do
    eval "$hook" || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "missing $1: install it (Debian: apt-get install $2)" >&2
    exit 1
  }
}

# cargo's own freshness check makes this a no-op when nothing changed; set BENCH_BIN
# and BENCH_CLIENT to measure prebuilt binaries instead.
build() {
  if [ -z "${BENCH_BIN:-}" ] || [ -z "${BENCH_CLIENT:-}" ]; then
    echo "== cargo build --release (replgate and bench_client)" >&2
    (cd "$ROOT" && cargo build --release --locked --quiet --bin replgate --example bench_client)
  fi
  MACHINE_LINE=$(machine)
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a loopback port nothing listens on (checked, then left free: a rare race).
# Picked below the kernel's ephemeral range, so that no outgoing connection (tests and
# builds running alongside open many) holds it without listening on it.
free_port() {
  local port low
  low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  while :; do
    port=$((10000 + RANDOM % (low - 10000)))
    port_in_use "$port" || break
  done
  echo "$port"
}

# start_replgate NAME [VAR=VALUE ...]: starts `replgate serve` on free loopback ports with
# the data directory $WORK/NAME/data (created on the first start, kept for the next);
# sets RG_PID, RG_API (host:port), RG_DATA, RG_LOG. RG_API_FIXED names the API address;
# RG_DATA_DIR another data directory; RG_CONFIG a config file (`serve --config`);
# RG_NETNS runs the daemon in that network namespace (bench/wan.sh; give the tunnel's
# address as REPLGATE_TUNNEL_LISTEN too).
start_replgate() {
  local name=$1
  shift
  RG_DATA=${RG_DATA_DIR:-$WORK/$name/data}
  RG_LOG=$WORK/$name/daemon.log
  RG_API=${RG_API_FIXED:-127.0.0.1:$(free_port)}
  local netns=() enter=()
  if [ -n "${RG_NETNS:-}" ]; then
    netns=(ip netns exec "$RG_NETNS")
    enter=(nsenter --net="/run/netns/$RG_NETNS")
  fi
  mkdir -p "$WORK/$name"
  "${netns[@]}" env REPLGATE_ADMIN_PASSWORD=$PASSWORD REPLGATE_DATA_DIR="$RG_DATA" \
    REPLGATE_API_LISTEN="$RG_API" REPLGATE_TUNNEL_LISTEN="127.0.0.1:$(free_port)" \
    REPLGATE_LOG="${REPLGATE_LOG:-warn}" "$@" "$BIN" serve ${RG_CONFIG:+--config "$RG_CONFIG"} 2>>"$RG_LOG" &
  RG_PID=$!
  PIDS+=("$RG_PID")
  for _ in $(seq 1 300); do
    if [ -f "$RG_DATA/ca.pem" ] &&
      "${enter[@]}" curl -sf --cacert "$RG_DATA/ca.pem" "https://$RG_API/api/health" >/dev/null; then
      return 0
    fi
    kill -0 "$RG_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "replgate did not start; its log:" >&2
  cat "$RG_LOG" >&2
  exit 1
}

# sshd_config DIR LISTEN_ADDRESS PORT: a throw-away host key, user key (DIR/user_key,
# authorized for root) and a private sshd config (DIR/sshd_config) for the rsync baseline.
# sshd needs /run/sshd, which is created if missing, as the package's service would.
sshd_config() {
  local dir=$1
  mkdir -p "$dir" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
  cp "$dir/user_key.pub" "$dir/authorized_keys"
  cat >"$dir/sshd_config" <<EOF
Port $3
ListenAddress $2
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
EOF
}

stop_replgate() {
  kill -TERM "$RG_PID" 2>/dev/null || true
  wait "$RG_PID" 2>/dev/null || true
}

# client COMMAND [ARGS...]: runs bench_client against the current daemon.
client() {
  local cmd=$1
  shift
  "$CLIENT" "$cmd" --api "$RG_API" --ca "$RG_DATA/ca.pem" "$@"
}

# field KEY < key=value lines
field() { sed -n "s/^$1=//p" | tail -1; }

proc_status() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
rss_kib() { proc_status "$1" VmRSS; }
hwm_kib() { proc_status "$1" VmHWM; }
threads() { proc_status "$1" Threads; }

# cpu_s PID: user + system CPU seconds the process used so far (all its threads).
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }'; }

# verdict VALUE LIMIT [le|ge]: "ok" or "MISSED".
verdict() {
  awk -v v="$1" -v l="$2" -v op="${3:-le}" \
    'BEGIN { ok = (op == "le") ? (v <= l) : (v >= l); print ok ? "ok" : "MISSED" }'
}

machine() {
  local cpu commit
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(cd "$ROOT" && git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    commit="$commit+dirty"
  fi
  printf '%s UTC; %s cores (%s); kernel %s; commit %s; load average at start: %s' \
    "$(date -u '+%Y-%m-%d %H:%M')" "$(nproc)" "${cpu:-unknown CPU}" "$(uname -r)" "$commit" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# record TITLE TABLE_FILE: prints the table, and appends it to BENCHMARKS.md with the
# machine line unless --quick or --no-record.
record() {
  local title=$1 table=$2
  local mode=""
  [ "$QUICK" = 1 ] && mode=" (quick)"
  echo
  echo "### $title$mode"
  echo "$MACHINE_LINE"
  echo
  cat "$table"
  if [ "$RECORD" = 1 ]; then
    {
      echo
      echo "### $title$mode"
      echo
      echo "$MACHINE_LINE; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
      echo "Command: \`${ENV_KNOBS}bench/$(basename "$0")${SCRIPT_ARGS:+ $SCRIPT_ARGS}\`."
      echo
      cat "$table"
    } >>"$RESULTS"
    echo
    echo "(appended to $RESULTS)"
  fi
}
