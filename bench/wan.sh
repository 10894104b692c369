#!/usr/bin/env bash
# WAN (SPEC 17): replgate against rsync over OpenSSH across an emulated link. Two network
# namespaces bridged by our link emulator (bench/linkemu: rate, one-way delay, random loss,
# a tail-drop buffer), both set to CUBIC like a stock system; a source daemon in A paired
# with a target in B, an sshd in B. For each profile it first measures the link's ceiling
# (one raw TCP stream with BBR, iperf3 -C bbr; CUBIC beside it), then each dataset through
# replgate, `rsync -a --fsync` and `rsync -az`, alternating which goes first.
#
#   bench/wan.sh [--profiles P1,P2,P3,P4,P5] [--datasets big,small,comp,image] [--reps N]
#                [--tools replgate,rsync,rsync-z] [--quick] [--no-record] [--record]
#
# Profiles: P1 100 Mbit/s, 50 ms round trip; P2 100 Mbit/s, 100 ms, 0.5 % loss each way;
# P3 20 Mbit/s, 200 ms, 1 %; P4 1 Gbit/s, 10 ms; P5 = P2 with the link cut for CUT_S (30) s
# once CUT_AT (40) % of the large file has arrived (P5 runs the large file only).
# Datasets, made fresh for every measurement (no target has seen their bytes):
#   big    one file of BIG_MB MiB from /dev/urandom
#   small  FILES (1000) files of SMALL_KB KiB from /dev/urandom
#   comp   a tar of COMP_DIR (the system's libraries), its first COMP_MB MiB, stamped with
#          the measurement's id every 4 KiB (bench/datagen.rs stamp)
#   image  SPEC 18's second day: IMAGE_MB (1024) MiB v1 sent, then v2 (2 % rewritten in 200
#          extents, 200 insertions) under a new name, timed; rsync gets --fuzzy for v2
#   restore  SPEC 20: one file of RESTORE_MB (1024) MiB from /dev/urandom replicated (timed
#          as "restore-send"), deleted on the source, then restored from the target
#          (POST /api/replication/restore) and timed until it is back under its name, its
#          SHA-256 checked; replgate only, the wire bytes counted B to A
# Sizes per profile (MiB; KiB for SMALL_KB), chosen for 20-40 s per transfer at the
# ceiling; override all profiles with BIG_MB, SMALL_KB, COMP_MB, or one with BIG_MB_P3 etc.:
#          P1   P2   P3   P4    P5
#   BIG    256  256  64   1024  256
#   SMALL  256  256  64   1024  -      (x FILES)
#   COMP   256  256  64   1024  -      (at most the whole tar)
# --quick: 16 MiB / 16 KiB / 16 MiB / 64 MiB image / 16 MiB restore, 5 s ceilings, not
# recorded.
# Other knobs: REPS (1), CEILING_S (15), CUT_S, CUT_AT, RESUME_WAIT (600 s: give up waiting
# for progress after a cut), MAX_TRANSFER_S (3600), TOOLS, COMP_DIR, WAN_NS_A/WAN_NS_B
# (rg-wan-a, rg-wan-b), THROTTLE_PCT (replgate under a throttle window of that percentage
# of the profile's rate, all day; its note gives each whole 10 s of the transfer as a
# fraction of the set rate, from the source's content bytes sent: what the throttle counts
# for incompressible data), DEDUP (auto or off: both daemons' `dedup` key; unset, their
# default).
# Needs root, /dev/net/tun, ip (iproute2), nsenter (util-linux), iperf3, rsync, sshd and
# ssh, curl, sha256sum, python3. Adds cubic to net.ipv4.tcp_allowed_congestion_control when
# missing (host-wide; a namespace may only default to an allowed algorithm).
set -euo pipefail

# ---- our options become knobs before lib.sh reads the rest ----
LIB_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --profiles) PROFILES=${2//,/ }; shift 2 ;;
    --datasets) DATASETS=${2//,/ }; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --tools) TOOLS=${2//,/ }; shift 2 ;;
    *) LIB_ARGS+=("$1"); shift ;;
  esac
done
BENCH_KNOBS="PROFILES DATASETS REPS TOOLS CEILING_S CUT_S CUT_AT RESUME_WAIT MAX_TRANSFER_S FILES IMAGE_MB RESTORE_MB BIG_MB SMALL_KB COMP_MB COMP_DIR THROTTLE_PCT DEDUP"
for p in P1 P2 P3 P4 P5; do BENCH_KNOBS+=" BIG_MB_$p SMALL_KB_$p COMP_MB_$p"; done
set -- "${LIB_ARGS[@]}"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

need ip iproute2
need nsenter util-linux
need iperf3 iperf3
need rsync rsync
need ssh openssh-client
need curl curl
need sha256sum coreutils
need python3 python3
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] || { echo "missing sshd: install it (Debian: apt-get install openssh-server)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench/wan.sh needs root (network namespaces, TUN devices)" >&2; exit 1; }
[ -c /dev/net/tun ] || { echo "bench/wan.sh needs /dev/net/tun (the kernel's TUN driver)" >&2; exit 1; }

PROFILES=${PROFILES:-P1 P2 P3 P4 P5}
DATASETS=${DATASETS:-big small comp}
REPS=${REPS:-1}
TOOLS=${TOOLS:-replgate rsync rsync-z}
FILES=${FILES:-1000}
CUT_S=${CUT_S:-30}
CUT_AT=${CUT_AT:-40}
RESUME_WAIT=${RESUME_WAIT:-600}
MAX_TRANSFER_S=${MAX_TRANSFER_S:-3600}
COMP_DIR=${COMP_DIR:-/usr/lib/$(uname -m)-linux-gnu}
[ -d "$COMP_DIR" ] || COMP_DIR=/usr/lib
NS_A=${WAN_NS_A:-rg-wan-a}
NS_B=${WAN_NS_B:-rg-wan-b}
ADDR_A=10.77.0.1
ADDR_B=10.77.0.2
MIB=1048576

declare -A RATE=([P1]=100M [P2]=100M [P3]=20M [P4]=1G [P5]=100M)
declare -A DELAY_MS=([P1]=25 [P2]=50 [P3]=100 [P4]=5 [P5]=50)
declare -A LOSS=([P1]=0 [P2]=0.5 [P3]=1 [P4]=0 [P5]=0.5)
declare -A BIG=([P1]=256 [P2]=256 [P3]=64 [P4]=1024 [P5]=256)
declare -A SMALL=([P1]=256 [P2]=256 [P3]=64 [P4]=1024 [P5]=256)
declare -A COMP=([P1]=256 [P2]=256 [P3]=64 [P4]=1024 [P5]=256)
if [ "$QUICK" = 1 ]; then
  for p in P1 P2 P3 P4 P5; do BIG[$p]=16 SMALL[$p]=16 COMP[$p]=16; done
  IMAGE_MB=${IMAGE_MB:-64}
  RESTORE_MB=${RESTORE_MB:-16}
  CEILING_S=${CEILING_S:-5}
fi
IMAGE_MB=${IMAGE_MB:-1024}
RESTORE_MB=${RESTORE_MB:-1024}
CEILING_S=${CEILING_S:-15}
# size KIND PROFILE: the knob for one profile, else for all, else the table's.
size() {
  local kind=$1 p=$2 one all table
  case $kind in
    big) one=BIG_MB_$p all=BIG_MB table=${BIG[$p]} ;;
    small) one=SMALL_KB_$p all=SMALL_KB table=${SMALL[$p]} ;;
    comp) one=COMP_MB_$p all=COMP_MB table=${COMP[$p]} ;;
  esac
  echo "${!one:-${!all:-$table}}"
}

# ---- build ----
if [ -z "${BENCH_BIN:-}" ]; then
  echo "== cargo build --release (replgate, linkemu, datagen)" >&2
  (cd "$ROOT" && cargo build --release --locked --quiet --bin replgate --example linkemu --example datagen)
fi
LINKEMU=${BENCH_LINKEMU:-$ROOT/target/release/examples/linkemu}
DATAGEN=${BENCH_DATAGEN:-$ROOT/target/release/examples/datagen}
MACHINE_LINE=$(machine)

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

# ---- congestion control: the namespaces default to CUBIC, BBR measures the ceiling ----
grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control || modprobe tcp_bbr 2>/dev/null || true
grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control ||
  { echo "the kernel has no BBR (tcp_bbr): the ceiling cannot be measured" >&2; exit 1; }
ALLOWED=$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)
case " $ALLOWED " in
  *" cubic "*) ;;
  *)
    echo "== adding cubic to net.ipv4.tcp_allowed_congestion_control ($ALLOWED; host-wide)" >&2
    echo "$ALLOWED cubic" >/proc/sys/net/ipv4/tcp_allowed_congestion_control
    ;;
esac

# ---- the link ----
for ns in "$NS_A" "$NS_B"; do
  if ip netns list | grep -qw "^$ns"; then
    [ -z "$(ip netns pids "$ns")" ] ||
      { echo "namespace $ns exists with processes in it (another run?): stop them first" >&2; exit 1; }
    ip netns del "$ns"
  fi
done
CONTROL=$WORK/link.conf
STATS=$WORK/link.stats
link_words() { # link_words PROFILE
  echo "--rate ${RATE[$1]} --delay-ms ${DELAY_MS[$1]} --loss ${LOSS[$1]} --buffer-ms 50 --cut off"
}
first=${PROFILES%% *}
link_words "$first" >"$CONTROL"
# shellcheck disable=SC2046
"$LINKEMU" --ns-a "$NS_A" --ns-b "$NS_B" --addr-a "$ADDR_A" --addr-b "$ADDR_B" \
  --congestion cubic --control "$CONTROL" --stats "$STATS" --die-with-parent \
  $(cat "$CONTROL") >"$WORK/linkemu.out" 2>"$WORK/linkemu.log" &
LINK_PID=$!
for _ in $(seq 1 100); do grep -q '^ready' "$WORK/linkemu.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$WORK/linkemu.out" ||
  { echo "the link emulator did not start:" >&2; cat "$WORK/linkemu.log" >&2; exit 1; }

# The daemons, sshd and a cut watcher stop before the link, the link before lib.sh removes
# the work dir.
wan_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  kill -TERM "$LINK_PID" 2>/dev/null || true
  wait "$LINK_PID" 2>/dev/null || true
  cleanup
}
trap wan_cleanup EXIT

stat_of() { sed -n "s/^$1=//p" "$STATS"; }
# set_link PROFILE: applies the profile's parameters and waits until the emulator has.
set_link() {
  local gen
  gen=$(stat_of generation)
  link_words "$1" >"$CONTROL"
  kill -HUP "$LINK_PID"
  for _ in $(seq 1 50); do
    [ "$(stat_of generation)" -gt "$gen" ] && return 0
    sleep 0.1
  done
  echo "the link emulator did not apply $1:" >&2
  cat "$WORK/linkemu.log" >&2
  exit 1
}
# cut_link on|off: SIGUSR1 cuts, SIGUSR2 restores.
cut_link() { if [ "$1" = on ]; then kill -USR1 "$LINK_PID"; else kill -USR2 "$LINK_PID"; fi; }

# ---- two daemons, paired across the link ----
start_daemon() { # start_daemon NAME NS ADDR [VAR=VALUE...]: the API and tunnel on ADDR
  local name=$1 ns=$2 addr=$3
  shift 3
  RG_NETNS=$ns RG_API_FIXED=$addr:7443 start_replgate "$name" REPLGATE_TUNNEL_LISTEN="$addr:7444" "$@"
}
DEDUP_ENV=(${DEDUP:+REPLGATE_DEDUP=$DEDUP})
start_daemon tgt "$NS_B" "$ADDR_B" "${DEDUP_ENV[@]}"
TGT_PID=$RG_PID TGT_DATA=$RG_DATA
start_daemon src "$NS_A" "$ADDR_A" REPLGATE_POLL_INTERVAL=1 REPLGATE_HEARTBEAT_INTERVAL=5 "${DEDUP_ENV[@]}"
SRC_PID=$RG_PID SRC_DATA=$RG_DATA

api() { # api src|tgt TOKEN METHOD PATH [BODY]: the source's API from A, the target's from B
  local who=$1 token=$2 method=$3 path=$4 body=${5:-} ns addr data
  if [ "$who" = src ]; then ns=$NS_A addr=$ADDR_A data=$SRC_DATA; else ns=$NS_B addr=$ADDR_B data=$TGT_DATA; fi
  in_ns "$ns" curl -s --cacert "$data/ca.pem" -X "$method" -H "AuthToken: $token" \
    -H 'Content-Type: application/json' ${body:+--data "$body"} "https://$addr:7443$path"
}
login() { # login src|tgt -> token
  api "$1" "" POST /api/login "{\"username\":\"root\",\"password\":\"$PASSWORD\"}" |
    sed -n 's/.*"auth_token":"\([0-9a-f]*\)".*/\1/p'
}
json_num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" | head -1; }
ST=$(login src)
TT=$(login tgt)
FP=$(api src "$ST" POST /api/replication/target \
  "{\"type\":\"appliance\",\"target\":\"$ADDR_B:7443\"}" | sed -n 's/.*"fingerprint":"\([0-9a-f]*\)".*/\1/p')
REQ=$(api src "$ST" POST /api/replication/target \
  "{\"type\":\"appliance\",\"target\":\"$ADDR_B:7443\",\"fingerprint\":\"$FP\"}" | json_num request_id)
api tgt "$TT" POST /api/replication/source "{\"request_id\":$REQ,\"accept\":true}" >/dev/null
for _ in $(seq 1 150); do
  api src "$ST" GET /api/replication/targets | grep -q '"status":"complete"' && break
  sleep 0.2
done
api src "$ST" GET /api/replication/targets | grep -q '"status":"complete"' ||
  { echo "pairing did not complete" >&2; cat "$WORK/src/daemon.log" >&2; exit 1; }
SRC_UUID=$(api src "$ST" GET /api/systems | sed -n 's/.*"local":true[^}]*"system_uuid":"\([^"]*\)".*/\1/p')
[ -n "$SRC_UUID" ] || { echo "no system uuid for the source" >&2; exit 1; }
SRC_STORE=$SRC_DATA/storage
TGT_STORE=$TGT_DATA/storage/$SRC_UUID
done_count() {
  api src "$ST" GET "/api/replication/queue/inactive?include_done=1&count=1" | json_num total_done
}

# ---- sshd in B ----
SSHD_DIR=$WORK/sshd
sshd_config "$SSHD_DIR" "$ADDR_B" 22
ip netns exec "$NS_B" "$SSHD" -D -e -f "$SSHD_DIR/sshd_config" 2>>"$SSHD_DIR/sshd.log" &
SSHD_PID=$!
PIDS+=("$SSHD_PID")
SSH="ssh -i $SSHD_DIR/user_key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=$SSHD_DIR/known_hosts"
for _ in $(seq 1 100); do
  in_ns "$NS_A" $SSH "root@$ADDR_B" true 2>/dev/null && break
  sleep 0.2
done
in_ns "$NS_A" $SSH "root@$ADDR_B" true || { echo "sshd did not answer:" >&2; cat "$SSHD_DIR/sshd.log" >&2; exit 1; }
CIPHER=$(in_ns "$NS_A" $SSH -G "$ADDR_B" 2>/dev/null | sed -n 's/^ciphers //p' | cut -d, -f1)
RSYNC_ZIP=$(in_ns "$NS_A" rsync -az --debug=NSTR -e "$SSH" "$SSHD_DIR/sshd_config" "root@$ADDR_B:$SSHD_DIR/probe" 2>&1 |
  sed -n 's/^Client negotiated compress: //p' | head -1)
# CPU seconds of sshd's finished sessions (their processes and rsync below them, reaped).
sshd_children_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($14 + $15) / hz }' "/proc/$SSHD_PID/stat"
}
sshd_idle() { # waits until sshd has reaped every session
  for _ in $(seq 1 100); do
    pgrep -P "$SSHD_PID" >/dev/null || return 0
    sleep 0.05
  done
}
RSYNC_DST=$WORK/rsync-dst
mkdir -p "$RSYNC_DST"

# ---- datasets ----
DATA=$WORK/data
mkdir -p "$DATA"
LIBS_TAR=$WORK/libs.tar
make_libs_tar() { # the largest slice any selected profile needs, made once
  [ -f "$LIBS_TAR" ] && return 0
  local want=0 p
  for p in $PROFILES; do [ "$(size comp "$p")" -gt "$want" ] && want=$(size comp "$p"); done
  echo "== a tar of $COMP_DIR (up to $want MiB)" >&2
  { tar -cf - -C / "${COMP_DIR#/}" 2>/dev/null || true; } | head -c $((want * MIB)) >"$LIBS_TAR"
  COMP_RATIO=$(gzip -1 -c "$LIBS_TAR" | wc -c | awk -v n="$(stat -c %s "$LIBS_TAR")" '{ printf "%.2f", $1 / n }')
}
COMP_RATIO=""
# make_dataset KIND PROFILE ID: the dataset in $DATA/ID.
make_dataset() {
  local kind=$1 p=$2 id=$3 dir=$DATA/$3
  mkdir -p "$dir"
  case $kind in
    big)
      head -c $(($(size big "$p") * MIB)) /dev/urandom >"$dir/big.img"
      ;;
    small)
      local kb
      kb=$(size small "$p")
      head -c $((FILES * kb * 1024)) /dev/urandom | split -b $((kb * 1024)) -d -a 4 - "$dir/f"
      ;;
    comp)
      make_libs_tar
      head -c $(($(size comp "$p") * MIB)) "$LIBS_TAR" >"$dir/.plain"
      "$DATAGEN" stamp "$dir/.plain" "$dir/backup.tar" "$id"
      rm "$dir/.plain"
      ;;
    restore)
      head -c $((RESTORE_MB * MIB)) /dev/urandom >"$dir/big.img"
      ;;
    image)
      "$DATAGEN" image-v1 "$dir/day1.img" "$IMAGE_MB" --seed "$RANDOM$RANDOM"
      "$DATAGEN" image-v2 "$dir/day1.img" "$dir/day2.img" --seed "$RANDOM$RANDOM" >"$dir/.changes"
      ;;
  esac
  sync
}

# dest_bytes DIR: bytes in DIR's files, partial ones (dot names) included.
dest_bytes() {
  find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
}
# final_count DIR: files in DIR under their final (non-dot) names.
final_count() {
  find "$1" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
wire_now() { sleep 0.25; stat_of "${1:-ab}_in_bytes"; } # the stats file is rewritten every 100 ms

# verify_same A B [FILES...]: the files (default: all of A) have the same SHA-256 in B.
verify_same() {
  local a=$1 b=$2
  shift 2
  [ $# -gt 0 ] || set -- $(cd "$a" && ls)
  (cd "$a" && sha256sum -- "$@") >"$WORK/a.sum"
  (cd "$b" && sha256sum -- "$@") >"$WORK/b.sum" 2>/dev/null || return 1
  cmp -s "$WORK/a.sum" "$WORK/b.sum"
}

# cut_watch DIR SIZE: in the background while a transfer runs (P5): cuts the link once DIR
# holds CUT_AT % of SIZE, restores it CUT_S later, and writes the seconds from the return
# to the first byte beyond what DIR held by then (or "none") to $WORK/resume.
cut_watch() {
  local dir=$1 size=$2 at held back b
  at=$((size * CUT_AT / 100))
  while [ "$(dest_bytes "$dir")" -lt "$at" ]; do sleep 0.05; done
  cut_link on
  sleep "$CUT_S"
  held=$(dest_bytes "$dir")
  cut_link off
  back=$(now)
  while :; do
    b=$(dest_bytes "$dir")
    if [ "$b" -gt "$held" ] || [ "$(final_count "$dir")" -gt 0 ]; then
      secs "$back" "$(now)" >"$WORK/resume"
      return 0
    fi
    if [ "$(secs "$back" "$(now)" | cut -d. -f1)" -ge "$RESUME_WAIT" ]; then
      echo none >"$WORK/resume"
      return 0
    fi
    sleep 0.05
  done
}

# set_throttle PROFILE: with THROTTLE_PCT, a window of that percentage of the profile's
# rate, every day, all day.
set_throttle() {
  [ -n "${THROTTLE_PCT:-}" ] || return 0
  local r=${RATE[$1]} mbps
  case $r in *G) mbps=$((${r%G} * 1000)) ;; *M) mbps=${r%M} ;; *) mbps=$r ;; esac
  api src "$ST" PUT /api/replication/throttle \
    "{\"link_mbps\":$mbps,\"throttle\":[{\"percentage\":$THROTTLE_PCT,\"days\":[0,1,2,3,4,5,6],\"start\":0,\"end\":0}]}" |
    grep -q '"link_mbps"' || { echo "the throttle was not set" >&2; exit 1; }
  THROTTLE_BPS=$((mbps * 1000000 / 8 * THROTTLE_PCT / 100))
}
sent_bytes() { # the source's content bytes sent to the target so far
  api src "$ST" GET /api/metrics | awk '/^replgate_replication_sent_bytes_total/ { s += $NF } END { printf "%.0f", s }'
}
# throttle_watch FILE: every 10 s until killed, the source's bytes sent, one line each.
throttle_watch() {
  local t0
  t0=$(date +%s.%N)
  while :; do
    echo "$(sent_bytes)" >>"$1"
    sleep "$(awk -v t0="$t0" -v n="$(wc -l <"$1")" -v t="$(date +%s.%N)" 'BEGIN { d = t0 + 10 * n - t; printf "%.3f", (d > 0 ? d : 0) }')"
  done
}

# ---- one measurement per tool; each appends a row to $RESULTS_TSV ----
RESULTS_TSV=$WORK/results.tsv
: >"$RESULTS_TSV"
row() { # PROFILE DATASET TOOL REP SECS PAYLOAD WIRE CPU_A CPU_B NOTE
  if [ "$2" = image-v2 ]; then # SPEC 18's measure: wire bytes over the bytes that changed
    local r
    r=$(awk -v w="$7" -v c="$CHANGED" 'BEGIN { printf "%.2f", w / c }')
    set -- "${@:1:9}" "${10}${10:+; }wire / changed bytes $r (changed: $CHANGED)"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS_TSV"
}

# run_replgate PROFILE DATASET REP ID DIR [FILES...]: copies the files into a dot-named
# client directory of the source's storage (never replicated), then renames it into place
# and times until every file is at the target under its final name (each fsynced, then
# renamed); the source's queue must then show them done.
run_replgate() {
  local p=$1 ds=$2 rep=$3 id=$4 dir=$5
  shift 5
  local files=("$@") client=$id before w0 w1 a0 b0 start end cut_pid="" note="" watch_pid=""
  [ ${#files[@]} -gt 0 ] || mapfile -t files < <(cd "$dir" && ls)
  local dest=$TGT_STORE/$client have=0
  [ -d "$SRC_STORE/$client" ] && have=$(final_count "$SRC_STORE/$client")
  before=$(done_count)
  mkdir -p "$SRC_STORE/.$client.tmp"
  (cd "$dir" && cp -- "${files[@]}" "$SRC_STORE/.$client.tmp/")
  sync
  w0=$(wire_now) a0=$(cpu_s "$SRC_PID") b0=$(cpu_s "$TGT_PID")
  if [ "$p" = P5 ]; then
    cut_watch "$dest" "$PAYLOAD" &
    cut_pid=$!
    PIDS+=("$cut_pid")
  fi
  if [ -n "${THROTTLE_PCT:-}" ]; then
    : >"$WORK/throttle"
    throttle_watch "$WORK/throttle" &
    watch_pid=$!
    PIDS+=("$watch_pid")
  fi
  start=$(now)
  if [ "$have" = 0 ]; then
    mv "$SRC_STORE/.$client.tmp" "$SRC_STORE/$client"
  else # a later file of the same client (the image's second day)
    local f
    for f in "${files[@]}"; do mv "$SRC_STORE/.$client.tmp/$f" "$SRC_STORE/$client/$f"; done
    rmdir "$SRC_STORE/.$client.tmp"
  fi
  while [ "$(final_count "$dest")" -lt $((have + ${#files[@]})) ]; do
    sleep 0.02
    [ "$(secs "$start" "$(now)" | cut -d. -f1)" -lt "$MAX_TRANSFER_S" ] ||
      { echo "replgate did not deliver $id within $MAX_TRANSFER_S s" >&2; exit 1; }
  done
  end=$(now)
  if [ -n "$watch_pid" ]; then
    kill "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
    note="throttle $THROTTLE_PCT % ($THROTTLE_BPS B/s): each 10 s at $(awk -v r="$THROTTLE_BPS" \
      'NR > 1 { printf "%s%.3f", (NR > 2 ? ", " : ""), ($1 - prev) / 10 / r } { prev = $1 }' "$WORK/throttle") of it"
  fi
  for _ in $(seq 1 200); do
    [ "$(done_count)" -ge $((before + ${#files[@]})) ] && break
    sleep 0.1
  done
  [ "$(done_count)" -ge $((before + ${#files[@]})) ] || { echo "the source's queue does not show $id done" >&2; exit 1; }
  w1=$(wire_now)
  verify_same "$dir" "$dest" "${files[@]}" || { echo "replgate's copy of $id differs" >&2; exit 1; }
  if [ -n "$cut_pid" ]; then
    wait "$cut_pid"
    note="${note:+$note; }resumed $(cat "$WORK/resume") s after the link returned"
  fi
  row "$p" "$ds" replgate "$rep" "$(secs "$start" "$end")" "$PAYLOAD" $((w1 - w0)) \
    "$(secs "$a0" "$(cpu_s "$SRC_PID")")" "$(secs "$b0" "$(cpu_s "$TGT_PID")")" "$note"
}

# run_rsync TOOL PROFILE DATASET REP ID DIR [FILES...]: rsync in A (its CPU and ssh's, from
# the shell that waited for them), sshd and the remote rsync in B (sshd's reaped children).
run_rsync() {
  local tool=$1 p=$2 ds=$3 rep=$4 id=$5 dir=$6
  shift 6
  local files=("$@") flags dest=$RSYNC_DST/$id-$tool w0 w1 b0 start end out cut_pid="" note=""
  case $tool in
    rsync) flags=(-a --fsync) ;;
    rsync-z) flags=(-az) ;;
  esac
  # The second day looks for a basis among the files already there (the first day's).
  [ "$ds" = image-v2 ] && flags+=(--fuzzy)
  [ ${#files[@]} -gt 0 ] || mapfile -t files < <(cd "$dir" && ls)
  mkdir -p "$dest"
  sync
  sshd_idle
  w0=$(wire_now) b0=$(sshd_children_cpu)
  if [ "$p" = P5 ]; then
    cut_watch "$dest" "$PAYLOAD" &
    cut_pid=$!
    PIDS+=("$cut_pid")
  fi
  start=$(now)
  # shellcheck disable=SC2016
  out=$(cd "$dir" && in_ns "$NS_A" bash -c '
    rsync "$@" || exit 1
    read -r -a s </proc/$$/stat
    echo "cpu_ticks=$((s[15] + s[16]))"' _ "${flags[@]}" -e "$SSH" -- "${files[@]}" "root@$ADDR_B:$dest/") ||
    { echo "$tool failed for $id" >&2; exit 1; }
  end=$(now)
  sshd_idle
  w1=$(wire_now)
  verify_same "$dir" "$dest" "${files[@]}" || { echo "$tool's copy of $id differs" >&2; exit 1; }
  if [ -n "$cut_pid" ]; then
    wait "$cut_pid"
    note="${note:+$note; }resumed $(cat "$WORK/resume") s after the link returned"
  fi
  local cpu_a
  cpu_a=$(echo "$out" | sed -n 's/^cpu_ticks=//p' | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", $1 / hz }')
  row "$p" "$ds" "$tool" "$rep" "$(secs "$start" "$end")" "$PAYLOAD" $((w1 - w0)) \
    "$cpu_a" "$(secs "$b0" "$(sshd_children_cpu)")" "$note"
  [ "$ds" = image-v1 ] || rm -rf "$dest"
}

# run_restore PROFILE REP ID DIR: the file run_replgate delivered is deleted on the source
# and restored from the target; timed from the API call until it is back under its name
# (fetched into a partial, SHA-256 checked, fsynced, renamed); wire bytes B to A.
run_restore() {
  local p=$1 rep=$2 id=$3 dir=$4 back=$SRC_STORE/$3/big.img w0 w1 a0 b0 start end answer
  rm -f "$back"
  sync
  w0=$(wire_now ba) a0=$(cpu_s "$SRC_PID") b0=$(cpu_s "$TGT_PID")
  start=$(now)
  answer=$(api src "$ST" POST /api/replication/restore "{\"target_id\":1,\"backups\":[\"$id/big.img\"]}")
  case $answer in *'"direction":"restore"'*) ;; *) echo "restore refused: $answer" >&2; exit 1 ;; esac
  while [ ! -e "$back" ]; do
    sleep 0.02
    [ "$(secs "$start" "$(now)" | cut -d. -f1)" -lt "$MAX_TRANSFER_S" ] ||
      { echo "the restore of $id did not finish within $MAX_TRANSFER_S s" >&2; exit 1; }
  done
  end=$(now)
  w1=$(wire_now ba)
  verify_same "$dir" "$SRC_STORE/$id" big.img || { echo "the restored $id differs" >&2; exit 1; }
  row "$p" restore replgate "$rep" "$(secs "$start" "$end")" "$PAYLOAD" $((w1 - w0)) \
    "$(secs "$a0" "$(cpu_s "$SRC_PID")")" "$(secs "$b0" "$(cpu_s "$TGT_PID")")" "wire bytes target to source"
}

# run_tool TOOL PROFILE DATASET REP ID DIR [FILES...]
run_tool() {
  case $1 in
    replgate) shift; run_replgate "$@" ;;
    rsync | rsync-z) run_rsync "$@" ;;
    *) echo "unknown tool $1 (replgate, rsync, rsync-z)" >&2; exit 2 ;;
  esac
}

# ---- the link's ceiling: one raw TCP stream, BBR (and CUBIC beside it) ----
declare -A CEIL_BBR CEIL_CUBIC
ceiling() { # ceiling CC -> bits per second received
  local cc=$1 port=5201 server bps=0
  in_ns "$NS_B" iperf3 -s -1 -B "$ADDR_B" -p "$port" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 1 20); do # until the server listens (a refused client leaves it waiting)
    sleep 0.2
    in_ns "$NS_A" iperf3 -c "$ADDR_B" -p "$port" -C "$cc" -t "$CEILING_S" -J >"$WORK/iperf.json" 2>/dev/null || true
    bps=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]))' \
      "$WORK/iperf.json" 2>/dev/null) && break
    bps=0
  done
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  echo "$bps"
}

declare -A LATE
n=0
for p in $PROFILES; do
  [ -n "${RATE[$p]:-}" ] || { echo "unknown profile $p (P1-P5)" >&2; exit 2; }
  set_link "$p"
  set_throttle "$p"
  echo "== $p: ${RATE[$p]}bit/s, $((2 * DELAY_MS[$p])) ms round trip, ${LOSS[$p]} % loss each way" >&2
  CEIL_BBR[$p]=$(ceiling bbr)
  CEIL_CUBIC[$p]=$(ceiling cubic)
  echo "   ceiling: BBR $((CEIL_BBR[$p] / 1000000)) Mbit/s, CUBIC $((CEIL_CUBIC[$p] / 1000000)) Mbit/s" >&2
  late0=$(stat_of ab_late_pkts) fwd0=$(stat_of ab_fwd_pkts)
  datasets=$DATASETS
  [ "$p" = P5 ] && datasets=big
  for ds in $datasets; do
    for rep in $(seq 1 "$REPS"); do
      id=$(echo "$p-$ds-$rep" | tr 'A-Z' 'a-z')
      echo "   $ds, repetition $rep: making the data" >&2
      make_dataset "$ds" "$p" "$id" >&2
      dir=$DATA/$id
      [ "$ds" = image ] && CHANGED=$(sed -n 's/^changed_bytes=//p' "$dir/.changes")
      # Tools in turn, rotated each measurement.
      read -r -a tools <<<"$TOOLS"
      k=$((n % ${#tools[@]}))
      order=("${tools[@]:$k}" "${tools[@]:0:$k}")
      n=$((n + 1))
      for tool in "${order[@]}"; do
        echo "   $ds, repetition $rep: $tool" >&2
        if [ "$ds" = restore ]; then
          [ "$tool" = replgate ] || continue
          PAYLOAD=$(dest_bytes "$dir")
          run_replgate "$p" restore-send "$rep" "$id" "$dir"
          run_restore "$p" "$rep" "$id" "$dir"
        elif [ "$ds" = image ]; then
          PAYLOAD=$(stat -c %s "$dir/day1.img")
          run_tool "$tool" "$p" image-v1 "$rep" "$id" "$dir" day1.img
          PAYLOAD=$(stat -c %s "$dir/day2.img")
          run_tool "$tool" "$p" image-v2 "$rep" "$id" "$dir" day2.img
        else
          PAYLOAD=$(dest_bytes "$dir")
          run_tool "$tool" "$p" "$ds" "$rep" "$id" "$dir"
        fi
      done
      rm -rf "$dir"
    done
  done
  LATE[$p]="$(($(stat_of ab_late_pkts) - late0)) of $(($(stat_of ab_fwd_pkts) - fwd0))"
done

# ---- the table: medians over the repetitions ----
TABLE=$WORK/table.md
{
  echo "| profile | data | tool | time s | goodput MB/s | of the ceiling | wire bytes / payload | CPU s A + B | note |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for p in $PROFILES; do
    ceil_mbs=$(awk -v b="${CEIL_BBR[$p]}" 'BEGIN { printf "%.2f", b / 8e6 }')
    echo "| **$p** ${RATE[$p]}bit/s, $((2 * DELAY_MS[$p])) ms, ${LOSS[$p]} % | link ceiling (BBR) | iperf3 | | **$ceil_mbs** | 100 % | | | CUBIC: $(awk -v b="${CEIL_CUBIC[$p]}" 'BEGIN { printf "%.2f", b / 8e6 }') MB/s |"
    awk -F'\t' -v p="$p" -v ceil="${CEIL_BBR[$p]}" '
      $1 == p { key = $2 "\t" $3; if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
                rows[key] = rows[key] $0 "\n" }
      END {
        for (i = 1; i <= nk; i++) {
          n = split(rows[keys[i]], lines, "\n") - 1
          # the median row by time (the lower middle for an even count)
          for (a = 1; a <= n; a++) { split(lines[a], f, "\t"); t[a] = f[5] + 0; idx[a] = a }
          for (a = 1; a <= n; a++) for (b = a + 1; b <= n; b++) if (t[idx[b]] < t[idx[a]]) { x = idx[a]; idx[a] = idx[b]; idx[b] = x }
          split(lines[idx[int((n + 1) / 2)]], f, "\t")
          mbs = f[6] / f[5] / 1e6
          pct = ceil > 0 ? 100 * f[6] * 8 / f[5] / ceil : 0
          note = f[10]
          if (n > 1) note = note (note == "" ? "" : "; ") "median of " n
          printf "| | %s | %s | %.2f | %.2f | %.0f %% | %.3f | %s + %s | %s |\n", f[2], f[3], f[5], mbs, pct, f[7] / f[6], f[8], f[9], note
        }
      }' "$RESULTS_TSV"
  done
  echo
  echo "Goodput: payload bytes (the logical size) over the time from the rename into the source's"
  echo "storage (replgate) or the start of rsync until every file is in place at the target under"
  echo "its final name; the ceiling is one iperf3 stream with BBR for ${CEILING_S} s across the same"
  echo "link in the same run. Wire bytes: every IP packet (headers included) the A side offered"
  echo "to the link (the emulator's counters, retransmissions and what the link dropped included)."
  echo "CPU: A = the source daemon, or rsync and ssh; B = the target daemon, or sshd and rsync."
  tar_mib=$(($([ -f "$LIBS_TAR" ] && stat -c %s "$LIBS_TAR" || echo 0) / MIB))
  echo "Sizes: $(for p in $PROFILES; do
    c=$(size comp "$p")
    [ "$tar_mib" -gt 0 ] && [ "$c" -gt "$tar_mib" ] && c=$tar_mib
    if [ "$p" = P5 ]; then
      printf '%s big %s MiB; ' "$p" "$(size big "$p")"
    else
      printf '%s big %s MiB, small %s x %s KiB, comp %s MiB; ' "$p" "$(size big "$p")" "$FILES" "$(size small "$p")" "$c"
    fi
  done)"
  case " $DATASETS " in *" image "*) echo "Image: $IMAGE_MB MiB." ;; esac
  case " $DATASETS " in *" restore "*) echo "Restore: $RESTORE_MB MiB, timed from the restore call until the file is back under its name; the ceiling is measured A to B on the same symmetric link." ;; esac
  echo "Datasets: $DATASETS (P5: big only); $REPS repetition(s), tools alternating."
  [ -n "$COMP_RATIO" ] && echo "The compressible file: a tar of $COMP_DIR, zlib-1 ratio $COMP_RATIO."
  echo "ssh cipher $CIPHER; rsync -az negotiated ${RSYNC_ZIP:-?}. Namespaces on CUBIC."
  echo "Emulator packets released over 1 ms late (A to B): $(for p in $PROFILES; do printf '%s %s; ' "$p" "${LATE[$p]}"; done)"
  echo "End-to-end: SHA-256 of every file compared between the dataset and each copy (all equal)."
} >"$TABLE"
record "WAN (SPEC 17): replgate vs rsync over ssh across the emulated link" "$TABLE"
mkdir -p "$ROOT/target/wan-logs"
cp "$WORK/src/daemon.log" "$ROOT/target/wan-logs/source.log"
cp "$WORK/tgt/daemon.log" "$ROOT/target/wan-logs/target.log"
cp "$WORK/linkemu.log" "$RESULTS_TSV" "$ROOT/target/wan-logs/"
