#!/usr/bin/env bash
# Replication throughput (SPEC 16): the same data source -> target on loopback, durable at
# the target, replgate and `rsync -a --fsync` over OpenSSH side by side in one run, for one
# large file and for many small ones; the resident memory of both daemons during our
# transfers; and a large transfer resumed after kill -9 of the target at about half.
#
#   bench/replicate.sh [--quick] [--no-record] [--record]
#
# Knobs (environment): BIG_MB (default 1024, quick 256), FILES (default 1000, quick 200),
# FILE_MB (default 1), PERF=1 (record both daemons with `perf` during the large file, or
# during the small files with PERF_SHAPE=many, and
# write the report to target/replicate-perf.txt). Needs curl, rsync, sshd and ssh (Debian: openssh-server,
# openssh-client, rsync), sha256sum. sshd runs from a private config on a loopback port
# with throw-away host and user keys in the work directory; nothing else is touched
# (it needs /run/sshd, which is created if missing, as the package's service would).
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

need curl curl
need rsync rsync
need ssh openssh-client
need sha256sum coreutils
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] || { echo "missing sshd: install it (Debian: apt-get install openssh-server)" >&2; exit 1; }

if [ "$QUICK" = 1 ]; then
  BIG_MB=${BIG_MB:-256}
  FILES=${FILES:-200}
else
  BIG_MB=${BIG_MB:-1024}
  FILES=${FILES:-1000}
fi
FILE_MB=${FILE_MB:-1}
MIB=1048576
build

# ---- the data, made once, read by both tools from the page cache ----
DATA=$WORK/dataset
mkdir -p "$DATA/big" "$DATA/many"
echo "== making ${BIG_MB} MiB and ${FILES} x ${FILE_MB} MiB of random data" >&2
head -c $((BIG_MB * MIB)) /dev/urandom >"$DATA/big/big.img"
head -c $((FILES * FILE_MB * MIB)) /dev/urandom |
  split -b $((FILE_MB * MIB)) -d -a 5 - "$DATA/many/f"
sync

# ---- two daemons, paired ----
api() { # api HOST TOKEN METHOD PATH [BODY]
  local host=$1 token=$2 method=$3 path=$4 body=${5:-}
  curl -s --cacert "$(ca_of "$host")" -X "$method" -H "AuthToken: $token" \
    -H 'Content-Type: application/json' ${body:+--data "$body"} "https://$host$path"
}
declare -A CA_OF
ca_of() { echo "${CA_OF[$1]}"; }
login() { # login HOST -> token
  curl -s --cacert "$(ca_of "$1")" -H 'Content-Type: application/json' \
    --data "{\"username\":\"root\",\"password\":\"$PASSWORD\"}" "https://$1/api/login" |
    sed -n 's/.*"auth_token":"\([0-9a-f]*\)".*/\1/p'
}
json_num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" | head -1; }

TGT_TUNNEL_PORT=$(free_port)
start_target() { # the same ports on every start: the source knows them
  RG_API_FIXED=${TGT_API:-} start_replgate tgt REPLGATE_TUNNEL_LISTEN="127.0.0.1:$TGT_TUNNEL_PORT"
  TGT_PID=$RG_PID TGT_API=$RG_API TGT_DATA=$RG_DATA
  CA_OF[$TGT_API]=$TGT_DATA/ca.pem
}
start_target
start_replgate src REPLGATE_POLL_INTERVAL=1 REPLGATE_HEARTBEAT_INTERVAL=5
SRC_PID=$RG_PID SRC_API=$RG_API SRC_DATA=$RG_DATA
CA_OF[$SRC_API]=$SRC_DATA/ca.pem
ST=$(login "$SRC_API")
TT=$(login "$TGT_API")
# The 412 answer names the target CA's fingerprint; ask again with it.
FP=$(api "$SRC_API" "$ST" POST /api/replication/target \
  "{\"type\":\"appliance\",\"target\":\"$TGT_API\"}" | sed -n 's/.*"fingerprint":"\([0-9a-f]*\)".*/\1/p')
REQ=$(api "$SRC_API" "$ST" POST /api/replication/target \
  "{\"type\":\"appliance\",\"target\":\"$TGT_API\",\"fingerprint\":\"$FP\"}" | json_num request_id)
api "$TGT_API" "$TT" POST /api/replication/source "{\"request_id\":$REQ,\"accept\":true}" >/dev/null
for _ in $(seq 1 100); do
  api "$SRC_API" "$ST" GET /api/replication/targets | grep -q '"status":"complete"' && break
  sleep 0.2
done
api "$SRC_API" "$ST" GET /api/replication/targets | grep -q '"status":"complete"' ||
  { echo "pairing did not complete" >&2; cat "$WORK/src/daemon.log" >&2; exit 1; }
SRC_UUID=$(api "$SRC_API" "$ST" GET /api/systems | sed -n 's/.*"local":true[^}]*"system_uuid":"\([^"]*\)".*/\1/p')
[ -n "$SRC_UUID" ] || SRC_UUID=$(sed -n 's/.* system \([0-9a-f-]\{36\}\) .*/\1/p' "$WORK/src/daemon.log" | tail -1)
SRC_STORE=$SRC_DATA/storage
TGT_STORE=$TGT_DATA/storage/$SRC_UUID

# Items done so far (the queue's done list counts them).
done_count() {
  api "$SRC_API" "$ST" GET "/api/replication/queue/inactive?include_done=1&count=1" | json_num total_done
}

RSS_LOG=$WORK/rss.log
sample_rss() { # in the background while a transfer runs: "src_kib tgt_kib" lines
  while :; do
    echo "$(rss_kib "$SRC_PID" 2>/dev/null || echo 0) $(rss_kib "$TGT_PID" 2>/dev/null || echo 0)" >>"$RSS_LOG"
    sleep 0.2
  done
}

# replicate CLIENT_DIR SOURCE_DIR COUNT: puts the files into the source storage by the
# rename rule (copied under a dot-named client directory, which nothing replicates, then
# that directory renamed into place: all files appear at once, as they are there at once
# for rsync) and waits until COUNT more items are done; prints the seconds it took.
replicate() {
  local client=$1 from=$2 count=$3 before start end
  before=$(done_count)
  mkdir -p "$SRC_STORE/.$client.tmp"
  cp "$from"/* "$SRC_STORE/.$client.tmp/"
  sync
  sample_rss &
  local sampler=$! perf=""
  if [ "${PERF:-0}" = 1 ] && [ "$client" = "${PERF_SHAPE:-big}" ]; then
    perf record -q -F 499 -a -o "$ROOT/target/replicate-perf.data" 2>/dev/null &
    perf=$!
  fi
  local cpu_src0 cpu_tgt0
  cpu_src0=$(cpu_s "$SRC_PID") cpu_tgt0=$(cpu_s "$TGT_PID")
  start=$(date +%s.%N)
  mv "$SRC_STORE/.$client.tmp" "$SRC_STORE/$client"
  while [ "$(done_count)" -lt $((before + count)) ]; do sleep 0.05; done
  end=$(date +%s.%N)
  CPU_SRC=$(awk -v a="$cpu_src0" -v b="$(cpu_s "$SRC_PID")" 'BEGIN { printf "%.2f", b - a }')
  CPU_TGT=$(awk -v a="$cpu_tgt0" -v b="$(cpu_s "$TGT_PID")" 'BEGIN { printf "%.2f", b - a }')
  echo "$CPU_SRC $CPU_TGT" >"$WORK/cpu.$client"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  if [ -n "$perf" ]; then
    kill -INT "$perf"
    wait "$perf" 2>/dev/null || true
    perf report -q -i "$ROOT/target/replicate-perf.data" --pid "$SRC_PID,$TGT_PID" --no-children --sort pid,sym --percent-limit 0.4 \
      >"$ROOT/target/replicate-perf.txt" 2>/dev/null || true
  fi
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

# verify_same A B: every file of A has the same SHA-256 in B.
verify_same() {
  (cd "$1" && sha256sum -- * | sort) >"$WORK/a.sum"
  (cd "$2" && sha256sum -- * | sort) >"$WORK/b.sum"
  cmp -s "$WORK/a.sum" "$WORK/b.sum"
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }

echo "== replgate: one ${BIG_MB} MiB file" >&2
OUR_BIG_S=$(replicate big "$DATA/big" 1)
verify_same "$DATA/big" "$TGT_STORE/big" || { echo "the big copy differs" >&2; exit 1; }
echo "== replgate: ${FILES} files of ${FILE_MB} MiB" >&2
OUR_MANY_S=$(replicate many "$DATA/many" "$FILES")
verify_same "$DATA/many" "$TGT_STORE/many" || { echo "a small copy differs" >&2; exit 1; }
RSS_SRC_MAX=$(awk '$1 > m { m = $1 } END { print m + 0 }' "$RSS_LOG")
RSS_TGT_MAX=$(awk '$2 > m { m = $2 } END { print m + 0 }' "$RSS_LOG")

# ---- rsync over OpenSSH, same data, same disk ----
SSHD_DIR=$WORK/sshd
SSH_PORT=$(free_port)
sshd_config "$SSHD_DIR" 127.0.0.1 "$SSH_PORT"
"$SSHD" -D -e -f "$SSHD_DIR/sshd_config" 2>>"$SSHD_DIR/sshd.log" &
PIDS+=("$!")
SSH="ssh -p $SSH_PORT -i $SSHD_DIR/user_key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=$SSHD_DIR/known_hosts"
for _ in $(seq 1 200); do port_in_use "$SSH_PORT" && break; sleep 0.1; done
port_in_use "$SSH_PORT" || { echo "sshd did not start:" >&2; cat "$SSHD_DIR/sshd.log" >&2; exit 1; }
RSYNC_DST=$WORK/rsync-dst
rsync_time() { # rsync_time DIR -> seconds
  local start end
  mkdir -p "$RSYNC_DST/$(basename "$1")"
  sync
  start=$(date +%s.%N)
  rsync -a --fsync -e "$SSH" "$1/" "$(whoami)@127.0.0.1:$RSYNC_DST/$(basename "$1")/"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}
echo "== rsync -a --fsync over ssh: the same two shapes" >&2
RS_BIG_S=$(rsync_time "$DATA/big")
RS_MANY_S=$(rsync_time "$DATA/many")
verify_same "$DATA/many" "$RSYNC_DST/many" || { echo "rsync's copy differs" >&2; exit 1; }
CIPHER=$($SSH -G 127.0.0.1 2>/dev/null | sed -n 's/^ciphers //p' | cut -d, -f1)

# ---- a resumed large transfer: kill -9 of the target at about half ----
echo "== replgate: ${BIG_MB} MiB again, the target killed at about half" >&2
mkdir -p "$DATA/resume" "$SRC_STORE/resume"
head -c $((BIG_MB * MIB)) /dev/urandom >"$DATA/resume/again.img"
cp "$DATA/resume/again.img" "$SRC_STORE/resume/.again.img.tmp"
sync
mv "$SRC_STORE/resume/.again.img.tmp" "$SRC_STORE/resume/again.img"
HALF=$((BIG_MB * MIB / 2))
for _ in $(seq 1 600); do
  DONE_NOW=$(api "$SRC_API" "$ST" GET /api/replication/queue/active | json_num bytes_done)
  [ -n "$DONE_NOW" ] && [ "$DONE_NOW" -ge "$HALF" ] && break
  sleep 0.02
done
kill -KILL "$TGT_PID"
wait "$TGT_PID" 2>/dev/null || true
KILLED_AT=${DONE_NOW:-0}
start_target
before_resume=$(date +%s)
resumed_item() { # the done item of the resumed file, as one JSON object
  api "$SRC_API" "$ST" GET "/api/replication/queue?include_done=1&count=5" |
    grep -o '{[^{}]*"backup":"resume/again.img"[^{}]*"status":"done"[^{}]*}' | head -1
}
while [ -z "$(resumed_item)" ]; do
  sleep 0.2
  [ $(($(date +%s) - before_resume)) -lt 300 ] || { echo "the resumed transfer did not finish" >&2; exit 1; }
done
RESUME_SENT=$(resumed_item | json_num bytes_sent)
verify_same "$DATA/resume" "$TGT_STORE/resume" || { echo "the resumed copy differs" >&2; exit 1; }
RESUME_RATIO=$(awk -v s="$RESUME_SENT" -v n=$((BIG_MB * MIB)) 'BEGIN { printf "%.3f", s / n }')

BIG_BYTES=$((BIG_MB * MIB))
MANY_BYTES=$((FILES * FILE_MB * MIB))
OUR_BIG=$(mbps "$BIG_BYTES" "$OUR_BIG_S")
OUR_MANY=$(mbps "$MANY_BYTES" "$OUR_MANY_S")
RS_BIG=$(mbps "$BIG_BYTES" "$RS_BIG_S")
RS_MANY=$(mbps "$MANY_BYTES" "$RS_MANY_S")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
TABLE=$WORK/table.md
{
  echo "| measure | replgate | rsync -a --fsync over ssh ($CIPHER) | ratio | goal | verdict |"
  echo "|---|---|---|---|---|---|"
  echo "| one ${BIG_MB} MiB file | ${OUR_BIG} MB/s (${OUR_BIG_S} s) | ${RS_BIG} MB/s (${RS_BIG_S} s) | $(ratio "$OUR_BIG" "$RS_BIG")x | ≥ 2.0x | $(verdict "$(ratio "$OUR_BIG" "$RS_BIG")" 2.0 ge) |"
  echo "| ${FILES} files of ${FILE_MB} MiB | ${OUR_MANY} MB/s (${OUR_MANY_S} s) | ${RS_MANY} MB/s (${RS_MANY_S} s) | $(ratio "$OUR_MANY" "$RS_MANY")x | ≥ 2.0x | $(verdict "$(ratio "$OUR_MANY" "$RS_MANY")" 2.0 ge) |"
  echo "| peak RSS during our transfers, source | $(mb "$RSS_SRC_MAX") MB | | | ≤ 32 MB | $(verdict "$(mb "$RSS_SRC_MAX")" 32) |"
  echo "| peak RSS during our transfers, target | $(mb "$RSS_TGT_MAX") MB | | | ≤ 32 MB | $(verdict "$(mb "$RSS_TGT_MAX")" 32) |"
  echo "| ${BIG_MB} MiB resumed after kill -9 of the target at $((KILLED_AT / MIB)) MiB: bytes sent / size | ${RESUME_RATIO} | | | ≤ 1.05 | $(verdict "$RESUME_RATIO" 1.05) |"
  read -r c1 c2 <"$WORK/cpu.big"
  read -r c3 c4 <"$WORK/cpu.many"
  echo "| CPU seconds during our transfers (source + target) | ${c1} + ${c2} (large), ${c3} + ${c4} (small) | | | | |"
} >"$TABLE"
echo "End-to-end: SHA-256 of every file compared between the dataset and both copies (all equal)." >>"$TABLE"
record "Replication: replgate vs rsync over ssh, loopback, durable" "$TABLE"
# The daemons' logs, for a look at where the time went.
mkdir -p "$ROOT/target/replicate-logs"
cp "$WORK/src/daemon.log" "$ROOT/target/replicate-logs/source.log"
cp "$WORK/tgt/daemon.log" "$ROOT/target/replicate-logs/target.log"
