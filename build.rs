//! Records the git commit the binary is built from as `REPLGATE_COMMIT`, for `--version`.
//! Outside a git checkout (a source tarball, a build container without git) it is the
//! `REPLGATE_COMMIT` environment variable when set, else `unknown`. Also packs the
//! binaries' relative relocations on glibc targets (below).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=REPLGATE_COMMIT");
    let commit = std::env::var("REPLGATE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Build again when HEAD moves: HEAD itself, the branch it names, packed refs.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    // Relative relocations packed (DT_RELR, glibc 2.36): about 120 KB of the 4 MB budget
    // on x86_64. The Debian package then depends on libc6 (>= 2.36) (packaging/
    // build-deb.sh). Debian 12's ARM cross linkers (binutils 2.40) ignore the flag and keep
    // RELA; the static musl build has no dynamic relocations to pack.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // Identical code folding: one copy of functions whose machine code came out the same
    // (monomorphizations over types of one layout, mostly): about 48 KB on x86_64, where
    // rustc links with its own LLD (Rust 1.90 and newer). Debian's ARM cross linkers are
    // GNU ld, which has no ICF. Rust promises no distinct function addresses, so folding
    // changes nothing a program may rely on.
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    }
    // No unwind tables in release builds, whose panics abort (Cargo.toml; Cargo gives
    // build scripts no sign of the profile's panic strategy but PROFILE): nothing unwinds, and
    // `-C force-unwind-tables=no` changes nothing under fat LTO, since the standard
    // library comes with its tables. A panic still prints its message and location, not
    // a backtrace (docs/decisions.md, "Unwind tables"). Debug builds and tests, whose panics
    // unwind, keep them. x86_64 only: LLD, checked against the budget by CI.
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && std::env::var("PROFILE").as_deref() == Ok("release")
    {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/link/no-unwind-tables.ld");
        println!("cargo:rerun-if-changed={script}");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
    }
    println!(
        "cargo:rustc-env=REPLGATE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
