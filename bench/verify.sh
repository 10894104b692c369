#!/usr/bin/env bash
# Verify speed on the target (SPEC 20: a verify re-reads every copy using both cores at
# >= 90 % of the disk's read speed): a source replicates FILES copies of FILE_MB MiB of
# random data into a target on loopback; then the target's verify of that source
# (`POST /api/replication/verify?sid=N`, timed until `GET /api/replication/received`
# shows it finished) is compared with reading the same copies with `cat` (the disk's read
# speed, one reader per copy, both cores) and with `sha256sum` (one core hashing), twice:
#   cold: after `sync; echo 3 > /proc/sys/vm/drop_caches` before each reader (needs root;
#         skipped otherwise, and the table says so), so the copies come from the disk;
#   warm: the copies in the page cache (read once before), so reading costs memory
#         bandwidth only and the verify is bound by hashing.
# The verify's CPU seconds over its wall time say how many cores it kept busy.
#
#   bench/verify.sh [--quick] [--no-record] [--record]
#
# Knobs (environment): FILES (default 8, quick 4), FILE_MB (default 256, quick 64),
# COLD (default 1 as root: drop the page cache for the cold rows; 0: warm rows only),
# RENICE (e.g. -10, root: every thread of the target daemon at that nice value, and with
# the kernel's autogroup scheduling on, this session's group too (a group of tasks shares
# the machine with other sessions as one, whatever its threads' nice values), so that a
# busy machine's other work does not take the cores; the readers `cat` and `sha256sum`
# run at it too; unset: everything at the caller's priority).
# Needs curl, coreutils, python3 and taskset (util-linux). Writes FILES x FILE_MB MiB twice (the source's backups and
# the target's copies) under $TMPDIR.
BENCH_KNOBS="FILES FILE_MB COLD RENICE"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

need curl curl
need sha256sum coreutils
need python3 python3
need taskset util-linux

if [ "$QUICK" = 1 ]; then
  FILES=${FILES:-4}
  FILE_MB=${FILE_MB:-64}
else
  FILES=${FILES:-8}
  FILE_MB=${FILE_MB:-256}
fi
if [ -z "${COLD:-}" ]; then
  COLD=0
  [ -w /proc/sys/vm/drop_caches ] && COLD=1
fi
MIB=1048576
build

api() { # api HOST CA TOKEN METHOD PATH [BODY]
  local host=$1 ca=$2 token=$3 method=$4 path=$5 body=${6:-}
  curl -s --cacert "$ca" -X "$method" -H "AuthToken: $token" \
    -H 'Content-Type: application/json' ${body:+--data "$body"} "https://$host$path"
}
login() { # login HOST CA -> token
  curl -s --cacert "$2" -H 'Content-Type: application/json' \
    --data "{\"username\":\"root\",\"password\":\"$PASSWORD\"}" "https://$1/api/login" |
    sed -n 's/.*"auth_token":"\([0-9a-f]*\)".*/\1/p'
}
# jq_get KEY < JSON object: its top-level KEY as text.
jq_get() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }

# ---- two daemons, paired with a pairing token (no accept to wait for) ----
start_replgate tgt
TGT_PID=$RG_PID TGT_API=$RG_API TGT_CA=$RG_DATA/ca.pem TGT_DATA=$RG_DATA
PRIO=()
if [ -n "${RENICE:-}" ]; then
  # Threads take their creator's nice value: the verify job's readers follow its thread.
  for task in /proc/"$TGT_PID"/task/*; do renice -n "$RENICE" -p "${task##*/}" >/dev/null; done
  if [ -w /proc/"$TGT_PID"/autogroup ]; then
    # The group is this shell's session: put its nice value back when the script ends.
    GROUP_NICE=$(sed -n 's/.* nice //p' /proc/$$/autogroup)
    CLEANUP_HOOKS+=("echo ${GROUP_NICE:-0} >/proc/$$/autogroup")
    echo "$RENICE" >/proc/"$TGT_PID"/autogroup
  fi
  PRIO=(nice -n "$RENICE")
fi
start_replgate src REPLGATE_POLL_INTERVAL=1 REPLGATE_HEARTBEAT_INTERVAL=5
SRC_API=$RG_API SRC_CA=$RG_DATA/ca.pem SRC_DATA=$RG_DATA
TT=$(login "$TGT_API" "$TGT_CA")
ST=$(login "$SRC_API" "$SRC_CA")
JOIN=$(api "$TGT_API" "$TGT_CA" "$TT" POST /api/replication/tokens '{}' | jq_get join)
# replgate-join/1/<host>/<port>/<CA SHA-256>/<token>
IFS=/ read -r _ _ _ _ FP TOKEN <<<"$JOIN"
[ -n "$FP" ] && [ -n "$TOKEN" ] || { echo "no join line: $JOIN" >&2; exit 1; }
api "$SRC_API" "$SRC_CA" "$ST" POST /api/replication/target \
  "{\"type\":\"appliance\",\"target\":\"$TGT_API\",\"fingerprint\":\"$FP\",\"token\":\"$TOKEN\"}" >/dev/null
for _ in $(seq 1 150); do
  api "$SRC_API" "$SRC_CA" "$ST" GET /api/replication/targets | grep -q '"status":"complete"' && break
  sleep 0.2
done
api "$SRC_API" "$SRC_CA" "$ST" GET /api/replication/targets | grep -q '"status":"complete"' ||
  { echo "pairing did not complete" >&2; cat "$WORK/src/daemon.log" >&2; exit 1; }
SID=$(api "$TGT_API" "$TGT_CA" "$TT" GET /api/systems | python3 -c '
import json, sys
rows = json.load(sys.stdin)["appliance"]
print(next(r["id"] for r in rows if "Replication Source" in r.get("role", "")))')
[ -n "$SID" ] || { echo "no systems row for the source" >&2; exit 1; }

# ---- the copies: FILES x FILE_MB MiB of random data, replicated ----
echo "== making and replicating ${FILES} x ${FILE_MB} MiB" >&2
mkdir -p "$SRC_DATA/storage/.bench.tmp"
for i in $(seq 1 "$FILES"); do
  head -c $((FILE_MB * MIB)) /dev/urandom >"$SRC_DATA/storage/.bench.tmp/copy-$i.img"
done
mv "$SRC_DATA/storage/.bench.tmp" "$SRC_DATA/storage/bench"
received_json() { api "$TGT_API" "$TGT_CA" "$TT" GET "/api/replication/received?sid=$SID"; }
for _ in $(seq 1 1200); do
  [ "$(received_json | grep -o '"backup":"bench/' | wc -l)" -ge "$FILES" ] && break
  sleep 0.25
done
[ "$(received_json | grep -o '"backup":"bench/' | wc -l)" -ge "$FILES" ] ||
  { echo "the copies did not all arrive" >&2; exit 1; }
COPIES=$(find "$TGT_DATA/storage" -path '*/bench/copy-*.img' -type f | sort)
[ "$(echo "$COPIES" | wc -l)" -eq "$FILES" ] || { echo "copies not found on the target" >&2; exit 1; }
BYTES=$((FILES * FILE_MB * MIB))

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
warm() { cat $COPIES >/dev/null; }

# read_all: every copy read by its own `cat`, two at a time (the verify's two cores).
read_all() { echo "$COPIES" | "${PRIO[@]}" xargs -P 2 -n 1 cat >/dev/null; }
# hash_one: sha256sum, one process, one core.
hash_one() { "${PRIO[@]}" sha256sum $COPIES >/dev/null; }
timed() { # timed COMMAND -> seconds
  local a b
  a=$(date +%s.%N)
  "$@"
  b=$(date +%s.%N)
  secs "$a" "$b"
}

# verify_once -> "seconds cpu_seconds": POST the verify, poll until it finished.
verify_once() {
  local a b c0 c1 v
  c0=$(cpu_s "$TGT_PID")
  a=$(date +%s.%N)
  api "$TGT_API" "$TGT_CA" "$TT" POST "/api/replication/verify?sid=$SID" >/dev/null
  for _ in $(seq 1 60000); do
    v=$(received_json | grep -o '"verify":{[^}]*}')
    case $v in *'"running":false'*'"finished"'*|*'"finished"'*'"running":false'*) break ;; esac
    sleep 0.02
  done
  b=$(date +%s.%N)
  c1=$(cpu_s "$TGT_PID")
  echo "$v" | grep -q "\"checked\":$FILES" || { echo "verify did not check every copy: $v" >&2; exit 1; }
  echo "$v" | grep -q '"damaged":0' || { echo "verify found damage: $v" >&2; exit 1; }
  echo "$(secs "$a" "$b") $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')"
}

# verify_one_core: the same verify with the target pinned to one core (`taskset`), so it
# reads on one thread (it starts one per core it may run on): the single-threaded verify
# of before, on the same binary.
verify_one_core() {
  taskset -a -p -c 0 "$TGT_PID" >/dev/null
  verify_once
  taskset -a -p -c "0-$(($(nproc) - 1))" "$TGT_PID" >/dev/null
}

row() { # row MODE LABEL SECONDS [CPU]
  local cores="" per_cpu=""
  if [ -n "${4:-}" ]; then
    cores=$(awk -v c="$4" -v s="$3" 'BEGIN { printf "%.2f", c / s }')
    per_cpu="$(mbps "$BYTES" "$4") MB"
  fi
  echo "| $1 | $2 | $(mbps "$BYTES" "$3") MB/s | $3 s | ${cores} | ${per_cpu} |"
}

TABLE=$WORK/table.md
{
  echo "| cache | reader | rate | time | cores busy (CPU s / wall s) | read per CPU second |"
  echo "|---|---|---|---|---|---|"
} >"$TABLE"
if [ "$COLD" = 1 ]; then
  echo "== cold: page cache dropped before each reader" >&2
  drop_caches
  S=$(timed read_all)
  row cold "\`cat\`, two at a time (the disk)" "$S" >>"$TABLE"
  COLD_READ=$S
  drop_caches
  S=$(timed hash_one)
  row cold "\`sha256sum\`, one process" "$S" >>"$TABLE"
  drop_caches
  read -r S CPU < <(verify_once)
  row cold "replgate verify" "$S" "$CPU" >>"$TABLE"
  COLD_VERIFY=$S
  drop_caches
  read -r S CPU < <(verify_one_core)
  row cold "replgate verify pinned to one core" "$S" "$CPU" >>"$TABLE"
fi
echo "== warm: the copies in the page cache" >&2
warm
S=$(timed read_all)
row warm "\`cat\`, two at a time (memory)" "$S" >>"$TABLE"
S=$(timed hash_one)
row warm "\`sha256sum\`, one process" "$S" >>"$TABLE"
WARM_HASH=$S
read -r S CPU < <(verify_once)
row warm "replgate verify" "$S" "$CPU" >>"$TABLE"
WARM_VERIFY=$S
read -r S CPU < <(verify_one_core)
row warm "replgate verify pinned to one core" "$S" "$CPU" >>"$TABLE"
{
  echo
  echo "${FILES} copies of ${FILE_MB} MiB of random data ($(awk -v b="$BYTES" 'BEGIN { printf "%.2f", b / 1e9 }') GB) on the target's storage ($(df --output=source "$TGT_DATA" | tail -1)); every verify checked all ${FILES}, none damaged."
  if [ "$COLD" = 1 ]; then
    echo "Cold verify / cold read of the disk: $(awk -v r="$COLD_READ" -v v="$COLD_VERIFY" 'BEGIN { printf "%.0f", r / v * 100 }') % (goal ≥ 90 %: $(verdict "$(awk -v r="$COLD_READ" -v v="$COLD_VERIFY" 'BEGIN { print r / v * 100 }')" 90 ge))."
  else
    echo "Cold rows skipped (COLD=0, or /proc/sys/vm/drop_caches not writable: run as root), so the disk's read speed was not measured."
  fi
  echo "Warm verify / one sha256sum process: $(awk -v h="$WARM_HASH" -v v="$WARM_VERIFY" 'BEGIN { printf "%.2f", h / v }')x."
} >>"$TABLE"
record "Verify speed on the target (SPEC 20)" "$TABLE"
