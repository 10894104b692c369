//! `linkemu`: an emulated WAN link between two network namespaces (bench/wan.sh). It
//! creates both namespaces with a TUN device each, forwards between them with a rate,
//! a one-way delay, random loss and a tail-drop buffer, and deletes them when it ends.
//!
//! Built with `cargo build --release --example linkemu`; run it without arguments for the
//! usage. Needs root and `ip` (iproute2).

// Benchmark scaffolding: the stats file is written with std::fs, not the daemon's fsx.
#![allow(clippy::disallowed_methods)]

mod link;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use link::{Link, Params, Setup};

const USAGE: &str = "\
usage: linkemu [options] [link parameters]

namespaces (created at the start, deleted at the end; they must not exist):
  --ns-a NAME --ns-b NAME   default rg-wan-a and rg-wan-b
  --addr-a IP --addr-b IP   the devices' addresses, one /24; default 10.77.0.1, 10.77.0.2
  --mtu N                   default 1500
  --congestion NAME         net.ipv4.tcp_congestion_control in both (default: the host's)
  --no-realtime             forward at normal priority (default: SCHED_FIFO, so that the
                            link keeps its timing on a busy machine)

link parameters (also the control file's grammar):
  --rate BITS               bits per second, k/M/G suffixes; 0 = unlimited (default)
  --delay-ms MS             one-way delay (default 0)
  --loss PCT                random loss in each direction; --loss-ab, --loss-ba for one
  --buffer-ms MS            tail-drop buffer as time at the rate (default 50)
  --cut on|off              drop everything (default off)

control:
  --control FILE            on SIGHUP, read link parameters from FILE and apply them
  --stats FILE              rewrite FILE with the counters every 100 ms and at the end
  --seed N                  the loss generator's seed (default: from the clock)
  --die-with-parent         end (cleanly) when the parent process ends

signals: SIGUSR1 cuts the link, SIGUSR2 restores it, SIGHUP reloads the control file,
SIGTERM/SIGINT end it. Prints `ready` when forwarding, and the counters (`key=value`:
ab_* for A to B, ba_* for B to A) when it ends.
";

struct Args {
    setup: Setup,
    params: Params,
    control: Option<PathBuf>,
    stats: Option<PathBuf>,
    seed: u64,
    die_with_parent: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        setup: Setup {
            realtime: true,
            ..Setup::new("rg-wan-a", "rg-wan-b")
        },
        params: Params::default(),
        control: None,
        stats: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        die_with_parent: false,
    };
    let mut link_words = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--die-with-parent" => {
                a.die_with_parent = true;
                continue;
            }
            "--no-realtime" => {
                a.setup.realtime = false;
                continue;
            }
            _ => {}
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--ns-a" => a.setup.ns[0] = value()?,
            "--ns-b" => a.setup.ns[1] = value()?,
            "--addr-a" => a.setup.addr[0] = addr(flag, &value()?)?,
            "--addr-b" => a.setup.addr[1] = addr(flag, &value()?)?,
            "--mtu" => {
                let v = value()?;
                a.setup.mtu = v
                    .parse()
                    .ok()
                    .filter(|m| (576..=65_535).contains(m))
                    .ok_or_else(|| format!("--mtu takes 576–65535, not {v:?}"))?;
            }
            "--congestion" => a.setup.congestion = Some(value()?),
            "--control" => a.control = Some(PathBuf::from(value()?)),
            "--stats" => a.stats = Some(PathBuf::from(value()?)),
            "--seed" => {
                let v = value()?;
                a.seed = v
                    .parse()
                    .map_err(|_| format!("--seed takes a number, not {v:?}"))?;
            }
            _ => {
                link_words.push(flag.clone());
                link_words.push(value()?);
            }
        }
    }
    a.params.parse_into(&link_words)?;
    Ok(a)
}

fn addr(flag: &str, s: &str) -> Result<std::net::Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{flag} takes an IPv4 address, not {s:?}"))
}

/// Blocks the signals we handle in every thread (the forwarders inherit the mask), so
/// that the main thread takes them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset; the calls only fill it
    // and set this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut sig = 0;
    // SAFETY: sigwait on a valid set, writing the signal number into a local.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Writes the counters to `path` through a temporary and a rename, so a reader never sees
/// half a file.
fn write_stats(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        eprintln!("linkemu: write {}: {e}", path.display());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return;
    }
    let a = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("linkemu: {e} (try --help)");
            std::process::exit(2);
        }
    };
    let signals = block_signals();
    if a.die_with_parent {
        // SAFETY: prctl with integer arguments: SIGTERM to us when the parent ends.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } == 1 {
            return; // the parent is already gone
        }
    }
    let link = match Link::start(&a.setup, &a.params, a.seed) {
        Ok(link) => std::sync::Arc::new(link),
        Err(e) => {
            eprintln!("linkemu: {e}");
            std::process::exit(1);
        }
    };
    if let Some(path) = a.stats.clone() {
        let link = link.clone();
        std::thread::spawn(move || loop {
            write_stats(&path, &link.stats().render());
            std::thread::sleep(Duration::from_millis(100));
        });
    }
    println!(
        "ready ns-a={} ns-b={} {}",
        a.setup.ns[0],
        a.setup.ns[1],
        a.params.describe()
    );
    let _ = std::io::stdout().flush();
    loop {
        match wait_signal(&signals) {
            libc::SIGUSR1 => {
                link.set_cut(true);
                eprintln!("linkemu: link cut");
            }
            libc::SIGUSR2 => {
                link.set_cut(false);
                eprintln!("linkemu: link restored");
            }
            libc::SIGHUP => reload(&link, a.control.as_deref()),
            _ => break,
        }
    }
    let drops = link.device_drops();
    finish(&a, &link.stop(), drops);
}

fn finish(a: &Args, stats: &link::Stats, drops: std::io::Result<[u64; 2]>) {
    let mut text = stats.render();
    match drops {
        Ok([da, db]) => text.push_str(&format!("a_device_drops={da}\nb_device_drops={db}\n")),
        Err(e) => eprintln!("linkemu: device counters: {e}"),
    }
    if let Some(path) = &a.stats {
        write_stats(path, &text);
    }
    print!("{text}");
    let _ = std::io::stdout().flush();
}

fn reload(link: &Link, control: Option<&std::path::Path>) {
    let Some(path) = control else {
        eprintln!("linkemu: SIGHUP without --control: nothing to reload");
        return;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("linkemu: read {}: {e}", path.display());
            return;
        }
    };
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    let mut params = link.params();
    match params.parse_into(&words) {
        Ok(()) => {
            link.set_params(&params);
            eprintln!("linkemu: applied {}", params.describe());
        }
        Err(e) => eprintln!("linkemu: {}: {e}; parameters unchanged", path.display()),
    }
}
