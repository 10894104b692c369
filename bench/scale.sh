#!/usr/bin/env bash
# Scale and fairness on one target (SPEC 21), on loopback. Parts (--parts, default all):
#
#   poll   FLEET synthetic sources (default 5,000) paired with one target through n-use
#          pairing tokens, then polling at a HEARTBEAT (60 s) for POLL_S seconds as paired
#          sources do (status.json on the API, the idle transfer session on the tunnel,
#          each on a fresh TLS connection from the source's own 127.x address): the
#          target's resident memory, threads and descriptors every second, API p50/p99
#          (`/api/health`, `/api/systems` whole and its first page of 100 (`systems_page`),
#          `/api/replication/pending` every second), poll
#          and tunnel p50/p99, handshake failures, log lines, idle memory per source.
#   load   the same fleet polling while TRANSFERS (200) of its sources send FILE_MB files
#          at once for LOAD_S seconds: the same figures, per-source rates, Jain's index.
#   fair   EQUAL (100) synthetic sources sending at once for FAIR_S seconds, the last one
#          starting LATE_S seconds after the others: Jain's index per 60 s window and the
#          time the late source takes to reach its share. With WEIGHTS (e.g. 1,2) the
#          sending sources get those `share` weights in turn, and the part reports each
#          weight's mean rate against its share of the total (SPEC 21: within ±5 %).
#   nat    NAT (40) synthetic sources behind one address (all connecting from 127.1.0.1)
#          sending at once for NAT_S seconds: what the per-address cap does to them.
#   daemons  SOURCES (20) real source daemons, each with its own data directory, ports
#          and backup storage, paired through one n-use token (`ctl request-target
#          --join`), sending at once, one more starting LATE_S later: per-source rates
#          from the target's queue API every second, Jain's index per 60 s window, the
#          late source's time to its share.
#   race   RACE_SOURCES (100) synthetic sources racing one RACE_FILE_MB file each into a
#          target storage on a small ext4 filesystem made for the test (loop device;
#          tmpfs if that fails) with RACE_FREE_MB free: nothing may overfill it, refusals
#          must come before a transfer starts, every committed copy must verify.
#
# usage: bench/scale.sh [--quick] [--no-record|--record] [--parts poll,load,fair,nat,daemons,race]
#   env FLEET (5000; quick 300), HEARTBEAT (60; quick 10), POLL_S (300; quick 30),
#       TRANSFERS (200; quick 20), FILE_MB (16), LOAD_S (120; quick 30),
#       EQUAL (100; quick 10), FAIR_S (180; quick 40), LATE_S (60; quick 15),
#       NAT (40; quick 36), NAT_S (60; quick 20), SOURCES (20; quick 4), SOURCE_FILES (40), DAEMONS_S (180; quick 40),
#       RACE_SOURCES (100; quick 20), RACE_FILE_MB (8), RACE_FREE_MB (300; quick 60),
#       FLEET_CACHE (target/scale-fleet: the paired fleet and its target's data,
#       reused by the next run; `none` pairs afresh), WORKERS (32),
#       RENEW_S (unset; with it the fleet's target issues certificates of RENEW_S
#       seconds and the poll part renews them on schedule, at 60-75 % of the lifetime:
#       give FLEET_CACHE=none and POLL_S > 0.75 * RENEW_S)
# Budgets (SPEC 21): 5,000 sources at a 60 s heartbeat plus 200 transfers: RSS <= 128 MB,
# API p99 <= 50 ms, no handshake failures, <= 16 KB idle per source; 100 equal sources:
# Jain >= 0.95 over every 60 s window, a starting source at its share within 5 s; the race
# never overfills the storage and refuses before transfers start.
# Needs root for the race's loop mount (else tmpfs, else the part is skipped with a note),
# curl, jq, sha256sum, mkfs.ext4 and losetup (util-linux, e2fsprogs).
BENCH_KNOBS="FLEET HEARTBEAT POLL_S TRANSFERS FILE_MB LOAD_S EQUAL FAIR_S LATE_S NAT NAT_S SOURCES SOURCE_FILES DAEMONS_S RACE_SOURCES RACE_FILE_MB RACE_FREE_MB FLEET_CACHE WORKERS RENEW_S WEIGHTS"
PARTS=poll,load,fair,nat,daemons,race
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --parts) PARTS=$2; shift 2 ;;
    --parts=*) PARTS=${1#--parts=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
SCRIPT_ARGS="${SCRIPT_ARGS:+$SCRIPT_ARGS }--parts $PARTS"
need curl curl
need jq jq
need sha256sum coreutils
FLEET_BIN=${BENCH_FLEET:-$ROOT/target/release/examples/fleet}
build
if [ -z "${BENCH_FLEET:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked --quiet --example fleet)
fi

q() { [ "$QUICK" = 1 ] && echo "$1" || echo "$2"; }
FLEET=${FLEET:-$(q 300 5000)}
HEARTBEAT=${HEARTBEAT:-$(q 10 60)}
POLL_S=${POLL_S:-$(q 30 300)}
TRANSFERS=${TRANSFERS:-$(q 20 200)}
FILE_MB=${FILE_MB:-16}
LOAD_S=${LOAD_S:-$(q 30 120)}
EQUAL=${EQUAL:-$(q 10 100)}
FAIR_S=${FAIR_S:-$(q 40 180)}
LATE_S=${LATE_S:-$(q 15 60)}
NAT=${NAT:-$(q 36 40)}
NAT_S=${NAT_S:-$(q 20 60)}
SOURCES=${SOURCES:-$(q 4 20)}
SOURCE_FILES=${SOURCE_FILES:-160}
DAEMONS_S=${DAEMONS_S:-$(q 40 180)}
RACE_SOURCES=${RACE_SOURCES:-$(q 20 100)}
RACE_FILE_MB=${RACE_FILE_MB:-8}
RACE_FREE_MB=${RACE_FREE_MB:-$(q 60 300)}
FLEET_CACHE=${FLEET_CACHE:-$ROOT/target/scale-fleet}
WORKERS=${WORKERS:-32}
want() { [[ ",$PARTS," == *",$1,"* ]]; }
# The generator's outputs and the daemons' logs stay in target/scale-logs/ after a run.
LOGS=$ROOT/target/scale-logs
mkdir -p "$LOGS"
keep() { cp "$@" "$LOGS/" 2>/dev/null || true; }
NOTE="Loopback, one 2-core machine shared with other engineers' builds and tests (see the load averages): the generator, the target and the sources share the cores."

# fleet COMMAND [ARGS...]: the generator; its key=value lines go to $WORK/COMMAND.out.
fleet() { "$FLEET_BIN" "$@"; }
val() { sed -n "s/^$1=//p" "$2" | tail -1; }
mbk() { mb "$1"; }

api() { # api DATA HOST TOKEN METHOD PATH [BODY]
  local data=$1 host=$2 token=$3 method=$4 path=$5 body=${6:-}
  curl -sS --cacert "$data/ca.pem" -X "$method" -H "AuthToken: $token" \
    -H 'Content-Type: application/json' ${body:+--data "$body"} "https://$host$path"
}
login() { # login DATA HOST -> token
  curl -sS --cacert "$1/ca.pem" -H 'Content-Type: application/json' \
    --data "{\"username\":\"root\",\"password\":\"$PASSWORD\"}" "https://$2/api/login" | jq -er .auth_token
}

# Deletes verified copies from a target's storage every 2 s, so a long run at hundreds of
# MB/s does not fill this machine's disk (the target never reads them again).
start_cleaner() { # start_cleaner STORAGE_DIR
  (while :; do
    find "$1" -mindepth 3 -type f ! -name '.*' -delete 2>/dev/null || true
    sleep 2
  done) &
  CLEANER=$!
  PIDS+=("$CLEANER")
}
stop_cleaner() { kill "$CLEANER" 2>/dev/null || true; wait "$CLEANER" 2>/dev/null || true; }

log_lines() { wc -l <"$1" | tr -d ' '; }
# share_verdict SECONDS|never: the late source's time to its share against 5 s.
share_verdict() { case $1 in never | "") echo MISSED ;; *) verdict "$1" 5 ;; esac; }
share_text() { case $1 in never | "") echo "never (within the run)" ;; *) echo "$1 s" ;; esac; }

# ---- the fleet's target: its data and the fleet file are cached between runs ----
start_fleet_target() {
  local cache=$FLEET_CACHE
  [ "$cache" = none ] && cache=$WORK/fleet-cache
  mkdir -p "$cache"
  FLEET_FILE=$cache/fleet.jsonl
  if [ -f "$cache/ports" ] && [ "$(wc -l <"$cache/ports")" = 2 ]; then
    { read -r FT_API; read -r FT_TUNNEL; } <"$cache/ports"
    if port_in_use "${FT_API##*:}" || port_in_use "${FT_TUNNEL##*:}"; then
      echo "== cached fleet's ports are taken: pairing afresh" >&2
      rm -rf "${cache:?}"/*
    fi
  fi
  if [ ! -f "$cache/ports" ]; then
    FT_API=127.0.0.1:$(free_port)
    FT_TUNNEL=127.0.0.1:$(free_port)
    printf '%s\n%s\n' "$FT_API" "$FT_TUNNEL" >"$cache/ports"
    rm -rf "$cache/data" "$FLEET_FILE"
  fi
  FT_ENV=(REPLGATE_TUNNEL_LISTEN="$FT_TUNNEL")
  [ -n "${RENEW_S:-}" ] && FT_ENV+=(REPLGATE_CERTIFICATE_SECONDS="$RENEW_S")
  # The shipped log level (info): log volume is one of the figures.
  RG_DATA_DIR=$cache/data RG_API_FIXED=$FT_API REPLGATE_LOG=info \
    start_replgate fleet-target "${FT_ENV[@]}"
  FT_PID=$RG_PID FT_DATA=$RG_DATA FT_LOG=$RG_LOG
}

# ---- part: poll ----
part_poll() {
  echo "== poll: idle target, then $FLEET sources paired" >&2
  start_replgate fresh
  sleep 3
  local fresh_rss fresh_threads
  fresh_rss=$(rss_kib "$RG_PID") fresh_threads=$(threads "$RG_PID")
  stop_replgate
  start_fleet_target
  fleet pair --api "$FT_API" --ca "$FT_DATA/ca.pem" --password "$PASSWORD" --count "$FLEET" \
    --fleet "$FLEET_FILE" >"$WORK/pair.out"
  cat "$WORK/pair.out" >&2
  # A restart: the idle state of a target with the fleet paired, and its start-up time.
  stop_replgate
  local t0 t1
  t0=$(date +%s%3N)
  RG_DATA_DIR=$FT_DATA RG_API_FIXED=$FT_API REPLGATE_LOG=info \
    start_replgate fleet-target "${FT_ENV[@]}"
  t1=$(date +%s%3N)
  FT_PID=$RG_PID
  sleep 3
  local idle_rss idle_threads idle_fds
  idle_rss=$(rss_kib "$FT_PID") idle_threads=$(threads "$FT_PID")
  idle_fds=$(find "/proc/$FT_PID/fd" -mindepth 1 | wc -l)
  # The target holds every source of the fleet file (a cached fleet may be larger).
  local held per_source
  held=$(val fleet_sources "$WORK/pair.out")
  per_source=$(awk -v a="$idle_rss" -v b="$fresh_rss" -v n="$held" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
  echo "== poll: $FLEET sources at a ${HEARTBEAT} s heartbeat for ${POLL_S} s" >&2
  local lines0
  lines0=$(log_lines "$FT_LOG")
  fleet run --api "$FT_API" --fleet "$FLEET_FILE" --count "$FLEET" --heartbeat "$HEARTBEAT" --duration "$POLL_S" \
    --password "$PASSWORD" --pid "$FT_PID" --workers "$WORKERS" ${RENEW_S:+--renew} >"$WORK/poll.out"
  local lines=$(($(log_lines "$FT_LOG") - lines0))
  # The state the fleet left: 8 s after its last call (idle pool threads end after 5 s).
  sleep 8
  local after_rss after_threads per_source_after
  after_rss=$(rss_kib "$FT_PID") after_threads=$(threads "$FT_PID")
  per_source_after=$(awk -v a="$after_rss" -v b="$fresh_rss" -v n="$held" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
  local o=$WORK/poll.out
  local table=$WORK/poll.md
  {
    echo "| figure | value | budget |"
    echo "|---|---|---|"
    echo "| sources paired with the target (this run; the rest reused from the cache) | $held ($(val fleet_paired "$WORK/pair.out")) | |"
    if [ -n "$(val fleet_pair_per_s "$WORK/pair.out")" ]; then
      echo "| pairing with a token, sources per second (8 at once) | $(val fleet_pair_per_s "$WORK/pair.out") | |"
    fi
    echo "| target start-up with $held paired (to /api/health) | $((t1 - t0)) ms | |"
    echo "| idle RSS: empty / with $held paired | $(mbk "$fresh_rss") / $(mbk "$idle_rss") MB | |"
    echo "| idle memory per paired source: after a start / 8 s after the fleet's last call ($(mbk "$after_rss") MB, $after_threads threads) | $per_source / $per_source_after bytes | $(verdict "$per_source_after" 16000) (≤ 16 KB) |"
    echo "| idle threads, descriptors (paired) | $idle_threads, $idle_fds (empty: $fresh_threads threads) | |"
    echo "| calls per second (polls + tunnel) | $(val calls_per_s "$o") | |"
    echo "| RSS under the fleet: max / mean | $(val target_rss_max_mb "$o") / $(val target_rss_mean_mb "$o") MB | $(verdict "$(val target_rss_max_mb "$o")" 128) (≤ 128 MB) |"
    echo "| threads max / mean; descriptors max | $(val target_threads_max "$o") / $(val target_threads_mean "$o"); $(val target_fds_max "$o") | |"
    echo "| target CPU | $(val target_cpu_pct "$o") % of one core | |"
    echo "| poll (fresh TLS each) p50 / p99 | $(val poll_p50_ms "$o") / $(val poll_p99_ms "$o") ms | |"
    echo "| tunnel idle session (fresh mTLS each) p50 / p99 | $(val tunnel_p50_ms "$o") / $(val tunnel_p99_ms "$o") ms | |"
    for e in health systems systems_page pending metrics; do
      echo "| API \`$e\` p50 / p99 | $(val "api_${e}_p50_ms" "$o") / $(val "api_${e}_p99_ms" "$o") ms | $(verdict "$(val "api_${e}_p99_ms" "$o")" 50) (p99 ≤ 50 ms) |"
    done
    echo "| \`/api/systems\` answer | $(val api_systems_bytes "$o") bytes | |"
    local hs=$(($(val poll_hs_fail "$o") + $(val tunnel_hs_fail "$o")))
    local refused=$(($(val poll_refused "$o") + $(val tunnel_refused "$o")))
    local errors=$(($(val poll_errors "$o") + $(val tunnel_errors "$o")))
    echo "| handshake failures; refused; other errors | $hs; $refused; $errors | $(verdict "$hs" 0) (no handshake failures) |"
    if [ -n "${RENEW_S:-}" ]; then
      echo "| renewals (${RENEW_S} s certificates): done; p50 / p99; refused; failed | $(val renewed "$o"); $(val renew_p50_ms "$o") / $(val renew_p99_ms "$o") ms; $(val renew_refused "$o"); $(($(val renew_hs_fail "$o") + $(val renew_errors "$o"))) | |"
    fi
    echo "| generator lag p99 / max (due to started) | $(val lag_p99_ms "$o") / $(val lag_max_ms "$o") ms | |"
    echo "| target log lines per minute (level info) | $(awk -v l="$lines" -v s="$POLL_S" 'BEGIN { printf "%.0f", l * 60 / s }') | |"
    echo
    echo "$FLEET synthetic sources (bench/fleet) at a ${HEARTBEAT} s heartbeat (each period shortened by up to 20 % at random, as a source's poller does): a poll of status.json on the API and an idle transfer session on the tunnel each, every call on a fresh TLS connection from the source's own 127.x address; ${POLL_S} s. The API probe: \`health\`, \`systems\` and \`pending\` every second, \`metrics\` every 15 s, with an admin token on one keep-alive connection; load $(val load_start "$o") at the start, $(val load_end "$o") at the end. Idle figures 3 s after a start. $NOTE"
  } >"$table"
  record "Scale (SPEC 21): $FLEET sources polling" "$table"
  keep "$WORK/pair.out" "$WORK/poll.out"
}

# ---- part: load ----
part_load() {
  [ -n "${FT_PID:-}" ] || { start_fleet_target; fleet pair --api "$FT_API" --ca "$FT_DATA/ca.pem" \
    --password "$PASSWORD" --count "$FLEET" --fleet "$FLEET_FILE" >"$WORK/pair.out"; }
  echo "== load: $FLEET polling, $TRANSFERS of them sending ${FILE_MB} MB files, ${LOAD_S} s" >&2
  start_cleaner "$FT_DATA/storage"
  fleet run --api "$FT_API" --fleet "$FLEET_FILE" --count "$FLEET" --heartbeat "$HEARTBEAT" --duration "$LOAD_S" \
    --password "$PASSWORD" --pid "$FT_PID" --workers "$WORKERS" --transfers "$TRANSFERS" \
    --transfer-from $((FLEET - TRANSFERS)) --file-mb "$FILE_MB" >"$WORK/load.out"
  stop_cleaner
  local o=$WORK/load.out table=$WORK/load.md
  {
    echo "| figure | value | budget |"
    echo "|---|---|---|"
    echo "| RSS max / mean | $(val target_rss_max_mb "$o") / $(val target_rss_mean_mb "$o") MB | $(verdict "$(val target_rss_max_mb "$o")" 128) (≤ 128 MB) |"
    echo "| threads max; descriptors max | $(val target_threads_max "$o"); $(val target_fds_max "$o") | |"
    echo "| target CPU | $(val target_cpu_pct "$o") % of one core | |"
    for e in health systems systems_page pending metrics; do
      echo "| API \`$e\` p50 / p99 | $(val "api_${e}_p50_ms" "$o") / $(val "api_${e}_p99_ms" "$o") ms | $(verdict "$(val "api_${e}_p99_ms" "$o")" 50) (p99 ≤ 50 ms) |"
    done
    echo "| poll p50 / p99 | $(val poll_p50_ms "$o") / $(val poll_p99_ms "$o") ms | |"
    echo "| tunnel idle session p50 / p99; refused | $(val tunnel_p50_ms "$o") / $(val tunnel_p99_ms "$o") ms; $(val tunnel_refused "$o") ($(val tunnel_statuses "$o")) | |"
    local hs=$(($(val poll_hs_fail "$o") + $(val tunnel_hs_fail "$o") + $(val session_hs_fail "$o")))
    echo "| handshake failures | $hs | $(verdict "$hs" 0) |"
    echo "| transfer sessions opened (to Ready) p50 / p99; refused | $(val session_p50_ms "$o") / $(val session_p99_ms "$o") ms; $(val session_refused "$o") ($(val session_statuses "$o")) | |"
    echo "| sources of $TRANSFERS that moved bytes | $(val sources_sending "$o") | $(verdict "$(val sources_sending "$o")" "$TRANSFERS" ge) (all) |"
    echo "| per-source rate min / median / max; total | $(val rate_min_mb_s "$o") / $(val rate_median_mb_s "$o") / $(val rate_max_mb_s "$o"); $(val rate_total_mb_s "$o") MB/s | |"
    echo "| Jain's index per 60 s window | $(val jain_windows "$o") | $(verdict "$(val jain_min "$o")" 0.95 ge) (≥ 0.95) |"
    echo "| files | $(val files "$o") | |"
    echo "| generator lag p99 / max | $(val lag_p99_ms "$o") / $(val lag_max_ms "$o") ms | |"
    echo
    echo "$FLEET sources polling as in the table above, the last $TRANSFERS of them (no idle session) each sending ${FILE_MB} MB files back to back, one session at a time, retried as a source's replicator retries (1 s doubling to 60 s); ${LOAD_S} s; load $(val load_start "$o") → $(val load_end "$o"). Rates are bytes each source put on the wire per second. $NOTE"
  } >"$table"
  record "Scale (SPEC 21): $FLEET polling + $TRANSFERS transfers" "$table"
  keep "$WORK/load.out"
}

# ---- part: fair ----
part_fair() {
  [ -n "${FT_PID:-}" ] || { start_fleet_target; fleet pair --api "$FT_API" --ca "$FT_DATA/ca.pem" \
    --password "$PASSWORD" --count "$FLEET" --fleet "$FLEET_FILE" >"$WORK/pair.out"; }
  echo "== fair: $EQUAL equal sources sending for ${FAIR_S} s, one starting after ${LATE_S} s" >&2
  start_cleaner "$FT_DATA/storage"
  fleet run --api "$FT_API" --fleet "$FLEET_FILE" --count 0 --duration "$FAIR_S" --pid "$FT_PID" \
    --transfers $((EQUAL + 1)) --transfer-from 0 --file-mb "$FILE_MB" --late-after "$LATE_S" \
    ${WEIGHTS:+--password "$PASSWORD" --weights "$WEIGHTS"} >"$WORK/fair.out"
  stop_cleaner
  local o=$WORK/fair.out table=$WORK/fair.md
  {
    echo "| figure | value | budget |"
    echo "|---|---|---|"
    echo "| sources of $EQUAL that moved bytes | $(val sources_sending "$o") | $(verdict "$(val sources_sending "$o")" "$EQUAL" ge) (all) |"
    echo "| per-source rate min / median / max; total | $(val rate_min_mb_s "$o") / $(val rate_median_mb_s "$o") / $(val rate_max_mb_s "$o"); $(val rate_total_mb_s "$o") MB/s | |"
    echo "| Jain's index over the run | $(val jain_run "$o") | |"
    echo "| Jain's index per 60 s window | $(val jain_windows "$o") | $(verdict "$(val jain_min "$o")" 0.95 ge) (≥ 0.95) |"
    local late
    late=$(val late_to_share_s "$o")
    echo "| a source starting after ${LATE_S} s: to 90 % of its share | $(share_text "$late") | $(share_verdict "$late") (≤ 5 s) |"
    echo "| sessions refused | $(val session_refused "$o") ($(val session_statuses "$o")) | |"
    echo "| RSS max; threads max | $(val target_rss_max_mb "$o") MB; $(val target_threads_max "$o") | |"
    if [ -n "${WEIGHTS:-}" ]; then
      local worst
      worst=$(val weight_worst_source_pct "$o")
      echo "| weights $WEIGHTS in turn: mean rate / share of the total, MB/s, per weight ($(val weights_seconds "$o") s) | $(val weight_rates "$o") | |"
      echo "| the source furthest from its weighted share | ${worst} % | $(verdict "$worst" 5) (±5 %) |"
      echo "| (Jain's index above is of the rates as they are: weights held exactly give less than 1, 0.9 for 1 and 2 in turn) | | |"
    fi
    echo
    echo "$EQUAL synthetic sources sending ${FILE_MB} MB files back to back from t = 0, one more from t = ${LATE_S} s (left out of the index), ${FAIR_S} s; Jain's index of the sources' mean rates per 60 s window; a source's share is the total rate over the sources sending, reached when its rate over 2 s is 90 % of it; load $(val load_start "$o") → $(val load_end "$o"). $NOTE"
  } >"$table"
  record "Scale (SPEC 21): fairness, $EQUAL synthetic sources" "$table"
  keep "$WORK/fair.out"
}

# ---- part: daemons ----
part_daemons() {
  echo "== daemons: a target and $((SOURCES + 1)) source daemons" >&2
  REPLGATE_LOG=info start_replgate dtarget
  local tpid=$RG_PID tapi=$RG_API tdata=$RG_DATA tlog=$RG_LOG
  local tt
  tt=$(login "$tdata" "$tapi")
  # One blob of random data, hard-linked under every name of every source (one copy on
  # this disk; each name is a separate backup to replgate).
  head -c $((FILE_MB * 1048576)) /dev/urandom >"$WORK/blob"
  local n=$((SOURCES + 1)) i pids=() apis=() datas=()
  for i in $(seq 1 "$n"); do
    mkdir -p "$WORK/src$i"
    local api=127.0.0.1:$(free_port)
    env REPLGATE_ADMIN_PASSWORD=$PASSWORD REPLGATE_DATA_DIR="$WORK/src$i/data" \
      REPLGATE_API_LISTEN="$api" REPLGATE_TUNNEL_LISTEN="127.0.0.1:$(free_port)" \
      REPLGATE_LOG=info REPLGATE_NAME="source-$i" "$BIN" serve 2>>"$WORK/src$i/daemon.log" &
    pids+=($!) apis+=("$api") datas+=("$WORK/src$i/data")
    PIDS+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 1 600); do
      [ -f "${datas[$i]}/ca.pem" ] && curl -sf --cacert "${datas[$i]}/ca.pem" "https://${apis[$i]}/api/health" >/dev/null && break
      kill -0 "${pids[$i]}" 2>/dev/null || { cat "$WORK/src$((i + 1))/daemon.log" >&2; exit 1; }
      sleep 0.1
    done
  done
  local join
  join=$(api "$tdata" "$tapi" "$tt" POST /api/replication/tokens "{\"uses\":$n,\"note\":\"scale daemons\"}" | jq -er .join)
  for i in $(seq 0 $((n - 1))); do
    REPLGATE_PASSWORD=$PASSWORD REPLGATE_CTL_TOKEN_FILE="$WORK/src$((i + 1))/ctl-token" \
      "$BIN" ctl --api "https://${apis[$i]}" --cacert "${datas[$i]}/ca.pem" login >/dev/null
    REPLGATE_CTL_TOKEN_FILE="$WORK/src$((i + 1))/ctl-token" \
      "$BIN" ctl --api "https://${apis[$i]}" --cacert "${datas[$i]}/ca.pem" request-target --join "$join" >/dev/null
  done
  # Staged under a dot-named client directory (never replicated), renamed into place.
  for i in $(seq 1 "$n"); do
    local stage=$WORK/src$i/data/storage/.c1
    mkdir -p "$stage"
    for f in $(seq -w 1 "$SOURCE_FILES"); do ln "$WORK/blob" "$stage/f$f.bin"; done
  done
  local tokens=() complete=0
  for i in $(seq 0 $((n - 1))); do tokens+=("$(login "${datas[$i]}" "${apis[$i]}")"); done
  for _ in $(seq 1 120); do
    complete=0
    for i in $(seq 0 $((n - 1))); do
      api "${datas[$i]}" "${apis[$i]}" "${tokens[$i]}" GET /api/replication/targets |
        jq -e '.targets[0].status == "complete"' >/dev/null && complete=$((complete + 1))
    done
    [ "$complete" = "$n" ] && break
    sleep 1
  done
  [ "$complete" = "$n" ] || { echo "only $complete of $n sources completed pairing" >&2; exit 1; }
  local late_uuid
  late_uuid=$(api "${datas[$((n - 1))]}" "${apis[$((n - 1))]}" "${tokens[$((n - 1))]}" GET /api/systems |
    jq -er '.appliance[] | select(.local) | .system_uuid')
  start_cleaner "$tdata/storage"
  local start_ms late_ms
  start_ms=$(date +%s%3N)
  late_ms=$((start_ms + LATE_S * 1000))
  fleet watch --api "$tapi" --ca "$tdata/ca.pem" --password "$PASSWORD" --duration "$DAEMONS_S" \
    --pid "$tpid" --late-uuid "$late_uuid" --late-at-ms "$late_ms" --out "$WORK/daemon-rates" \
    >"$WORK/daemons.out" &
  local watcher=$!
  for i in $(seq 1 "$SOURCES"); do mv "$WORK/src$i/data/storage/.c1" "$WORK/src$i/data/storage/c1"; done
  sleep "$(awk -v t="$late_ms" -v n="$(date +%s%3N)" 'BEGIN { d = (t - n) / 1000; if (d < 0) d = 0; printf "%.3f", d }')"
  mv "$WORK/src$n/data/storage/.c1" "$WORK/src$n/data/storage/c1"
  wait "$watcher"
  stop_cleaner
  local o=$WORK/daemons.out table=$WORK/daemons.md
  local src_rss=0 src_threads=0
  for p in "${pids[@]}"; do
    src_rss=$((src_rss + $(rss_kib "$p")))
    src_threads=$((src_threads + $(threads "$p")))
  done
  local refused429
  refused429=$(cat "$WORK"/src*/daemon.log | grep -c 'refused with 429' || true)
  {
    echo "| figure | value | budget |"
    echo "|---|---|---|"
    echo "| sources of $SOURCES that moved bytes | $(val sources_sending "$o") | $(verdict "$(val sources_sending "$o")" "$SOURCES" ge) (all) |"
    echo "| per-source rate min / median / max; total | $(val rate_min_mb_s "$o") / $(val rate_median_mb_s "$o") / $(val rate_max_mb_s "$o"); $(val rate_total_mb_s "$o") MB/s | |"
    echo "| Jain's index, whole run / per 60 s window | $(val jain_run "$o") / $(val jain_windows "$o") | $(verdict "$(val jain_min "$o")" 0.95 ge) (≥ 0.95) |"
    local late
    late=$(val late_to_share_s "$o")
    echo "| the source starting after ${LATE_S} s: to 90 % of its share | $(share_text "$late") | $(share_verdict "$late") (≤ 5 s) |"
    echo "| target RSS max; threads max; CPU | $(val target_rss_max_mb "$o") MB; $(val target_threads_max "$o"); $(val target_cpu_pct "$o") % | |"
    echo "| the $n sources' RSS, threads (at the end, summed) | $(mbk "$src_rss") MB, $src_threads | |"
    echo "| sessions refused with 429 (sources' logs) | $refused429 | |"
    echo "| target log lines | $(log_lines "$tlog") | |"
    echo
    echo "$SOURCES real source daemons (default max_concurrent 2), each with its own data directory, ports and backup storage holding $SOURCE_FILES files of ${FILE_MB} MiB, paired through one $n-use token (\`ctl request-target --join\`), their files renamed into place at once; one more from t = ${LATE_S} s. Rates from the target's \`GET /api/replication/queue\` every second (growth of each incoming item's bytes_done), over the seconds when all $SOURCES were sending (from s $(val steady_from_s "$o") to $(val steady_to_s "$o")); ${DAEMONS_S} s; load $(val load_start "$o") → $(val load_end "$o"). $NOTE"
  } >"$table"
  record "Scale (SPEC 21): fairness, $SOURCES source daemons" "$table"
  keep "$WORK/daemons.out" "$WORK/daemon-rates" "$tlog"
  cp "$WORK/src1/daemon.log" "$LOGS/source1.log" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  RG_PID=$tpid stop_replgate
}

# ---- part: nat ----
part_nat() {
  [ -n "${FT_PID:-}" ] || { start_fleet_target; fleet pair --api "$FT_API" --ca "$FT_DATA/ca.pem" \
    --password "$PASSWORD" --count "$FLEET" --fleet "$FLEET_FILE" >"$WORK/pair.out"; }
  echo "== nat: $NAT sources behind one address sending for ${NAT_S} s" >&2
  start_cleaner "$FT_DATA/storage"
  fleet run --api "$FT_API" --fleet "$FLEET_FILE" --count 0 --duration "$NAT_S" --pid "$FT_PID" \
    --transfers "$NAT" --transfer-from 0 --file-mb "$FILE_MB" --one-address >"$WORK/nat.out"
  stop_cleaner
  local o=$WORK/nat.out table=$WORK/nat.md
  {
    echo "| figure | value |"
    echo "|---|---|"
    echo "| sources of $NAT that moved bytes | $(val sources_sending "$o") |"
    echo "| sessions opened; refused (by status) | $(val session_n "$o"); $(val session_refused "$o") ($(val session_statuses "$o")) |"
    echo "| per-source rate min / median / max; total | $(val rate_min_mb_s "$o") / $(val rate_median_mb_s "$o") / $(val rate_max_mb_s "$o"); $(val rate_total_mb_s "$o") MB/s |"
    echo "| Jain's index over the run | $(val jain_run "$o") |"
    echo
    echo "$NAT synthetic sources all connecting from 127.1.0.1, as sources behind one NAT would, each sending ${FILE_MB} MB files, ${NAT_S} s, on defaults (\`max_connections_per_address\` 32); load $(val load_start "$o") → $(val load_end "$o"). $NOTE"
  } >"$table"
  record "Scale (SPEC 21): $NAT sources behind one address" "$table"
  keep "$WORK/nat.out"
}

# ---- part: race ----
part_race() {
  local mnt=$WORK/race-mnt fs_kind
  mkdir -p "$mnt"
  local fs_mb=$((RACE_FREE_MB + 64))
  if command -v mkfs.ext4 >/dev/null && truncate -s "${fs_mb}M" "$WORK/race.img" &&
    mkfs.ext4 -q -F -m 0 "$WORK/race.img" && mount -o loop "$WORK/race.img" "$mnt" 2>/dev/null; then
    fs_kind="ext4 on a loop device, ${fs_mb} MB"
  elif mount -t tmpfs -o "size=${fs_mb}m" tmpfs "$mnt" 2>/dev/null; then
    fs_kind="tmpfs, ${fs_mb} MB"
  else
    echo "== race: skipped (cannot mount a small filesystem; run as root)" >&2
    return 0
  fi
  CLEANUP_HOOKS+=("umount '$mnt'")
  mkdir -p "$mnt/storage"
  # Fill it to RACE_FREE_MB free.
  local free_kb
  free_kb=$(df -k --output=avail "$mnt" | tail -1 | tr -d ' ')
  if [ "$free_kb" -gt $((RACE_FREE_MB * 1000)) ]; then
    fallocate -l $(((free_kb - RACE_FREE_MB * 1000) * 1024)) "$mnt/filler" 2>/dev/null ||
      head -c $(((free_kb - RACE_FREE_MB * 1000) * 1024)) /dev/zero >"$mnt/filler"
  fi
  sync
  local free0
  free0=$(df -B1 --output=avail "$mnt" | tail -1 | tr -d ' ')
  cat >"$WORK/race.toml" <<EOF
[[storage]]
id = 1
name = "small"
path = "$mnt/storage"
usage = "backup"
EOF
  RG_CONFIG=$WORK/race.toml REPLGATE_LOG=info start_replgate race
  local rpid=$RG_PID rapi=$RG_API rdata=$RG_DATA rlog=$RG_LOG
  fleet pair --api "$rapi" --ca "$rdata/ca.pem" --password "$PASSWORD" --count "$RACE_SOURCES" \
    --fleet "$WORK/race-fleet.jsonl" >/dev/null
  echo "== race: $RACE_SOURCES sources, one ${RACE_FILE_MB} MB file each, $((free0 / 1000000)) MB free" >&2
  fleet run --api "$rapi" --fleet "$WORK/race-fleet.jsonl" --count 0 --duration 300 --pid "$rpid" \
    --transfers "$RACE_SOURCES" --transfer-from 0 --files 1 --file-mb "$RACE_FILE_MB" --fs "$mnt/storage" \
    --files-out "$WORK/race-files" >"$WORK/race.out"
  local o=$WORK/race.out table=$WORK/race.md
  local committed bad=0 name size sha
  committed=$(wc -l <"$WORK/race-files")
  while read -r name size sha; do
    [ "$(sha256sum "$mnt/storage/$name" | cut -d' ' -f1)" = "$sha" ] || bad=$((bad + 1))
  done <"$WORK/race-files"
  local enospc
  enospc=$(grep -c -i 'no space left' "$rlog" || true)
  local partials
  partials=$(find "$mnt/storage" -name '.*.replgate-part' | wc -l)
  local min_free
  min_free=$(val fs_min_free_mb "$o")
  {
    echo "| figure | value | budget |"
    echo "|---|---|---|"
    echo "| free at the start; demand | $((free0 / 1000000)) MB; $RACE_SOURCES × $RACE_FILE_MB MB = $((RACE_SOURCES * RACE_FILE_MB)) MB | |"
    echo "| files by outcome | $(val files "$o") | |"
    echo "| committed copies that verify (SHA-256 on the filesystem) | $((committed - bad)) of $committed | $(verdict "$bad" 0) (all) |"
    echo "| least free space seen (every 20 ms) | $min_free MB | $(verdict "$min_free" 0.001 ge) (never full) |"
    echo "| failures after a transfer started (no space, storage) | $(val files "$o" | tr ',' '\n' | grep -c '^failed-' || true) | |"
    echo "| \"No space left\" in the target's log | $enospc | $(verdict "$enospc" 0) |"
    echo "| sessions refused | $(val session_refused "$o") ($(val session_statuses "$o")) | |"
    echo "| partial copies left | $partials | |"
    echo
    echo "Storage: $fs_kind, filled to leave $((free0 / 1000000)) MB; the target keeps a 16 MiB reserve. $RACE_SOURCES synthetic sources start together (a barrier), each sending one ${RACE_FILE_MB} MB file; a session refused for want of a slot is retried (1 s doubling). $NOTE"
  } >"$table"
  record "Scale (SPEC 21): $RACE_SOURCES sources racing into a nearly full storage" "$table"
  keep "$WORK/race.out" "$WORK/race-files"
  cp "$rlog" "$LOGS/race-target.log" 2>/dev/null || true
  RG_PID=$rpid stop_replgate
}

want poll && part_poll
want load && part_load
want fair && part_fair
want nat && part_nat
if [ -n "${FT_PID:-}" ]; then
  RG_PID=$FT_PID stop_replgate
  cp "$FT_LOG" "$LOGS/fleet-target.log" 2>/dev/null || true
fi
# The cached target keeps its pairings, not what it received.
if [ -n "${FT_DATA:-}" ]; then find "$FT_DATA/storage" -mindepth 1 -delete 2>/dev/null || true; fi
want daemons && part_daemons
want race && part_race
exit 0
