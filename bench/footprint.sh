#!/usr/bin/env bash
# Footprint: stripped binary size; resident memory (VmRSS) and threads of an idle daemon
# after its first start and after a restart, after logins (argon2id uses 19 MiB per
# hash), with 256 open TLS connections (one request each, then idle keep-alive), and
# after they close.
#
# usage: bench/footprint.sh [--quick] [--no-record|--record]
# Budgets (SPEC section 10): binary <= 4 MB, idle <= 8 MB, <= 32 MB with 256 connections.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need curl curl
build

CONNS=256
LOGINS=10
[ "$QUICK" = 1 ] && LOGINS=3

size=$(stat -c %s "$BIN")
if command -v strip >/dev/null 2>&1; then
  strip -o "$WORK/replgate.stripped" "$BIN"
  size=$(stat -c %s "$WORK/replgate.stripped")
fi

settle() { sleep "${1:-1}"; }
login() {
  curl -sf --cacert "$RG_DATA/ca.pem" "https://$RG_API/api/login" \
    -d "{\"username\":\"root\",\"password\":\"$PASSWORD\"}" >/dev/null
}

start_replgate footprint
settle 2
first_rss=$(rss_kib "$RG_PID")
first_threads=$(threads "$RG_PID")
stop_replgate

# Every connection comes from 127.0.0.1: lift the per-address cap (default 32) so the
# burst measures memory, not the per-address policy.
start_replgate footprint REPLGATE_MAX_CONNECTIONS_PER_ADDRESS=$CONNS
settle 2
idle_rss=$(rss_kib "$RG_PID")
idle_threads=$(threads "$RG_PID")
idle_anon=$(proc_status "$RG_PID" RssAnon)
idle_file=$(proc_status "$RG_PID" RssFile)
login
settle
login1_rss=$(rss_kib "$RG_PID")
for _ in $(seq 2 "$LOGINS"); do login; done
settle
loginN_rss=$(rss_kib "$RG_PID")

# The hold client prints "ready" once every connection has had its answer.
coproc HOLD { client hold --conns "$CONNS" --path /api/health; }
PIDS+=("$HOLD_PID")
read -r ready _ <&"${HOLD[0]}" || true
if [ "${ready:-}" != ready ]; then
  echo "hold client failed; daemon log:" >&2
  tail -20 "$RG_LOG" >&2
  exit 1
fi
settle
open_rss=$(rss_kib "$RG_PID")
open_threads=$(threads "$RG_PID")
echo >&"${HOLD[1]}"
wait "$HOLD_PID" || true
settle
closed_rss=$(rss_kib "$RG_PID")
closed_threads=$(threads "$RG_PID")
# tiny_http's pool threads end after 5 s without work.
settle 7
later_rss=$(rss_kib "$RG_PID")
later_threads=$(threads "$RG_PID")
later_anon=$(proc_status "$RG_PID" RssAnon)
later_file=$(proc_status "$RG_PID" RssFile)
peak=$(hwm_kib "$RG_PID")
stop_replgate

table=$WORK/table.md
{
  echo "| measure | value | budget | verdict |"
  echo "|---|---|---|---|"
  echo "| stripped release binary | $(awk -v b="$size" 'BEGIN{printf "%.2f MB (%d bytes)", b/1e6, b}') | ≤ 4 MB | $(verdict "$size" 4000000) |"
  echo "| idle RSS, 2 s after the first start (creates CA, certificates, root) | $(mb "$first_rss") MB, $first_threads threads | ≤ 8 MB | $(verdict "$first_rss" 7812) |"
  echo "| idle RSS, 2 s after a restart | $(mb "$idle_rss") MB (anon $(mb "$idle_anon"), file $(mb "$idle_file")), $idle_threads threads | ≤ 8 MB | $(verdict "$idle_rss" 7812) |"
  echo "| RSS after 1 login | $(mb "$login1_rss") MB | ≤ 8 MB idle | $(verdict "$login1_rss" 7812) |"
  echo "| RSS after $LOGINS logins | $(mb "$loginN_rss") MB | ≤ 8 MB idle | $(verdict "$loginN_rss" 7812) |"
  echo "| RSS with $CONNS open TLS connections (idle keep-alive) | $(mb "$open_rss") MB, $open_threads threads | ≤ 32 MB | $(verdict "$open_rss" 31250) |"
  echo "| RSS 1 s after they closed | $(mb "$closed_rss") MB, $closed_threads threads | | |"
  echo "| RSS 8 s after they closed | $(mb "$later_rss") MB (anon $(mb "$later_anon"), file $(mb "$later_file")), $later_threads threads | ≤ 8 MB idle | $(verdict "$later_rss" 7812) |"
  echo "| peak RSS (VmHWM) of that run | $(mb "$peak") MB | | |"
} >"$table"
record "Footprint" "$table"
