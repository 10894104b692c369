#!/usr/bin/env bash
# Accept: N pairing requests filed, then N accepts one after another on one keep-alive
# connection, then N more by 4 clients at once. Each accept signs the CSR, commits the
# resolution, certificate, systems row and audit row durably (redb fsync), and writes the
# spool durably (certificate.pem, ca.pem, status.json: temp file, fsync, rename,
# directory fsync). Latency is measured by the client, TLS included.
#
# usage: bench/accept.sh [--quick] [--no-record|--record]
#   env N (accepts per phase, default 300; --quick: 20), THREADS (default 4)
# Budget (SPEC section 10): accept p99 <= 25 ms on this machine's disk.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need curl curl
build

if [ "$QUICK" = 1 ]; then N=${N:-20}; else N=${N:-300}; fi
THREADS=${THREADS:-4}

start_replgate accept REPLGATE_MAX_PENDING=100000 REPLGATE_MAX_PENDING_PER_ADDRESS=100000
echo "== filing $((2 * N)) requests" >&2
filed=$(client file --count $((2 * N)) --threads "$THREADS" --out "$WORK/filed")
head -n "$N" "$WORK/filed" >"$WORK/sequential"
tail -n +"$((N + 1))" "$WORK/filed" >"$WORK/concurrent"
echo "== $N accepts in a row" >&2
seq_out=$(client accept --password "$PASSWORD" --ids "$WORK/sequential" --threads 1)
echo "== $N accepts, $THREADS at a time" >&2
con_out=$(client accept --password "$PASSWORD" --ids "$WORK/concurrent" --threads "$THREADS")
stop_replgate

fs=$(df -PT "$WORK" | awk 'NR == 2 { print $2 }')
dev=$(df -PT "$WORK" | awk 'NR == 2 { print $1 }')
table=$WORK/table.md
row() {
  local label=$1 prefix=$2 out=$3 budget=$4
  local p50 p99 max rate
  p50=$(field "${prefix}_p50_us" <<<"$out")
  p99=$(field "${prefix}_p99_us" <<<"$out")
  max=$(field "${prefix}_max_us" <<<"$out")
  rate=$(field "${prefix}_per_s" <<<"$out")
  local v=""
  [ "$budget" = yes ] && v=$(verdict "$p99" 25000)
  echo "| $label | $(field "${prefix}_n" <<<"$out") | $(ms "$p50") | $(ms "$p99") | $(ms "$max") | $rate | $v |"
}
{
  echo "| phase | operations | p50 ms | p99 ms | max ms | per second | budget p99 ≤ 25 ms |"
  echo "|---|---|---|---|---|---|---|"
  row "accept, one at a time" accept "$seq_out" yes
  row "accept, $THREADS clients at once" accept "$con_out" yes
  row "(file a request, $THREADS clients at once)" file "$filed" no
  echo
  echo "Data directory on $dev ($fs). Durable: redb commits with fsync; every spool file"
  echo "is written to a temporary name, fsynced, renamed, and its directory fsynced."
} >"$table"
record "Accept" "$table"
