#!/usr/bin/env bash
# Builds the Debian package of replgate with Debian's own tools (dpkg-deb), no extra crates.
#
#   packaging/build-deb.sh [--target TRIPLE] [--profile NAME] [--binary PATH] [--out DIR]
#
# Without --binary it runs `cargo build --locked --profile NAME [--target TRIPLE]`
# (profile `release` by default). The version comes from Cargo.toml; the architecture
# from the target triple, else from `dpkg --print-architecture`; the Maintainer field
# from DEB_MAINTAINER when set. Prints the .deb's path as the last line of output.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target=""
profile="release"
binary=""
out="$root/target/deb"

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --target) target="${2:?--target needs a triple}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-deb.sh: unexpected argument '$1'" >&2; usage ;;
    esac
done

# The `version` key of the [package] table.
version="$(awk '/^\[/ { in_pkg = ($0 == "[package]") } in_pkg && /^version *=/ {
    gsub(/.*= *"|".*/, ""); print; exit }' "$root/Cargo.toml")"
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }

case "$target" in
    "") arch="$(dpkg --print-architecture)" ;;
    x86_64-*) arch=amd64 ;;
    aarch64-*) arch=arm64 ;;
    armv7-*-gnueabihf|armv7-*-musleabihf) arch=armhf ;;
    i686-*|i586-*) arch=i386 ;;
    riscv64*) arch=riscv64 ;;
    *) echo "build-deb.sh: no Debian architecture known for $target" >&2; exit 1 ;;
esac

if [ -z "$binary" ]; then
    cargo_args=(build --locked --profile "$profile" --manifest-path "$root/Cargo.toml")
    [ -n "$target" ] && cargo_args+=(--target "$target")
    cargo "${cargo_args[@]}" >&2
    case "$profile" in dev|test) dir=debug ;; bench) dir=release ;; *) dir="$profile" ;; esac
    binary="$root/target/${target:+$target/}$dir/replgate"
fi
[ -x "$binary" ] || { echo "build-deb.sh: $binary is not an executable" >&2; exit 1; }

# A dynamically linked binary depends on the newest glibc symbol version it uses (packed
# relative relocations, GLIBC_ABI_DT_RELR, need 2.36: build.rs); a static one (musl)
# depends on nothing.
depends="adduser | passwd"
if readelf -l "$binary" | grep -q 'INTERP'; then
    glibc="$( (readelf -V "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//'
        if readelf -V "$binary" | grep -q 'GLIBC_ABI_DT_RELR'; then echo 2.36; fi) |
        sort -uV | tail -n 1)"
    depends="libc6 (>= ${glibc:-2.17}), $depends"
fi

maintainer="${DEB_MAINTAINER:-replgate maintainers <maintainers@replgate.invalid>}"

# Reproducible archives: dpkg-deb clamps file times to SOURCE_DATE_EPOCH, which defaults
# to the time of the last commit. The changelog's date uses it too.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/replgate"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
    "$pkg/etc/replgate" "$pkg/usr/share/doc/replgate" "$pkg/usr/share/man/man1"
install -m 0755 "$binary" "$pkg/usr/bin/replgate"
install -m 0644 "$root/systemd/replgate.service" "$pkg/lib/systemd/system/replgate.service"
install -m 0644 "$root/packaging/replgate.toml" "$pkg/etc/replgate/replgate.toml"
install -m 0644 "$root/README.md" "$root/docs/operations.md" "$root/docs/configuration.md" \
    "$root/docs/ctl.md" "$root/packaging/debian/copyright" "$pkg/usr/share/doc/replgate/"
gzip -9n <"$root/docs/replgate.1" >"$pkg/usr/share/man/man1/replgate.1.gz"
chmod 0644 "$pkg/usr/share/man/man1/replgate.1.gz"
# A native package's changelog (Debian policy 12.7); the project's history is in git.
{
    echo "replgate ($version) unstable; urgency=medium"
    echo
    echo "  * Built from the replgate source tree; see its git history for changes."
    echo
    echo " -- $maintainer  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$pkg/usr/share/doc/replgate/changelog.gz"
chmod 0644 "$pkg/usr/share/doc/replgate/changelog.gz"
install -m 0644 "$root/packaging/debian/conffiles" "$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$root/packaging/debian/$script" "$pkg/DEBIAN/$script"
done

installed_size="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" \
    -e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@DEPENDS@/$depends/" \
    -e "s|@MAINTAINER@|$(printf '%s' "$maintainer" | sed 's/[&|\\]/\\&/g')|" \
    "$root/packaging/debian/control.in" > "$pkg/DEBIAN/control"
chmod 0644 "$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/replgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
