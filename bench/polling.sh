#!/usr/bin/env bash
# Polling: `GET /replication/v1/spool/<token>/status.json` over TLS with keep-alive, on
# replgate and, side by side in the same run, on nginx serving the same file under the
# same path with the same certificate chain and key (replgate's api.pem and api.key).
# wrk drives both at 1, 16 and 64 connections; rounds alternate which server goes first,
# and each figure is the median over the rounds.
#
# usage: bench/polling.sh [--quick] [--no-record|--record]
#   env DURATION (seconds per run, default 10), ROUNDS (default 3),
#       NGINX_WORKERS (nginx worker_processes, default auto)
# Budget (SPEC section 16): replgate >= 100% of nginx's requests per second at 1, 16
# and 64 connections (section 10 asked for 50%).
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
need wrk wrk
# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
need "$NGINX" nginx-light
need curl curl
build

if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-2}
  ROUNDS=${ROUNDS:-1}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
CONNS="1 16 64"

# wrk connects from 127.0.0.1 only: lift the per-address cap (default 32) above the
# largest connection count.
start_replgate polling REPLGATE_MAX_CONNECTIONS_PER_ADDRESS=256
client file --count 1 --out "$WORK/filed" >/dev/null
token=$(awk '{ print $2 }' "$WORK/filed")
path=/replication/v1/spool/$token/status.json

# nginx: a private prefix, the same file under the same path, replgate's own certificate.
NG=$WORK/nginx
mkdir -p "$NG/www/replication/v1/spool/$token" "$NG/tmp"
cp "$RG_DATA/spool/$token/status.json" "$NG/www/replication/v1/spool/$token/"
cp "$RG_DATA/api.pem" "$RG_DATA/api.key" "$NG/"
# nginx's workers drop to an unprivileged user when started as root: let them read.
chmod 711 "$WORK" "$NG"
chmod -R a+rX "$NG/www"
NGPORT=$(free_port)
cat >"$NG/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $NG/tmp/body;
  proxy_temp_path $NG/tmp/proxy;
  fastcgi_temp_path $NG/tmp/fastcgi;
  types { application/json json; }
  default_type application/octet-stream;
  # nginx's default closes a keep-alive connection after 1,000 requests, which would
  # add TLS handshakes that replgate's runs do not pay.
  keepalive_requests 1000000000;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$NGPORT ssl;
    ssl_certificate $NG/api.pem;
    ssl_certificate_key $NG/api.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $NG/www;
    location / {
      add_header Cache-Control no-store;
      add_header X-Content-Type-Options nosniff;
    }
  }
}
EOF
"$NGINX" -p "$NG/" -c "$NG/nginx.conf" -e "$NG/error.log" &
NG_PID=$!
PIDS+=("$NG_PID")
for _ in $(seq 1 100); do
  curl -sfk "https://127.0.0.1:$NGPORT$path" >/dev/null && break
  kill -0 "$NG_PID" 2>/dev/null || { cat "$NG/error.log" >&2; exit 1; }
  sleep 0.1
done
ng_workers=$( (pgrep -P "$NG_PID" || true) | wc -l)

rg_url="https://$RG_API$path"
ng_url="https://127.0.0.1:$NGPORT$path"
rg_body=$(curl -sf --cacert "$RG_DATA/ca.pem" "$rg_url")
ng_body=$(curl -sf --cacert "$RG_DATA/ca.pem" "$ng_url")
if [ "$rg_body" != "$ng_body" ]; then
  echo "replgate and nginx serve different bytes: $rg_body / $ng_body" >&2
  exit 1
fi

# Who answers a keep-alive poll: the TLS front itself (no Server header) or tiny_http.
if curl -sf -o /dev/null -D - --cacert "$RG_DATA/ca.pem" "$rg_url" | grep -qi '^server:'; then
  rg_answered="tiny_http (through the front)"
else
  rg_answered="the TLS front itself (api::SpoolAnswerer)"
fi

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk_requests=%d\nwrk_duration_us=%d\nwrk_p50_us=%d\nwrk_p99_us=%d\nwrk_errors=%d\nwrk_bad_status=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# run SERVER URL CONNS: one wrk run; appends "rps p50 p99 errors" to $WORK/SERVER-CONNS.
run() {
  local server=$1 url=$2 c=$3 t out
  t=$((c < 2 ? 1 : 2))
  out=$(wrk -t "$t" -c "$c" -d "${DURATION}s" --timeout 5s -s "$WORK/report.lua" "$url")
  local req dur p50 p99 err bad
  req=$(field wrk_requests <<<"$out")
  dur=$(field wrk_duration_us <<<"$out")
  p50=$(field wrk_p50_us <<<"$out")
  p99=$(field wrk_p99_us <<<"$out")
  err=$(field wrk_errors <<<"$out")
  bad=$(field wrk_bad_status <<<"$out")
  local rps
  rps=$(awk -v r="$req" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  echo "$rps $p50 $p99 $((err + bad))" >>"$WORK/$server-$c"
  printf '  %-8s c=%-3s %8s req/s  p50 %7s ms  p99 %7s ms  errors %s\n' \
    "$server" "$c" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$((err + bad))" >&2
}

echo "== $ROUNDS round(s) of ${DURATION}s per server and connection count" >&2
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    if [ $((round % 2)) = 1 ]; then
      run replgate "$rg_url" "$c"
      run nginx "$ng_url" "$c"
    else
      run nginx "$ng_url" "$c"
      run replgate "$rg_url" "$c"
    fi
  done
done

# median COLUMN FILE
median() { awk -v k="$1" '{ print $k }' "$2" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
total_errors() { awk '{ s += $4 } END { print s + 0 }' "$1"; }

table=$WORK/table.md
{
  echo "| connections | wrk threads | replgate req/s | p50 ms | p99 ms | nginx req/s | p50 ms | p99 ms | replgate / nginx | budget ≥ 100% |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for c in $CONNS; do
    r_rps=$(median 1 "$WORK/replgate-$c")
    n_rps=$(median 1 "$WORK/nginx-$c")
    ratio=$(awk -v a="$r_rps" -v b="$n_rps" 'BEGIN { printf "%.0f%%", 100 * a / b }')
    note=$(verdict "$r_rps" "$n_rps" ge)
    errs=$(($(total_errors "$WORK/replgate-$c") + $(total_errors "$WORK/nginx-$c")))
    [ "$errs" -gt 0 ] && note="$note ($errs errors)"
    echo "| $c | $((c < 2 ? 1 : 2)) | $r_rps | $(ms "$(median 2 "$WORK/replgate-$c")") | $(ms "$(median 3 "$WORK/replgate-$c")") | $n_rps | $(ms "$(median 2 "$WORK/nginx-$c")") | $(ms "$(median 3 "$WORK/nginx-$c")") | $ratio | $note |"
  done
  echo
  echo "Median of $ROUNDS run(s) of ${DURATION} s each, alternating which server goes first."
  echo "Body: ${#rg_body} bytes of status.json. nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'),"
  echo "worker_processes $NGINX_WORKERS ($ng_workers workers), keepalive_requests unlimited, access_log off."
  echo "replgate on defaults (4 api workers); polls answered by $rg_answered."
  echo "wrk and both servers share the $(nproc) cores."
} >"$table"
record "Polling" "$table"
