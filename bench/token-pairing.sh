#!/usr/bin/env bash
# Pairing with a token (SPEC 13, 16): a source asks a target with a pairing token and
# nobody accepts; measured is the time from the source's `POST /api/replication/target`
# (which probes the target, makes a key and files the request) until its own
# `GET /api/replication/targets` says `complete` (the target accepted at once, the
# source's poller fetched and checked the certificate, installed it and proved the
# tunnel). ROUNDS rounds: each makes a token on the target bound to the source's
# system_uuid (so rounds after the first replace the key, as a re-imaged box would),
# pairs, then forgets the target on the source. The source's poll interval is the
# default 30 s unless POLL_INTERVAL is set; the completion is watched every 20 ms, so
# figures carry up to 20 ms of watching.
#
# usage: bench/token-pairing.sh [--quick] [--no-record|--record]
#   env ROUNDS (default 20; --quick: 3), POLL_INTERVAL (seconds, default 30)
# Budget (SPEC section 16): request to complete within one poll interval plus 1 s.
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need curl curl
need jq jq
build

if [ "$QUICK" = 1 ]; then ROUNDS=${ROUNDS:-3}; else ROUNDS=${ROUNDS:-20}; fi
POLL_INTERVAL=${POLL_INTERVAL:-30}

start_replgate target
TGT_API=$RG_API TGT_DATA=$RG_DATA
start_replgate source REPLGATE_POLL_INTERVAL="$POLL_INTERVAL"
SRC_API=$RG_API SRC_DATA=$RG_DATA

# api DATA API METHOD PATH [TOKEN [BODY]]: one call; prints the body.
api() {
  local data=$1 host=$2 method=$3 path=$4 token=${5:-} body=${6:-}
  local args=(-sS --cacert "$data/ca.pem" -X "$method" "https://$host$path"
    -H 'Content-Type: application/json')
  [ -n "$token" ] && args+=(-H "AuthToken: $token")
  [ -n "$body" ] && args+=(--data "$body")
  curl "${args[@]}"
}
login() {
  api "$1" "$2" POST /api/login "" "{\"username\":\"root\",\"password\":\"$PASSWORD\"}" |
    jq -er .auth_token
}
now_ms() { date +%s%3N; }

TT=$(login "$TGT_DATA" "$TGT_API")
ST=$(login "$SRC_DATA" "$SRC_API")
SRC_UUID=$(api "$SRC_DATA" "$SRC_API" GET /api/systems "$ST" |
  jq -er '.appliance[] | select(.local) | .system_uuid')

times=()
for round in $(seq 1 "$ROUNDS"); do
  join=$(api "$TGT_DATA" "$TGT_API" POST /api/replication/tokens "$TT" \
    "{\"system_uuid\":\"$SRC_UUID\",\"note\":\"bench round $round\"}" | jq -er .join)
  IFS=/ read -r _ _ host port fingerprint token <<<"$join"
  start=$(now_ms)
  api "$SRC_DATA" "$SRC_API" POST /api/replication/target "$ST" \
    "{\"type\":\"appliance\",\"target\":\"$host:$port\",\"fingerprint\":\"$fingerprint\",\"token\":\"$token\"}" |
    jq -e '.status == "pending"' >/dev/null
  deadline=$((start + (POLL_INTERVAL + 10) * 1000))
  until api "$SRC_DATA" "$SRC_API" GET /api/replication/targets "$ST" |
    jq -e '.targets[0].status == "complete"' >/dev/null; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      echo "round $round: not complete within $((POLL_INTERVAL + 10)) s" >&2
      exit 1
    fi
    sleep 0.02
  done
  took=$(($(now_ms) - start))
  times+=("$took")
  echo "round $round: $took ms" >&2
  api "$SRC_DATA" "$SRC_API" DELETE "/api/replication/target/$host:$port" "$ST" >/dev/null
done
stop_replgate

sorted=$(printf '%s\n' "${times[@]}" | sort -n)
pick() { awk -v q="$1" '{ a[NR] = $1 } END { i = int(q * NR + 0.999); if (i < 1) i = 1; print a[i] }' <<<"$sorted"; }
p50=$(pick 0.5)
max=$(pick 1.0)
budget=$((POLL_INTERVAL * 1000 + 1000))
table=$WORK/table.md
{
  echo "| rounds | poll interval | p50 ms | max ms | budget (poll interval + 1 s) |"
  echo "|---|---|---|---|---|"
  echo "| $ROUNDS | ${POLL_INTERVAL} s | $p50 | $max | $(verdict "$max" "$budget") (≤ $budget ms) |"
  echo
  echo "From the source's POST /api/replication/target (probe, key, filing with the token)"
  echo "to its targets row saying complete; nobody accepts. Each round's token is bound to"
  echo "the source's system_uuid, so rounds after the first replace the key. Watched every"
  echo "20 ms with curl."
} >"$table"
record "Pairing with a token, request to complete" "$table"
