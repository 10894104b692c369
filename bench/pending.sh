#!/usr/bin/env bash
# Pending list: latency of `GET /api/replication/pending` with 100, 1,000 and 10,000 open
# requests: the whole list in one answer (what existing scripts ask for), and page by page
# with `?limit=100&after=<last id>`. max_pending and max_pending_per_address are raised
# through REPLGATE_* so that 10,000 requests fit.
#
# usage: bench/pending.sh [--quick] [--no-record|--record]
#   env LEVELS (default "100 1000 10000"; --quick: "100 1000")
# Budget (SPEC section 10): <= 50 ms per page with 10,000 pending requests.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need curl curl
build

if [ "$QUICK" = 1 ]; then LEVELS=${LEVELS:-100 1000}; else LEVELS=${LEVELS:-100 1000 10000}; fi

start_replgate pending REPLGATE_MAX_PENDING=100000 REPLGATE_MAX_PENDING_PER_ADDRESS=100000
table=$WORK/table.md
{
  echo "| pending | whole list: bytes | p50 ms | p99 ms | runs | pages of 100: p50 ms | p99 ms | pages timed | budget ≤ 50 ms per page |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$table"
have=0
for level in $LEVELS; do
  echo "== filing $((level - have)) more requests (to $level)" >&2
  client file --count $((level - have)) --threads 4 >/dev/null
  have=$level
  rounds=$((level >= 10000 ? 10 : 20))
  walks=$((level >= 10000 ? 2 : (level >= 1000 ? 5 : 20)))
  full=$(client pending --password "$PASSWORD" --rounds "$rounds")
  paged=$(client pending --password "$PASSWORD" --rounds "$walks" --limit 100)
  listed=$(field pending_listed <<<"$full")
  if [ "$listed" != "$level" ]; then
    echo "expected $level pending requests, the list has $listed" >&2
    exit 1
  fi
  f99=$(field pending_p99_us <<<"$full")
  p99=$(field pending_p99_us <<<"$paged")
  v="whole $(verdict "$f99" 50000), pages $(verdict "$p99" 50000)"
  [ "$level" -lt 10000 ] && v="($v)"
  echo "| $level | $(field pending_largest_page_bytes <<<"$full") | $(ms "$(field pending_p50_us <<<"$full")") | $(ms "$f99") | $(field pending_n <<<"$full") | $(ms "$(field pending_p50_us <<<"$paged")") | $(ms "$p99") | $(field pending_n <<<"$paged") | $v |" >>"$table"
done
stop_replgate
{
  echo
  echo "Latency measured by the client over one keep-alive TLS connection, transfer included."
  echo "A walk through the pages ends with one empty page, which is timed too."
} >>"$table"
record "Pending list" "$table"
