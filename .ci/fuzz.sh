#!/usr/bin/env bash
# Coverage-guided fuzzing: build the fuzz targets (fuzz/, cargo fuzz + libFuzzer on a
# nightly toolchain) and run each for a bounded time from its committed seeds and
# regressions. A crash fails and leaves the input in fuzz/artifacts/<target>/ (commit it
# to fuzz/regressions/<target>/ with the fix, see docs/testing.md, "Coverage-guided
# fuzzing"). REPLGATE_FUZZ_SECONDS sets the time per target. Not part of .ci/run (it
# takes 8-9 minutes on a quiet 2-core machine, docs/decisions.md): `cargo test` runs the
# same checks over the seeds, the regressions and their mutants on stable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${REPLGATE_FUZZ_SECONDS:-20}
start=$SECONDS

rustup toolchain install nightly --profile minimal >/dev/null
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
echo "== fuzz: toolchain and cargo-fuzz ready after $((SECONDS - start)) s"

cargo +nightly fuzz build -O
echo "== fuzz: targets built after $((SECONDS - start)) s"

for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  # The last long run's minimized corpus (committed packed, read-only here).
  rm -rf "target/minimized/$target"
  if [ -f "minimized/$target.corpus" ]; then
    python3 pack.py unpack "minimized/$target.corpus" "target/minimized/$target"
  fi
  # tunnel_requests runs a real tunnel server in the process: its connection threads end
  # just after each input (the check waits for the count of open connections, not for
  # the threads' last instructions), and LeakSanitizer's check after an input counts a
  # thread still exiting as a leak. Leaks are checked by every other target.
  extra=()
  if [ "$target" = tunnel_requests ]; then extra=(-detect_leaks=0); fi
  echo "== fuzz $target (${seconds} s)"
  # The seeds are read, new inputs go to corpus/ (not committed).
  log="corpus/$target.log"
  if ! cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" \
    $(test -d "regressions/$target" && echo "regressions/$target") \
    $(test -d "target/minimized/$target" && echo "target/minimized/$target") -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "FAILED: fuzz target $target (the input is in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || true
done
rm -rf /dev/shm/replgate-fuzz-api-* 2>/dev/null || true
echo "== fuzz: done after $((SECONDS - start)) s"
