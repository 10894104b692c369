//! `fleet`: the load generator behind bench/scale.sh (SPEC 21). It pairs thousands of
//! synthetic sources with one running target through an n-use pairing token, then makes
//! them behave as paired sources: heartbeat polls of `status.json`, idle transfer sessions
//! or hellos on the tunnel, renewals, and transfers, each from the source's own loopback
//! address and over a fresh TLS connection as a source's daemon makes them. Meanwhile it
//! samples the target (resident memory, threads, descriptors, CPU from /proc), probes its
//! admin API every second, and prints `key=value` lines. `watch` reads per-source rates
//! from a target's queue API instead (real source daemons). Never asserts timings.
//!
//! Built with `cargo build --release --example fleet`; run it without arguments for the
//! usage.

// Benchmark scaffolding: its fleet and series files are written with std::fs.
#![allow(clippy::disallowed_methods)]

mod net;
mod pair;
mod poll;
mod send;
mod stats;
mod watch;
mod xfer;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pair::{Admin, Fleet};
use poll::TunnelCall;
use stats::{jain, jain_windows, lock, percentile, proc_sample, Endpoint};

const USAGE: &str = "\
usage: fleet <command> [options]

commands:
  pair   --api HOST:PORT --ca CA.pem --password P --count N --fleet FILE
         [--threads T] [--storage-id ID]
         pair N synthetic sources through one N-use pairing token (sources already in
         FILE for this CA are kept; only the missing ones are paired)
  run    --api HOST:PORT --fleet FILE --duration S
         [--count N] [--heartbeat S] [--tunnel session|hello|none] [--renew]
         [--workers W] [--password P] [--pid PID] [--series FILE]
         [--transfers K] [--transfer-from I] [--file-mb M] [--files F] [--fs PATH]
         [--window S] [--files-out FILE] [--late-after S] [--one-address]
         [--weights W1,W2,...]
         N sources (default: all) poll at the heartbeat (default 60 s) with the tunnel
         call each heartbeat (default session); K sources (fleet indices from I, default
         after the pollers) send M MB files (F each, default until the end); with
         --password the admin API is probed every second; with --pid the target is
         sampled every second; with --fs PATH the storage's free space every 20 ms;
         --files-out lists every committed file (`uuid/name size sha256`); with
         --late-after the last sending source starts S seconds after the others;
         --one-address puts every source behind 127.1.0.1 (one NAT); --weights sets
         the sending sources' `share` in turn (needs --password) and reports each
         weight's mean rate against its share of the total (the late source left out)
  watch  --api HOST:PORT --ca CA.pem --password P --duration S
         [--pid PID] [--window S] [--late-uuid UUID --late-at-ms T] [--out FILE]
         [--until-idle]
         per-source rates from the target's queue every second; Jain's index per
         window; the time the late source took to reach its share

every command prints key=value lines; latencies are in milliseconds, rates in MB/s.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let opts = match Opts::parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fleet: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let result = match command.as_str() {
        "pair" => pair_cmd(&opts),
        "run" => run_cmd(&opts),
        "watch" => watch_cmd(&opts),
        other => Err(format!("unknown command {other}")),
    };
    if let Err(e) = result {
        eprintln!("fleet {command}: {e}");
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Opts {
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {flag}"))?;
            if matches!(name, "renew" | "until-idle" | "one-address") {
                o.flags.push(name.to_string());
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            o.values.insert(name.to_string(), value.clone());
        }
        Ok(o)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn need(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{name}: not a number: {v}"))
            })
            .transpose()
    }

    fn addr(&self, name: &str) -> Result<SocketAddr, String> {
        let v = self.need(name)?;
        v.parse()
            .map_err(|_| format!("--{name}: not host:port: {v}"))
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn pair_cmd(o: &Opts) -> Result<(), String> {
    let api = o.addr("api")?;
    let ca_pem = read(o.need("ca")?)?;
    let count = o.number("count")?.ok_or("--count is required")? as usize;
    let path = PathBuf::from(o.need("fleet")?);
    let threads = o.number("threads")?.unwrap_or(8) as usize;
    let mut fleet = match Fleet::load(&path)? {
        Some(f) if f.ca_pem == ca_pem => f,
        _ => Fleet {
            ca_pem: ca_pem.clone(),
            tunnel: SocketAddr::from(([127, 0, 0, 1], 0)),
            sources: Vec::new(),
        },
    };
    let have = fleet.sources.len();
    println!("fleet_reused={}", have.min(count));
    println!("fleet_paired={}", count.saturating_sub(have));
    if have < count {
        let mut admin = Admin::login(&ca_pem, api, o.need("password")?)?;
        let mut extra = serde_json::json!({});
        if let Some(id) = o.number("storage-id")? {
            extra["storage_id"] = id.into();
        }
        let start = Instant::now();
        let mut tunnel = String::new();
        let mut times = Vec::new();
        // A token carries at most 10,000 uses (SPEC 13); larger fleets take several.
        let mut at = have;
        while at < count {
            let end = count.min(at + 10_000);
            let token = admin.pairing_token(end - at, &extra)?;
            let offset = start.elapsed().as_secs_f64();
            let mut paired = pair::pair_many(&ca_pem, api, &token, at..end, threads)?;
            fleet.sources.append(&mut paired.identities);
            times.extend(paired.times.iter().map(|t| t + offset));
            tunnel = paired.tunnel;
            at = end;
        }
        let took = start.elapsed().as_secs_f64();
        fleet.tunnel = tunnel
            .parse()
            .map_err(|_| format!("the target named tunnel {tunnel:?}, not an address"))?;
        fleet.save(&path)?;
        println!("fleet_pair_s={took:.1}");
        println!(
            "fleet_pair_per_s={:.1}",
            (count - have) as f64 / took.max(1e-9)
        );
        // The rate over the first and the last tenth: does pairing slow as systems grow?
        let tenth = (times.len() / 10).max(1);
        if times.len() >= 2 * tenth && tenth > 1 {
            let rate = |a: f64, b: f64| (tenth - 1) as f64 / (b - a).max(1e-9);
            let first = rate(times[0], times[tenth - 1]);
            let n = times.len();
            let last = rate(times[n - tenth], times[n - 1]);
            println!("fleet_pair_first_tenth_per_s={first:.1}");
            println!("fleet_pair_last_tenth_per_s={last:.1}");
        }
    }
    println!("fleet_sources={}", fleet.sources.len());
    println!("fleet_tunnel={}", fleet.tunnel);
    Ok(())
}

/// The admin API probe: every second `GET /api/health`, `GET /api/systems` (whole, and its
/// first page of 100), and `GET /api/replication/pending`, every 15 s `GET /api/metrics`,
/// with an admin token on one keep-alive connection, as the console, a monitoring script
/// or Prometheus would.
/// Seconds between two scrapes of `/api/metrics` by the probe.
const METRICS_EVERY: u64 = 15;

#[derive(Default)]
struct Probe {
    health: Endpoint,
    systems: Endpoint,
    systems_page: Endpoint,
    pending: Endpoint,
    metrics: Endpoint,
    systems_bytes: Mutex<usize>,
}

/// The page of `GET /api/systems` the probe reads beside the whole list.
const SYSTEMS_PAGE: &str = "/api/systems?start=0&count=100";

fn probe_loop(admin: &mut Admin, probe: &Probe, stop: &AtomicBool) {
    let mut next = Instant::now();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let calls = [
            ("/api/health", &probe.health),
            ("/api/systems", &probe.systems),
            (SYSTEMS_PAGE, &probe.systems_page),
            ("/api/replication/pending", &probe.pending),
            ("/api/metrics", &probe.metrics),
        ];
        // Metrics every 15 s, a usual scrape interval; the rest every second.
        let count = if round.is_multiple_of(METRICS_EVERY) {
            5
        } else {
            4
        };
        round += 1;
        for (path, e) in calls.into_iter().take(count) {
            let t = Instant::now();
            match admin.call("GET", path, None) {
                Ok(r) if r.status == 200 => {
                    e.record(t.elapsed());
                    if path == "/api/systems" {
                        *lock(&probe.systems_bytes) = r.body.len();
                    }
                }
                Ok(r) => e.refused(r.status, t.elapsed()),
                Err(err) => e.failed(false, err),
            }
        }
        next += Duration::from_secs(1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else {
            next = Instant::now();
        }
    }
}

/// One row of the per-second series.
#[derive(Clone, Copy, Default)]
struct Second {
    proc_: Option<stats::ProcSample>,
    calls: u64,
    sent: u64,
    free: Option<u64>,
}

fn run_cmd(o: &Opts) -> Result<(), String> {
    let api = o.addr("api")?;
    let mut fleet =
        Fleet::load(&PathBuf::from(o.need("fleet")?))?.ok_or("the fleet file does not exist")?;
    // Addresses are the run's, not the identity's: a cached fleet paired with another
    // layout runs with this one.
    let one = o.flag("one-address");
    for (i, s) in fleet.sources.iter_mut().enumerate() {
        // With --one-address every source is behind one address, as behind a NAT.
        s.addr = net::source_addr(if one { 0 } else { i });
    }
    let duration = Duration::from_secs(o.number("duration")?.ok_or("--duration is required")?);
    let transfers = o.number("transfers")?.unwrap_or(0) as usize;
    let count = o
        .number("count")?
        .map(|c| c as usize)
        .unwrap_or(fleet.sources.len().saturating_sub(transfers))
        .min(fleet.sources.len());
    let tunnel_call = match o.get("tunnel").unwrap_or("session") {
        "session" => TunnelCall::Session,
        "hello" => TunnelCall::Hello,
        "none" => TunnelCall::None,
        other => return Err(format!("--tunnel {other}: session, hello or none")),
    };
    let from = o
        .number("transfer-from")?
        .map(|v| v as usize)
        .unwrap_or(count);
    let plan = poll::Plan {
        heartbeat: Duration::from_secs(o.number("heartbeat")?.unwrap_or(60).max(1)),
        tunnel_call,
        renew: o.flag("renew"),
        workers: o.number("workers")?.unwrap_or(32) as usize,
        count,
        tunnel_below: if transfers > 0 { from } else { count },
    };
    if from + transfers > fleet.sources.len() {
        return Err(format!(
            "{transfers} transferring sources from index {from} need a fleet of {}, this one has {}",
            from + transfers,
            fleet.sources.len()
        ));
    }
    let xplan = xfer::Plan {
        sources: (from..from + transfers).collect(),
        file_bytes: o.number("file-mb")?.unwrap_or(64) * 1_000_000,
        files_per_source: o.number("files")?.map(|f| f as usize),
        run: format!("r{}", replgate::model::now()),
        client: "fleet".into(),
        late_after: o.number("late-after")?.map(Duration::from_secs),
    };
    let pid = o.number("pid")?.map(|p| p as u32);
    let fs = o.get("fs").map(PathBuf::from);
    let window = o.number("window")?.unwrap_or(60) as usize;
    let mut admin = match o.get("password") {
        Some(p) => Some(Admin::login(&fleet.ca_pem, api, p)?),
        None => None,
    };
    let weights: Vec<u64> = match o.get("weights") {
        Some(w) => w
            .split(',')
            .map(|v| v.parse().map_err(|_| format!("--weights {w}: numbers")))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    if !weights.is_empty() {
        let admin = admin.as_mut().ok_or("--weights needs --password")?;
        set_weights(admin, &fleet, &xplan.sources, &weights)?;
    }
    let measured = poll::Measured::default();
    let xmeasured = xfer::Measured::new(transfers);
    let probe = Probe::default();
    let stop = AtomicBool::new(false);
    let series: Mutex<Vec<Second>> = Mutex::new(Vec::new());
    let rates: Mutex<Vec<Vec<u64>>> = Mutex::new(Vec::new());
    let min_free: Mutex<Option<u64>> = Mutex::new(None);
    let load_start = loadavg();
    let start = Instant::now();
    eprintln!(
        "fleet: {count} sources polling every {} s (tunnel: {tunnel_call:?}{}), {transfers} sending, for {} s",
        plan.heartbeat.as_secs(),
        if plan.renew { ", renewals" } else { "" },
        duration.as_secs()
    );
    let result: Result<(), String> = std::thread::scope(|s| {
        let pollers =
            (count > 0).then(|| s.spawn(|| poll::run(&fleet, api, &plan, &measured, &stop)));
        let senders =
            (transfers > 0).then(|| s.spawn(|| xfer::run(&fleet, &xplan, &xmeasured, &stop)));
        if let Some(admin) = admin.as_mut() {
            let (probe, stop) = (&probe, &stop);
            s.spawn(move || probe_loop(admin, probe, stop));
        }
        if let Some(path) = fs.as_ref() {
            let (min_free, stop) = (&min_free, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, free)) = replgate::fsx::disk_space(path) {
                        let mut m = lock(min_free);
                        *m = Some(m.map_or(free, |v: u64| v.min(free)));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        // The reporter: one row a second until the duration ends (or every sender is done).
        let mut last_calls = 0;
        let mut last_sent: Vec<u64> = vec![0; transfers];
        let mut tick = Instant::now();
        while start.elapsed() < duration {
            tick += Duration::from_secs(1);
            if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let calls = measured.started.load(Ordering::Relaxed);
            let now_sent: Vec<u64> = xmeasured
                .sent
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect();
            let per: Vec<u64> = now_sent
                .iter()
                .zip(&last_sent)
                .map(|(a, b)| a - b)
                .collect();
            let row = Second {
                proc_: pid.and_then(proc_sample),
                calls: calls - last_calls,
                sent: per.iter().sum(),
                free: fs
                    .as_ref()
                    .and_then(|p| replgate::fsx::disk_space(p).ok().map(|(_, f)| f)),
            };
            print_row(lock(&series).len(), &row, &measured, transfers);
            lock(&series).push(row);
            lock(&rates).push(per);
            last_calls = calls;
            last_sent = now_sent;
            if transfers > 0
                && xplan.files_per_source.is_some()
                && xmeasured.finished.load(Ordering::Relaxed) == transfers
                && count == 0
            {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = pollers {
            h.join().map_err(|_| "the pollers panicked")??;
        }
        if let Some(h) = senders {
            h.join().map_err(|_| "the senders panicked")??;
        }
        Ok(())
    });
    result?;
    let elapsed = start.elapsed().as_secs_f64();
    println!("run_s={elapsed:.1}");
    println!("sources_polling={count}");
    println!("heartbeat_s={}", plan.heartbeat.as_secs());
    println!("load_start={load_start}");
    println!("load_end={}", loadavg());
    if count > 0 {
        print!("{}", measured.poll.report("poll"));
        print!("{}", measured.handshake.report("poll_handshake"));
        print!("{}", measured.tunnel.report("tunnel"));
    }
    if plan.renew {
        print!("{}", measured.renew.report("renew"));
        println!("renewed={}", measured.renewed.load(Ordering::Relaxed));
        println!("expired={}", measured.expired.load(Ordering::Relaxed));
    }
    let lags = {
        let mut v = lock(&measured.lag_ms).clone();
        v.sort_unstable();
        v
    };
    println!("lag_p99_ms={}", percentile(&lags, 0.99));
    println!("lag_max_ms={}", lags.last().copied().unwrap_or(0));
    let calls_total = measured.started.load(Ordering::Relaxed);
    println!("calls_per_s={:.1}", calls_total as f64 / elapsed.max(1e-9));
    if admin.is_some() {
        print!("{}", probe.health.report("api_health"));
        print!("{}", probe.systems.report("api_systems"));
        print!("{}", probe.systems_page.report("api_systems_page"));
        print!("{}", probe.pending.report("api_pending"));
        print!("{}", probe.metrics.report("api_metrics"));
        println!("api_systems_bytes={}", lock(&probe.systems_bytes));
    }
    let series = lock(&series).clone();
    report_proc(&series);
    if transfers > 0 {
        print!("{}", xmeasured.sessions.report("session"));
        println!("files={}", xmeasured.outcomes());
        if let Some(out) = o.get("files-out") {
            // One line per committed file: `<uuid>/<name> <size> <sha256>`, for checking
            // the copies on the target's storage.
            let text: String = lock(&xmeasured.files)
                .iter()
                .filter(|(_, f)| f.outcome == send::FileOutcome::Committed)
                .map(|(i, f)| {
                    format!(
                        "{}/{} {} {}\n",
                        fleet.sources[*i].uuid,
                        f.name,
                        f.size,
                        replgate::wire::hex::encode(&f.sha256)
                    )
                })
                .collect();
            std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))?;
        }
        let late = xplan
            .late_after
            .map(|d| (transfers as u64 - 1, d.as_secs() as usize));
        report_rates(&lock(&rates), window, late);
        if !weights.is_empty() {
            report_weights(&lock(&rates), &weights, late.map(|(k, _)| k as usize));
        }
        let total: u64 = series.iter().map(|r| r.sent).sum();
        println!("sent_mb={:.1}", total as f64 / 1e6);
    }
    if let Some(m) = *lock(&min_free) {
        println!("fs_min_free_mb={:.1}", m as f64 / 1e6);
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn print_row(sec: usize, row: &Second, measured: &poll::Measured, transfers: usize) {
    let mut line = format!("t={sec:>4} calls={:>4}", row.calls);
    if let Some(p) = row.proc_ {
        line.push_str(&format!(
            " rss_mb={:.1} threads={} fds={}",
            p.rss_kib as f64 * 1024.0 / 1e6,
            p.threads,
            p.fds
        ));
    }
    if transfers > 0 {
        line.push_str(&format!(" sent_mb_s={:.1}", row.sent as f64 / 1e6));
    }
    if let Some(f) = row.free {
        line.push_str(&format!(" free_mb={:.1}", f as f64 / 1e6));
    }
    let hs = measured.poll.handshake_failures.load(Ordering::Relaxed)
        + measured.tunnel.handshake_failures.load(Ordering::Relaxed);
    if hs > 0 {
        line.push_str(&format!(" hs_fail={hs}"));
    }
    eprintln!("{line}");
}

/// Resident memory, threads and descriptors of the target over the run: peak and mean;
/// its CPU use.
fn report_proc(series: &[Second]) {
    let samples: Vec<stats::ProcSample> = series.iter().filter_map(|r| r.proc_).collect();
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return;
    };
    let mb = |k: u64| k as f64 * 1024.0 / 1e6;
    let max = |f: fn(&stats::ProcSample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let mean = |f: fn(&stats::ProcSample) -> u64| {
        samples.iter().map(f).sum::<u64>() as f64 / samples.len() as f64
    };
    println!("target_rss_max_mb={:.1}", mb(max(|p| p.rss_kib)));
    println!(
        "target_rss_mean_mb={:.1}",
        mean(|p| p.rss_kib) * 1024.0 / 1e6
    );
    println!("target_rss_last_mb={:.1}", mb(last.rss_kib));
    println!("target_threads_max={}", max(|p| p.threads));
    println!("target_threads_mean={:.0}", mean(|p| p.threads));
    println!("target_fds_max={}", max(|p| p.fds));
    let ticks = last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64;
    let hz = 100.0; // USER_HZ on Linux
    let secs = (samples.len().max(2) - 1) as f64;
    println!("target_cpu_pct={:.0}", 100.0 * ticks / hz / secs);
}

/// Per-source rates (MB/s): spread, Jain's index over the run and per window (the late
/// source left out), and the time the late source took to reach its share.
fn report_rates(rates: &[Vec<u64>], window: usize, late: Option<(u64, usize)>) {
    let mut by_source: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for row in rates {
        for (k, &b) in row.iter().enumerate() {
            by_source.entry(k as u64).or_default().push(b as f64);
        }
    }
    let equal: BTreeMap<u64, Vec<f64>> = by_source
        .iter()
        .filter(|(k, _)| late.is_none_or(|(l, _)| l != **k))
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    report_fairness(&equal, window);
    if let Some((sid, from)) = late {
        print_time_to_share(&by_source, sid, from);
    }
}

/// Sets the `share` of the sending sources (fleet indices `sources`) to `weights` in turn.
fn set_weights(
    admin: &mut Admin,
    fleet: &Fleet,
    sources: &[usize],
    weights: &[u64],
) -> Result<(), String> {
    let systems = admin.call("GET", "/api/systems", None)?.json()?;
    let ids: BTreeMap<String, u64> = watch::sources(&systems)
        .into_iter()
        .map(|(id, uuid)| (uuid, id))
        .collect();
    for (k, i) in sources.iter().enumerate() {
        let uuid = &fleet.sources[*i].uuid;
        let sid = ids.get(uuid).ok_or(format!("no system row for {uuid}"))?;
        let w = weights[k % weights.len()];
        let r = admin.call(
            "PUT",
            &format!("/api/replication/source?sid={sid}"),
            Some(&serde_json::json!({ "share": w })),
        )?;
        if r.status != 200 {
            return Err(format!("share of {sid}: {} {}", r.status, r.text()));
        }
    }
    Ok(())
}

/// Per weight: the mean rate of its sources (MB/s) and its share of the total by weight,
/// over the seconds every source (the late one left out) was sending; and the worst
/// source's rate against its share (SPEC 21: within ±5 %).
fn report_weights(rates: &[Vec<u64>], weights: &[u64], late: Option<usize>) {
    let n = rates.first().map_or(0, Vec::len);
    let counted: Vec<usize> = (0..n).filter(|k| Some(*k) != late).collect();
    // The seconds from the first in which every counted source sent, to the last.
    let rows: Vec<&Vec<u64>> = rates
        .iter()
        .skip_while(|row| counted.iter().any(|k| row[*k] == 0))
        .collect();
    if rows.is_empty() || counted.is_empty() {
        println!("weights=none (never all sending)");
        return;
    }
    let mean = |k: usize| rows.iter().map(|r| r[k] as f64).sum::<f64>() / rows.len() as f64;
    let total: f64 = counted.iter().map(|k| mean(*k)).sum();
    let weight_sum: u64 = counted.iter().map(|k| weights[k % weights.len()]).sum();
    let mut by_weight: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut worst = 0.0f64;
    for k in &counted {
        let w = weights[k % weights.len()];
        let share = total * w as f64 / weight_sum as f64;
        let got = mean(*k);
        by_weight.entry(w).or_default().push(got);
        if share > 0.0 {
            worst = worst.max((got / share - 1.0).abs());
        }
    }
    let text: Vec<String> = by_weight
        .iter()
        .map(|(w, v)| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let share = total * *w as f64 / weight_sum as f64;
            format!(
                "{w}:{:.2}/{:.2}({:+.1}%)",
                m / 1e6,
                share / 1e6,
                (m / share - 1.0) * 100.0
            )
        })
        .collect();
    println!("weights_seconds={}", rows.len());
    println!("weight_rates={}", text.join(","));
    println!("weight_worst_source_pct={:.1}", worst * 100.0);
}

/// The seconds the late source took (from `from`) until its rate over 2 s first reached
/// 90 % of an equal share among the sources sending.
fn print_time_to_share(series: &BTreeMap<u64, Vec<f64>>, sid: u64, from: usize) {
    match stats::time_to_share(series, sid, from, 2, 0.9) {
        Some(s) => println!("late_to_share_s={s}"),
        None => println!("late_to_share_s=never"),
    }
}

/// Prints the spread of mean rates, and Jain's index over everything and per window.
fn report_fairness(series: &BTreeMap<u64, Vec<f64>>, window: usize) {
    let means: Vec<f64> = series
        .values()
        .map(|s| s.iter().sum::<f64>() / s.len().max(1) as f64 / 1e6)
        .collect();
    if means.is_empty() {
        return;
    }
    let mut sorted = means.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "sources_sending={}",
        means.iter().filter(|m| **m > 0.0).count()
    );
    println!("rate_min_mb_s={:.2}", sorted[0]);
    println!("rate_median_mb_s={:.2}", percentile(&sorted, 0.5));
    println!("rate_max_mb_s={:.2}", sorted[sorted.len() - 1]);
    println!("rate_total_mb_s={:.1}", means.iter().sum::<f64>());
    println!("jain_run={:.3}", jain(&means));
    let windows = jain_windows(series, window);
    let text: Vec<String> = windows.iter().map(|j| format!("{j:.3}")).collect();
    println!("jain_windows={}", text.join(","));
    println!(
        "jain_min={:.3}",
        windows.iter().copied().fold(f64::INFINITY, f64::min)
    );
}

fn watch_cmd(o: &Opts) -> Result<(), String> {
    let api = o.addr("api")?;
    let ca_pem = read(o.need("ca")?)?;
    let mut admin = Admin::login(&ca_pem, api, o.need("password")?)?;
    let duration = Duration::from_secs(o.number("duration")?.ok_or("--duration is required")?);
    let window = o.number("window")?.unwrap_or(60) as usize;
    let pid = o.number("pid")?.map(|p| p as u32);
    let until_idle = o.flag("until-idle");
    let mut w = watch::QueueWatch::default();
    let mut rows: Vec<(usize, u64, u64)> = Vec::new();
    let mut procs = Vec::new();
    let t0_ms = unix_ms();
    let start = Instant::now();
    let mut tick = start;
    let mut sec = 0usize;
    let mut idle_for = 0;
    let mut seen_any = false;
    let load_start = loadavg();
    while start.elapsed() < duration {
        tick += Duration::from_secs(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = admin.call("GET", "/api/replication/queue?count=1", None)?;
        if r.status != 200 {
            return Err(format!("queue: status {}: {}", r.status, r.text()));
        }
        let queue = r.json()?;
        let moved = w.step(&queue);
        let total: u64 = moved.values().sum();
        let active = queue["active"].as_array().map_or(0, Vec::len);
        for (sid, bytes) in &moved {
            rows.push((sec, *sid, *bytes));
        }
        let p = pid.and_then(proc_sample);
        if let Some(p) = p {
            procs.push(Second {
                proc_: Some(p),
                ..Default::default()
            });
        }
        eprintln!(
            "t={sec:>4} active={active:>3} sources={:>3} mb_s={:.1}{}",
            moved.values().filter(|b| **b > 0).count(),
            total as f64 / 1e6,
            p.map(|p| format!(
                " rss_mb={:.1} threads={} fds={}",
                p.rss_kib as f64 * 1024.0 / 1e6,
                p.threads,
                p.fds
            ))
            .unwrap_or_default()
        );
        seen_any |= active > 0;
        idle_for = if active == 0 { idle_for + 1 } else { 0 };
        sec += 1;
        if until_idle && seen_any && idle_for >= 3 {
            break;
        }
    }
    // Files that started and finished between two reads, from each source's received list.
    let systems = admin.call("GET", "/api/systems", None)?.json()?;
    for (sid, _) in watch::sources(&systems) {
        let r = admin.call("GET", &format!("/api/replication/received?sid={sid}"), None)?;
        if r.status == 200 {
            rows.extend(w.unseen(
                sid,
                &r.json()?,
                (t0_ms / 1000) as i64,
                sec.saturating_sub(1),
            ));
        }
    }
    if let Some(out) = o.get("out") {
        let text: String = rows
            .iter()
            .map(|(s, sid, b)| format!("{s} {sid} {b}\n"))
            .collect();
        std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))?;
    }
    println!("watch_s={sec}");
    println!("load_start={load_start}");
    println!("load_end={}", loadavg());
    report_proc(&procs);
    let series = watch::series(&rows);
    // The late source: its sid from the systems list, its start as a second of the series.
    let late = match (o.get("late-uuid"), o.number("late-at-ms")?) {
        (Some(uuid), Some(at)) => {
            let sid = watch::sources(&systems)
                .into_iter()
                .find(|(_, u)| u == uuid)
                .map(|(sid, _)| sid);
            let from = (at.saturating_sub(t0_ms) / 1000) as usize;
            println!("late_sid={}", sid.map_or("?".into(), |s| s.to_string()));
            sid.map(|s| (s, from))
        }
        _ => None,
    };
    // Fairness among the sources that sent, over the seconds when every one of them had
    // started (the late one excluded), so that start-up is not counted as unfairness.
    let steady: BTreeMap<u64, Vec<f64>> = series
        .iter()
        .filter(|(sid, _)| late.is_none_or(|(l, _)| l != **sid))
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let first_all = steady
        .values()
        .filter_map(|s| s.iter().position(|b| *b > 0.0))
        .max()
        .unwrap_or(0);
    let last_all = steady
        .values()
        .filter_map(|s| s.iter().rposition(|b| *b > 0.0))
        .min()
        .unwrap_or(0);
    println!("steady_from_s={first_all}");
    println!("steady_to_s={last_all}");
    let trimmed: BTreeMap<u64, Vec<f64>> = steady
        .iter()
        .map(|(k, v)| {
            let part = match v.get(first_all..=last_all) {
                Some(p) if last_all > first_all => p,
                _ => &v[..],
            };
            (*k, part.to_vec())
        })
        .collect();
    report_fairness(&trimmed, window);
    if let Some((sid, from)) = late {
        print_time_to_share(&series, sid, from);
    }
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
