#!/usr/bin/env bash
# Runs every ```sh block of README.md as written, in order, in one bash session from the
# repository's root, and fails when a command fails or when a `# → TEXT` comment is not
# in the output of the command just above it. A block right after a line
# `<!-- readme: not run by .ci/readme.sh; REASON -->` is skipped (the reason says who runs
# it instead). The blocks start their daemons on the default ports 8443/8444 and 9443/9444,
# so nothing else may hold those; they stop them themselves, and this script kills what a
# failing block left running.
set -euo pipefail
cd "$(dirname "$0")/.."

script="$(mktemp)"
# What the blocks leave in the checkout (all in .gitignore).
leftovers=(demo demo-src demo-tgt demo-new demo-ctl-token demo.log demo-new.log src.log tgt.log)
trap 'rm -rf "$script" "${leftovers[@]}"' EXIT

python3 - README.md >"$script" <<'EOF'
import shlex, sys

lines = open(sys.argv[1], encoding="utf-8").read().split("\n")
blocks, skip, i = [], False, 0
while i < len(lines):
    line = lines[i]
    if line.startswith("<!-- readme: not run"):
        skip = True
    elif line.strip() == "```sh":
        body = []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if not skip:
            blocks.append(body)
        skip = False
    i += 1

out = ["set -euo pipefail",
       "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
       "fail() { echo \"README.md: $*\" >&2; exit 1; }"]
for n, body in enumerate(blocks, 1):
    out.append(f"echo '== README block {n}'")
    commands, j = [], 0
    while j < len(body):
        line = body[j]
        if line.startswith("# → "):
            if not commands:
                sys.exit(f"block {n}: an expectation before any command: {line}")
            commands[-1][1].append(line[len("# → "):])
        elif line.strip() and not line.lstrip().startswith("#"):
            cmd = [line]
            while cmd[-1].endswith("\\") and j + 1 < len(body):
                j += 1
                cmd.append(body[j])
            commands.append(("\n".join(cmd), []))
        j += 1
    for cmd, wants in commands:
        if not wants:
            out.append(f"echo '$ '{shlex.quote(cmd)}")
            out.append(cmd)
            continue
        out.append(f"echo '$ '{shlex.quote(cmd)}")
        out.append(f"__out=$( {{ {cmd}\n}} 2>&1 ) || fail 'command failed:' {shlex.quote(cmd)} \"$__out\"")
        out.append('printf "%s\\n" "$__out"')
        for w in wants:
            out.append(f"grep -qF -- {shlex.quote(w)} <<<\"$__out\" || "
                       f"fail 'expected' {shlex.quote(repr(w))} 'from' {shlex.quote(cmd)}")
print("\n".join(out))
EOF

timeout "${README_BUDGET:-1200}" bash "$script"
echo "every README block ran as written"

# The first set-up command, which the block above it cannot run as written (it serves
# until stopped): `cargo run --release -- serve` in the checkout, on embedded defaults,
# must answer /api/health on 8443 and exit 0 on SIGTERM. `cargo run` execs the binary, so
# the job's pid is the daemon's.
echo "== README: cargo run --release -- serve (embedded defaults, no config file)"
[ ! -e replgate-data ] || { echo "README.md: ./replgate-data exists already" >&2; exit 1; }
leftovers+=(replgate-data serve.log)
cargo run --release --locked -- serve >serve.log 2>&1 &
serve_pid=$!
for _ in $(seq 600); do
  kill -0 "$serve_pid" 2>/dev/null || { cat serve.log; echo "README.md: serve exited" >&2; exit 1; }
  curl -sf --cacert replgate-data/ca.pem https://127.0.0.1:8443/api/health 2>/dev/null |
    grep -q '"status":"ok"' && break
  sleep 0.5
done
curl -sf --cacert replgate-data/ca.pem https://127.0.0.1:8443/api/health >/dev/null ||
  { cat serve.log; kill "$serve_pid"; echo "README.md: serve never answered /api/health" >&2; exit 1; }
kill -TERM "$serve_pid"
serve_rc=0
wait "$serve_pid" || serve_rc=$?
[ "$serve_rc" = 0 ] || { cat serve.log; echo "README.md: serve exited $serve_rc after SIGTERM" >&2; exit 1; }
echo "cargo run --release -- serve: served /api/health on embedded defaults, exit 0 on SIGTERM"
