# Step timing for the CI scripts: `step NAME COMMAND...` prints a heading, runs the
# command, and records its wall time; `steps_summary` prints every step's time and the
# total. Sourced by .ci/run (tests/it/ci.rs runs it on its own).
# shellcheck shell=bash

_steps=()
_steps_started=$(date +%s.%N)

_steps_elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME COMMAND...: runs COMMAND under a heading; its exit status is the step's. A
# failed step is recorded (and summarized) before the status goes back to the caller.
# COMMAND runs in a subshell with `set -e` in force (a function called as `f || x` would
# run with -e ignored), so a shell function's first failing command fails its step; its
# variable assignments stay in that subshell. Call it as a plain command, not inside `if`,
# `||` or `&&`: there bash ignores -e in everything the command runs.
step() {
  local name=$1 start rc
  shift
  echo "== $name"
  start=$(date +%s.%N)
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  _steps+=("$(printf '%-64s %8s s%s' "$name" "$(_steps_elapsed "$start")" \
    "$([ "$rc" -eq 0 ] || echo "  (failed: exit $rc)")")")
  echo "-- $name: $(_steps_elapsed "$start") s"
  return "$rc"
}

# steps_summary: every step's wall time so far, then the total since this file was sourced.
steps_summary() {
  echo "== step timings"
  printf '%s\n' "${_steps[@]}"
  printf '%-64s %8s s\n' "total" "$(_steps_elapsed "$_steps_started")"
  # A full disk fails tests in ways that look like other bugs: say how much was left.
  echo "== disk"
  df -h . "${TMPDIR:-/tmp}" 2>/dev/null || true
}
