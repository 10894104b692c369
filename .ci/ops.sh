#!/usr/bin/env bash
# Operations checks, run by .ci/run after the tests (and by hand: `bash .ci/ops.sh`):
#   1. the systemd unit: `systemd-analyze verify` and an exposure-score ceiling;
#   2. the Debian package: built, inspected, installed with dpkg, run, purged;
#   3. the unit under a real systemd (a booted systemd-nspawn container); a machine that
#      cannot boot one fails this step;
#   4. cross builds for the ARM targets, each started under qemu-user until /api/health
#      answers, then stopped with SIGTERM (exit 0 required); the musl one must be static;
#   5. the unit tests on armv7 (32-bit) under qemu-arm.
# Needs root and a Debian machine (it installs packages). Prints step timings and sizes.
# `--tools-only` stops after the installs; `--cross-builds-only` only compiles what 4 and 5
# run (.ci/run starts that in the background, niced, while the tests mostly wait);
# `--after-cross-builds` does everything else. With no argument it does all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# The quick CI profile (Cargo.toml); release-profile sizes are in docs/operations.md.
PROFILE=ci-cross
# The cross builds have their own target directory: cargo locks a build directory while it
# compiles, and .ci/run's tests and release builds must not wait for a background build.
CROSS_TARGET_DIR="${CROSS_TARGET_DIR:-target/cross}"
PHASE="${1:-all}"
case "$PHASE" in
all | --tools-only | --cross-builds-only | --after-cross-builds) ;;
*) echo "usage: $0 [--tools-only | --cross-builds-only | --after-cross-builds]" >&2; exit 2 ;;
esac
TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)
# `systemd-analyze security` overall exposure of the unit may not rise above this.
MAX_EXPOSURE=1.1
SMOKE_PASSWORD=ops-smoke-password

work="$(mktemp -d)"
installed_by_us=""
nspawn_pid=""
nspawn_mounts=()
timings=()
sizes=()

cleanup() {
    set +e
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid"
        wait "$nspawn_pid" 2>/dev/null
    fi
    for ((i = ${#nspawn_mounts[@]} - 1; i >= 0; i--)); do
        umount "${nspawn_mounts[$i]}" 2>/dev/null
    done
    if [ -n "$installed_by_us" ]; then
        dpkg --purge replgate >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "FAILED: $*" >&2
    exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# timed NAME COMMAND...: runs a step and records its wall-clock time.
timed() {
    local name="$1" start
    shift
    echo
    echo "== $name"
    start="$(now)"
    "$@"
    timings+=("$(printf '%-54s %7s s' "$name" "$(elapsed "$start")")")
}

version="$(awk '/^\[/ { in_pkg = ($0 == "[package]") } in_pkg && /^version *=/ {
    gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml)"

# ---------------------------------------------------------------------------------------
install_tools() {
    local want=() pkg
    for pkg in gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross \
        libc6-dev-armhf-cross binutils curl groff-base systemd systemd-container; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || want+=("$pkg")
    done
    # .cargo/config.toml's runners are qemu-user's `qemu-aarch64` and `qemu-arm`; a machine
    # may have only qemu-user-static's `*-static` binaries (which qemu-user does not
    # replace), so qemu-user is installed whenever those two names are missing.
    command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || want+=(qemu-user)
    if [ ${#want[@]} -gt 0 ]; then
        echo "installing: ${want[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
    fi
    local q
    for q in qemu-aarch64 qemu-arm; do
        command -v "$q" >/dev/null || fail "$q is still missing (package qemu-user)"
    done
    local t
    for t in "${TARGETS[@]}"; do
        rustup target list --installed | grep -qx "$t" || rustup target add "$t" ||
            fail "rust target $t could not be added (rustup target add $t)"
    done
}

# ---------------------------------------------------------------------------------------
check_shell_and_config() {
    local s key
    for s in packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm; do
        sh -n "$s" || fail "$s: shell syntax"
    done
    bash -n packaging/build-deb.sh
    # Every key of the configuration reference appears in the packaged config.
    # shellcheck disable=SC2016 # the backquotes are literal Markdown
    sed -n 's/^| `\([a-z_]*\)` |.*/\1/p' docs/configuration.md >"$work/keys"
    [ -s "$work/keys" ] || fail "no keys found in docs/configuration.md"
    # `#key = default`, or `# key = example` for a key whose default depends on the
    # machine (name): the uncommenting check below skips the second form.
    while read -r key; do
        grep -Eq "^#? ?$key = " packaging/replgate.toml ||
            fail "packaging/replgate.toml does not mention $key"
    done <"$work/keys"
    grep -q '^\[\[storage\]\]\|^#\[\[storage\]\]' packaging/replgate.toml ||
        fail "packaging/replgate.toml does not mention [[storage]]"
    grep -qx 'data_dir = "/var/lib/replgate"' packaging/replgate.toml ||
        fail "packaging/replgate.toml must set data_dir = \"/var/lib/replgate\""
    # Both cross routes know every target CI builds.
    for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl; do
        grep -qx "\[target.$t\]" cross.toml || fail "cross.toml lacks [target.$t]"
        grep -qx "\[target.$t\]" .cargo/config.toml || fail ".cargo/config.toml lacks [target.$t]"
    done
    echo "maintainer scripts parse; the packaged config names every documented key;" \
        "cross.toml and .cargo/config.toml name the three targets"
}

# ---------------------------------------------------------------------------------------
build_deb() {
    # The shipped profile: .ci/run's README and binary-size steps built it already, so
    # this costs no build there (the quick profile is for the cross builds under qemu).
    deb="$(packaging/build-deb.sh --profile release --out "$work/deb" | tail -n 1)"
    echo "built $deb"
}

inspect_deb() {
    local arch contents control f
    arch="$(dpkg --print-architecture)"
    [ "$(basename "$deb")" = "replgate_${version}_${arch}.deb" ] || fail "deb name $deb"
    dpkg-deb -I "$deb"
    dpkg-deb -c "$deb"
    [ "$(dpkg-deb -f "$deb" Package)" = replgate ] || fail "Package field"
    [ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || fail "Version is not $version"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "Architecture is not $arch"
    contents="$(dpkg-deb -c "$deb")"
    for f in \
        '-rwxr-xr-x root/root .* ./usr/bin/replgate$' \
        '-rw-r--r-- root/root .* ./lib/systemd/system/replgate.service$' \
        '-rw-r--r-- root/root .* ./etc/replgate/replgate.toml$' \
        '-rw-r--r-- root/root .* ./usr/share/doc/replgate/README.md$' \
        '-rw-r--r-- root/root .* ./usr/share/doc/replgate/operations.md$' \
        '-rw-r--r-- root/root .* ./usr/share/doc/replgate/configuration.md$' \
        '-rw-r--r-- root/root .* ./usr/share/doc/replgate/ctl.md$' \
        '-rw-r--r-- root/root .* ./usr/share/man/man1/replgate.1.gz$' \
        '-rw-r--r-- root/root .* ./usr/share/doc/replgate/copyright$' \
        '-rw-r--r-- root/root .* ./usr/share/doc/replgate/changelog.gz$'; do
        grep -Eq -- "$f" <<<"$contents" || fail "deb lacks $f"
    done
    control="$(dpkg-deb --ctrl-tarfile "$deb" | tar -tvf -)"
    for f in postinst prerm postrm; do
        grep -Eq -- "^-rwxr-xr-x .* \./$f$" <<<"$control" || fail "deb lacks an executable $f"
    done
    grep -Eq -- " \./conffiles$" <<<"$control" || fail "deb lacks conffiles"
    [ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/replgate/replgate.toml ] ||
        fail "conffiles must list exactly /etc/replgate/replgate.toml"
    echo "expected files, modes, conffile and maintainer scripts are present"
}

install_deb() {
    if dpkg-query -W -f='${Status}' replgate 2>/dev/null | grep -q ' installed$'; then
        fail "a replgate package is already installed here; ops.sh installs and purges its" \
            "own build, so remove that one first (dpkg --purge replgate)"
    fi
    installed_by_us=yes
    dpkg -i "$deb"
    getent passwd replgate >/dev/null || fail "postinst did not create the replgate user"
    getent group replgate >/dev/null || fail "postinst did not create the replgate group"
    [ "$(stat -c '%a %U %G' /var/lib/replgate)" = "700 replgate replgate" ] ||
        fail "/var/lib/replgate is $(stat -c '%a %U %G' /var/lib/replgate)"
    cmp systemd/replgate.service /lib/systemd/system/replgate.service
    cmp packaging/replgate.toml /etc/replgate/replgate.toml
    local out
    # The manual page renders without warnings.
    gzip -dc /usr/share/man/man1/replgate.1.gz | groff -man -Tutf8 -ww 2>&1 >/dev/null |
        { ! grep . ; } || fail "groff warns about replgate.1"
    out="$(/usr/bin/replgate --version)"
    echo "$out"
    [ "$out" = "replgate $version (commit $(git rev-parse --short=12 HEAD))" ] ||
        fail "installed --version says '$out'"
    # As the service user: the config must be readable by the daemon, not only by root.
    runuser -u replgate -- /usr/bin/replgate check-config --config /etc/replgate/replgate.toml \
        >"$work/config.out"
    grep -q '^data_dir = "/var/lib/replgate"  # file /etc/replgate/replgate.toml$' "$work/config.out" ||
        fail "check-config output"
    # The commented defaults are the real defaults: uncommenting every key changes nothing.
    sed -e 's/^#\([a-z_]* = \)/\1/' -e 's/^#\(\[\[storage\]\]\)/\1/' \
        /etc/replgate/replgate.toml >"$work/uncommented.toml"
    /usr/bin/replgate check-config --config "$work/uncommented.toml" >"$work/uncommented.out"
    # Values only: the `# source` comments differ (default against file) by design.
    diff -u <(sed 's/  # .*$//' "$work/config.out") <(sed 's/  # .*$//' "$work/uncommented.out") ||
        fail "a commented value in replgate.toml differs from the built-in default"
    echo "check-config accepts the packaged config; its commented values are the defaults"
}

check_unit() {
    local out score
    # The installed unit (identical to systemd/replgate.service) with its binary in place.
    out="$(systemd-analyze verify /lib/systemd/system/replgate.service 2>&1)" ||
        fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
    echo "systemd-analyze verify: clean"
    out="$(systemd-analyze security --offline=true --no-pager \
        /lib/systemd/system/replgate.service 2>&1)"
    grep -v '^✓' <<<"$out"
    score="$(sed -n 's/.*Overall exposure level for replgate.service: \([0-9.]*\).*/\1/p' <<<"$out")"
    [ -n "$score" ] || fail "no exposure score in systemd-analyze security output"
    awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
        fail "exposure $score is above $MAX_EXPOSURE"
    echo "exposure $score (ceiling $MAX_EXPOSURE)"
}

# ---------------------------------------------------------------------------------------
# Boots this machine's own root file system (the package is installed) read-only under a
# tmpfs overlay in systemd-nspawn with a private network, then starts, probes, stops and
# purges replgate there. Fails, with the container's log, where none can be booted.
in_container() { nsenter -t "$leader" -a "$@"; }

boot_container() {
    local base="$work/ns" i state
    mkdir -p "$base/up" "$base/root"
    if ! mount -t tmpfs -o size=1g tmpfs "$base/up" 2>/dev/null; then
        return 1
    fi
    nspawn_mounts+=("$base/up")
    mkdir -p "$base/up/upper" "$base/up/work"
    mount -t overlay overlay \
        -o "lowerdir=/,upperdir=$base/up/upper,workdir=$base/up/work" "$base/root" 2>/dev/null ||
        return 1
    nspawn_mounts+=("$base/root")
    systemd-nspawn -q -D "$base/root" -b --register=no --keep-unit --link-journal=no \
        --private-network -M replgate-ops >"$work/nspawn.log" 2>&1 </dev/null &
    nspawn_pid=$!
    for i in $(seq 120); do
        leader="$(pgrep -P "$nspawn_pid" 2>/dev/null | head -n 1 || true)"
        if [ -n "$leader" ]; then
            state="$(in_container systemctl is-system-running 2>/dev/null || true)"
            case "$state" in running | degraded) return 0 ;; esac
        fi
        kill -0 "$nspawn_pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

stop_container() {
    in_container systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 60); do
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$nspawn_pid" 2>/dev/null && kill -TERM "$nspawn_pid"
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
    for ((i = ${#nspawn_mounts[@]} - 1; i >= 0; i--)); do
        umount "${nspawn_mounts[$i]}"
    done
    nspawn_mounts=()
    rmdir /run/systemd/nspawn/propagate/replgate-ops 2>/dev/null || true
}

run_under_systemd() {
    # A machine that cannot boot the container fails the check: the unit has then only been
    # checked offline, which is not what this step promises (install_tools installs
    # systemd-container; the script needs root and a kernel that allows the overlay).
    if ! command -v systemd-nspawn >/dev/null || ! boot_container; then
        echo "could not boot a systemd-nspawn container here. Container log:" >&2
        sed 's/^/  /' "$work/nspawn.log" >&2 2>/dev/null || true
        [ -z "$nspawn_pid" ] || stop_container
        fail "the unit under a real systemd: no container booted (the unit was only" \
            "checked offline)"
    fi
    local pw token status score
    in_container systemctl start replgate.service ||
        { in_container journalctl -u replgate --no-pager; fail "replgate.service did not start"; }
    in_container systemctl is-active --quiet replgate.service || fail "replgate.service is not active"
    in_container curl -sS --noproxy '*' --cacert /var/lib/replgate/ca.pem \
        https://127.0.0.1:8443/api/health | grep -q '"status":"ok"' || fail "health under systemd"
    pw="$(in_container cat /var/lib/replgate/admin-password)"
    token="$(in_container curl -sS --noproxy '*' --cacert /var/lib/replgate/ca.pem \
        https://127.0.0.1:8443/api/login -d "{\"username\":\"root\",\"password\":\"$pw\"}")"
    grep -q '"privilege":"superuser"' <<<"$token" || fail "login under systemd: $token"
    score="$(in_container systemd-analyze security --no-pager replgate.service |
        sed -n 's/.*Overall exposure level for replgate.service: \([0-9.]*\).*/\1/p')"
    echo "exposure of the loaded unit: $score"
    awk -v s="${score:-99}" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
        fail "exposure of the loaded unit is ${score:-unknown}, above $MAX_EXPOSURE"
    in_container systemctl stop replgate.service
    status="$(in_container systemctl show -p Result -p ExecMainStatus --value replgate.service |
        tr '\n' ' ')"
    [ "$status" = "success 0 " ] || fail "stop under systemd: Result, ExecMainStatus = $status"
    in_container journalctl -u replgate --no-pager -o cat
    # Purge inside the container (prerm, postrm with a running systemd).
    in_container systemctl start replgate.service
    in_container dpkg --purge replgate >/dev/null
    in_container systemctl is-active --quiet replgate.service && fail "purge left the daemon running"
    in_container test ! -e /var/lib/replgate || fail "purge left /var/lib/replgate"
    echo "under systemd: started (Type=notify), served, stopped with status 0, purged"
    stop_container
}

# ---------------------------------------------------------------------------------------
# smoke LABEL COMMAND...: `COMMAND serve` on loopback port 0 with a scratch data dir; waits
# for /api/health through curl with the daemon's CA, then SIGTERM; requires exit 0.
smoke() {
    local label="$1" dir pid port="" rc=0 start
    shift
    dir="$(mktemp -d "$work/smoke.XXXXXX")"
    start="$(now)"
    # Created first: the loop below may read it before the child has opened it.
    : >"$dir/log"
    REPLGATE_DATA_DIR="$dir/data" REPLGATE_API_LISTEN=127.0.0.1:0 \
        REPLGATE_TUNNEL_LISTEN=127.0.0.1:0 REPLGATE_ADMIN_PASSWORD="$SMOKE_PASSWORD" \
        "$@" serve >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1200); do
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log"; fail "$label exited during start"; }
        port="$(sed -n 's|.* serving: api https://127\.0\.0\.1:\([0-9]*\) .*|\1|p' "$dir/log")"
        if [ -n "$port" ] && curl -sS --noproxy '*' --max-time 10 --cacert "$dir/data/ca.pem" \
            "https://127.0.0.1:$port/api/health" 2>/dev/null | grep -q '"status":"ok"'; then
            break
        fi
        port=""
        sleep 0.1
    done
    [ -n "$port" ] || { kill -KILL "$pid"; cat "$dir/log"; fail "$label never answered /api/health"; }
    echo "$label: /api/health answered after $(elapsed "$start") s"
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    [ "$rc" = 0 ] || { cat "$dir/log"; fail "$label exited $rc after SIGTERM"; }
    echo "$label: exit 0 after SIGTERM"
}

cross_build() {
    CARGO_TARGET_DIR="$CROSS_TARGET_DIR" cargo build --locked --profile "$PROFILE" --target "$1"
}

cross_run() {
    local t="$1" bin="$CROSS_TARGET_DIR/$1/$PROFILE/replgate"
    file_type "$bin"
    if [ "$t" = aarch64-unknown-linux-musl ]; then
        readelf -d "$bin" | grep -q 'There is no dynamic section' ||
            fail "$bin has a dynamic section: $(readelf -d "$bin" | head -n 5)"
        readelf -l "$bin" | grep -q INTERP && fail "$bin asks for a program interpreter"
        echo "$bin: no dynamic section, no interpreter (fully static)"
    fi
    # `cargo run` execs the runner from .cargo/config.toml, so this checks it too.
    smoke "$t" env CARGO_TARGET_DIR="$CROSS_TARGET_DIR" \
        cargo run -q --locked --profile "$PROFILE" --target "$t" --
}

file_type() {
    readelf -h "$1" | sed -n 's/^ *\(Class\|Machine\): *//p' | tr '\n' ' '
    echo "($1)"
}

record_size() {
    sizes+=("$(printf '%-34s %10d bytes %6.2f MiB' "$1" "$(stat -c %s "$2")" \
        "$(awk -v s="$(stat -c %s "$2")" 'BEGIN { print s / 1048576 }')")")
}

# ---------------------------------------------------------------------------------------
# The descriptor-exhaustion and streaming-memory tests re-run their own test binary as a
# child process, which only a binfmt_misc qemu registration could start; they run natively
# in `cargo test`. qemu-user does not pass the TCP_CONGESTION and TCP_INFO socket options
# through to the host kernel, so the two tests of those run natively only too.
ARMV7=armv7-unknown-linux-gnueabihf
armv7_unit_tests() {
    CARGO_TARGET_DIR="$CROSS_TARGET_DIR" cargo test -q --locked --lib --target "$ARMV7" "$@" -- \
        --skip accept_loop_survives_running_out_of_descriptors \
        --skip streams_of_256_mib_each_way_pass_with_bounded_memory \
        --skip congestion_control_is_set_per_socket_inherited_on_accept_and_refused_when_unknown \
        --skip tcp_figures_read_a_live_connection
}

print_tables() {
    echo
    if [ ${#sizes[@]} -gt 0 ]; then
        echo "== binary sizes (profile $PROFILE: stripped, no LTO; release sizes: docs/operations.md)"
        printf '%s\n' "${sizes[@]}"
        echo
    fi
    echo "== step timings ($PHASE)"
    printf '%s\n' "${timings[@]}"
    printf '%-54s %7s s\n' "total" "$(elapsed "$started")"
}

started="$(now)"
timed "tools (apt, rustup targets)" install_tools
# .ci/run installs this script's tools beside its lint step, before the tests need the CPU.
[ "$PHASE" != --tools-only ] || exit 0
if [ "$PHASE" != --after-cross-builds ]; then
    for t in "${TARGETS[@]}"; do
        timed "cross build $t" cross_build "$t"
    done
    # The unit tests on the 32-bit target (usize is 32 bits there), compiled here and run
    # below under the runner from .cargo/config.toml. The integration tests would need
    # binfmt_misc to start the daemon.
    timed "unit tests $ARMV7 (build)" armv7_unit_tests --no-run
fi
[ "$PHASE" != --cross-builds-only ] || { print_tables; exit 0; }
timed "maintainer scripts and packaged config" check_shell_and_config
timed "build .deb (release, $(dpkg --print-architecture))" build_deb
timed "inspect .deb (dpkg-deb -I, -c)" inspect_deb
timed "install .deb (dpkg -i), run, check-config" install_deb
timed "systemd unit (verify, security)" check_unit
timed "unit under systemd (nspawn boot)" run_under_systemd
timed "native smoke run" smoke "installed /usr/bin/replgate" /usr/bin/replgate
timed "purge .deb" dpkg --purge replgate
installed_by_us=""
[ ! -e /var/lib/replgate ] || fail "purge left /var/lib/replgate"
for t in "${TARGETS[@]}"; do
    record_size "$t" "$CROSS_TARGET_DIR/$t/$PROFILE/replgate"
    timed "qemu run $t" cross_run "$t"
done
timed "unit tests $ARMV7 (qemu-arm)" armv7_unit_tests
print_tables
