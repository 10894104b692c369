#!/usr/bin/env bash
# Contract test: schemathesis (PyPI, pinned) generates requests from docs/openapi.yaml,
# valid and invalid ones, sends them to a real replgate daemon on loopback and fails on any
# answer the document does not allow (status, body schema, headers, content type, 405 with
# Allow, invalid input accepted, valid input refused, auth ignored). Bounded: a fixed number
# of examples per operation and a time budget. A missing tool fails; this script installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
# Examples per operation, and a bound on each run (seconds) in case the tool hangs.
EXAMPLES=${CONTRACT_EXAMPLES:-60}
BUDGET=${CONTRACT_BUDGET:-600}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
VENV=${CONTRACT_VENV:-$TARGET_DIR/contract-venv}

if ! "$VENV/bin/st" --version 2>/dev/null | grep -qF "$ST_VERSION"; then
  echo "== installing schemathesis $ST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
"$VENV/bin/st" --version | grep -qF "$ST_VERSION"
# .ci/run installs the tool beside its lint step and runs the test later.
[ -z "${CONTRACT_INSTALL_ONLY:-}" ] || exit 0

cargo build --locked -q --bin replgate
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
tunnel_port=$(free_port)
admin_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
env -i PATH="$PATH" RUST_LOG=info \
  REPLGATE_DATA_DIR="$work/data" \
  REPLGATE_API_LISTEN="127.0.0.1:$api_port" \
  REPLGATE_TUNNEL_LISTEN="127.0.0.1:$tunnel_port" \
  REPLGATE_ADMIN_PASSWORD="$admin_password" \
  REPLGATE_MAX_PENDING_PER_ADDRESS=1000 \
  "$TARGET_DIR/debug/replgate" serve >"$work/daemon.log" 2>&1 &
pid=$!
base="https://127.0.0.1:$api_port"
for _ in $(seq 1 300); do
  if [ -f "$work/data/ca.pem" ] && curl -sf --cacert "$work/data/ca.pem" "$base/api/health" >/dev/null; then
    break
  fi
  kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.log"; echo "contract: replgate exited"; exit 1; }
  sleep 0.1
done
ca="$work/data/ca.pem"

api() { # METHOD PATH TOKEN BODY -> body on stdout
  curl -sS --fail-with-body --cacert "$ca" -X "$1" "$base$2" \
    -H "Content-Type: application/json" ${3:+-H "AuthToken: $3"} ${4:+-d "$4"}
}
token_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["auth_token"])'; }
# The run's own superuser: generated requests may change or delete users, never this one
# by chance (a random name), and root stays as it was.
runner="contract-$(python3 -c 'import secrets; print(secrets.token_hex(6))')"
runner_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
root=$(api POST /api/login "" "{\"username\":\"root\",\"password\":\"$admin_password\"}" | token_of)
api POST /api/users "$root" "{\"name\":\"$runner\",\"password\":\"$runner_password\",\"privilege\":\"superuser\"}" >/dev/null
login() { api POST /api/login "" "{\"username\":\"$runner\",\"password\":\"$runner_password\"}" | token_of; }
# One session per run, taken now: the runs' own failed logins would soon throttle this
# address (429).
token_main=$(login)
token_users=$(login)
token_logout=$(login)
token_session=$(login)
# A real pending request, so that the spool operations read a file that exists.
command -v openssl >/dev/null || { echo "contract: openssl is needed (Debian package openssl)"; exit 1; }
csr=$(openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=contract \
  -keyout /dev/null 2>/dev/null)
filed=$(CSR="$csr" python3 -c 'import json,os; print(json.dumps({"system_uuid": "c0ffee00-0000-4000-8000-000000000001", "name": "contract-source", "host": "contract.example", "version": "0.0.1", "csr": os.environ["CSR"]}))')
CONTRACT_SPOOL_TOKEN=$(api POST /replication/v1/requests "" "$filed" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["poll"].rstrip("/").rsplit("/",1)[1])')
export CONTRACT_SPOOL_TOKEN

st_run() { # extra args...
  HYPOTHESIS_STORAGE_DIRECTORY="$work/hypothesis" timeout "$BUDGET" "$VENV/bin/st" --config-file .ci/schemathesis.toml run docs/openapi.yaml \
    --url "$base" --tls-verify "$ca" \
    --checks all --max-examples "$EXAMPLES" --seed 20261201 \
    --workers 1 --request-timeout 30 --output-truncate true --generation-database none \
    --no-color "$@"
}

status=0
# Everything but: POST /api/replication/target (it connects to whatever host or address a
# generated request names: no traffic leaves loopback from CI; tests/it covers it against
# a real target), the tunnel (another listener, mutual TLS; tests/it covers it), changes
# to named users (the stateful phase would find this run's own user in GET /api/users and
# change its password, ending the session), logout (it ends the session), as does the
# console's session path (its DELETE is a logout), and the CA rollover's phases (they
# replace the CA the runs' own TLS client trusts; tests/it/rollover.rs covers them, and its
# status runs on its own below). Those run on their own below.
echo "== schemathesis: every operation but asking a target, the tunnel, changing users, logout"
st_run -H "AuthToken: $token_main" \
  --exclude-path /api/replication/target --exclude-path-regex '^/tunnel/' \
  --exclude-path '/api/users/{name}' --exclude-path /api/logout \
  --exclude-path /api/session --exclude-path /api/ca/rollover || status=$?
echo "== schemathesis: the CA rollover's status (its phases are tests/it/rollover.rs's)"
# (Filters of different kinds select their union: exclude the POST rather than include GET.)
st_run -H "AuthToken: $token_main" --include-path /api/ca/rollover --exclude-method POST \
  || status=$?
echo "== schemathesis: changing and deleting users (generated names only, no stateful phase)"
st_run -H "AuthToken: $token_users" --include-path '/api/users/{name}' \
  --phases examples,coverage,fuzzing || status=$?
echo "== schemathesis: logout"
st_run -H "AuthToken: $token_logout" --include-path /api/logout || status=$?
echo "== schemathesis: the console's session (its logout ends the session)"
st_run -H "AuthToken: $token_session" --include-path /api/session || status=$?
if [ "$status" -ne 0 ]; then
  echo "---- replgate log (last 80 lines) ----"
  tail -n 80 "$work/daemon.log"
  echo "contract: schemathesis found answers docs/openapi.yaml does not allow"
fi
kill -0 "$pid" 2>/dev/null || { echo "contract: replgate died during the run"; status=1; }
exit "$status"
