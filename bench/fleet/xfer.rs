//! Transferring sources of the fleet: each runs sessions back to back on its own thread
//! (one session at a time), offering synthetic files of one size until it has sent its
//! quota of files or the run stops. A session refused (no slot for this source now, or
//! the listener full) is retried as a source's replicator retries: after 1 s, doubling up
//! to 60 s, reset by a session that ran.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::pair::Fleet;
use super::send::{self, FileOutcome, FileSpec, SentFile};
use super::stats::{lock, Endpoint};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A session refused for want of a slot (429) or ended to give another source its turn
/// asks again after this long, as a source daemon does (the target's `Retry-After`).
const BUSY_RETRY: Duration = Duration::from_secs(2);

pub struct Plan {
    /// Fleet indices of the sources that send.
    pub sources: Vec<usize>,
    pub file_bytes: u64,
    /// Files each source sends before it stops; None: until the run stops.
    pub files_per_source: Option<usize>,
    /// Names files `<client>/<run>-<n>.bin`, so that no run resumes another's partials.
    pub run: String,
    pub client: String,
    /// The last source starts this long after the others (the time a starting source
    /// takes to reach its share).
    pub late_after: Option<Duration>,
}

/// What the transferring sources did.
pub struct Measured {
    /// Content bytes sent so far, per transferring source (index into `Plan::sources`).
    pub sent: Vec<AtomicU64>,
    /// Session opens: time from connect to the target's `Ready`, refusals by status.
    pub sessions: Endpoint,
    pub files: Mutex<Vec<(usize, SentFile)>>,
    /// Sources whose last file is settled.
    pub finished: AtomicUsize,
}

impl Measured {
    pub fn new(n: usize) -> Measured {
        Measured {
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sessions: Endpoint::default(),
            files: Mutex::new(Vec::new()),
            finished: AtomicUsize::new(0),
        }
    }

    /// Files by outcome: committed, held, refused (by code), failed (by code), unknown.
    pub fn outcomes(&self) -> String {
        let files = lock(&self.files);
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for (_, f) in files.iter() {
            let k = match &f.outcome {
                FileOutcome::Committed => "committed".to_string(),
                FileOutcome::Held => "held".to_string(),
                FileOutcome::Refused { code, .. } => format!("refused-{}", send::code_name(*code)),
                FileOutcome::Failed { code, .. } => format!("failed-{}", send::code_name(*code)),
                FileOutcome::Unknown => "unsettled".to_string(),
            };
            *counts.entry(k).or_default() += 1;
        }
        counts
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs every transferring source until each sent its files or `stop` is set. All start
/// together (a barrier), so a race is a race.
pub fn run(
    fleet: &Fleet,
    plan: &Plan,
    measured: &Measured,
    stop: &AtomicBool,
) -> Result<(), String> {
    let configs: Vec<Arc<ClientConfig>> = plan
        .sources
        .iter()
        .map(|&i| fleet.tunnel_config(i))
        .collect::<Result<_, _>>()?;
    let barrier = Barrier::new(plan.sources.len());
    let version = replgate::model::now().saturating_mul(1_000_000_000);
    std::thread::scope(|s| {
        for (k, &i) in plan.sources.iter().enumerate() {
            let (configs, barrier) = (&configs, &barrier);
            let spawned = std::thread::Builder::new()
                .name(format!("xfer-{i}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || {
                    barrier.wait();
                    if let Some(wait) = plan.late_after.filter(|_| k + 1 == plan.sources.len()) {
                        let until = Instant::now() + wait;
                        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    let peer = send::Peer {
                        config: &configs[k],
                        from: Some(fleet.sources[i].addr),
                        tunnel: fleet.tunnel,
                    };
                    source_loop(&peer, k, i, plan, version, measured, stop);
                    measured.finished.fetch_add(1, Ordering::Relaxed);
                });
            if let Err(e) = spawned {
                eprintln!("fleet: transfer thread {i}: {e}");
            }
        }
    });
    Ok(())
}

fn source_loop(
    peer: &send::Peer<'_>,
    k: usize,
    i: usize,
    plan: &Plan,
    version: i64,
    measured: &Measured,
    stop: &AtomicBool,
) {
    let mut n = 0usize;
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) && plan.files_per_source.is_none_or(|max| n < max) {
        let start = Instant::now();
        let mut next = || {
            if plan.files_per_source.is_some_and(|max| n >= max) {
                return None;
            }
            n += 1;
            Some(FileSpec {
                name: format!("{}/{}-{i}-{n}.bin", plan.client, plan.run),
                size: plan.file_bytes,
                version,
            })
        };
        let result = send::session(peer, &mut next, &measured.sent[k], stop);
        let (report, error) = match result {
            Ok(r) => (r, None),
            Err((e, r)) => {
                match &e {
                    send::SessionError::Refused { status, .. } => {
                        measured.sessions.refused(*status, start.elapsed())
                    }
                    send::SessionError::Handshake(m) => measured.sessions.failed(true, m.clone()),
                    send::SessionError::Stopped | send::SessionError::Yielded(_) => {}
                    other => measured.sessions.failed(false, other.to_string()),
                }
                (r, Some(e))
            }
        };
        if let Some(opened) = report.opened {
            measured.sessions.record(opened);
        }
        let sent_any = !report.files.is_empty();
        // Files a broken session offered but the target never settled are offered again.
        let unsettled = report
            .files
            .iter()
            .filter(|f| f.outcome == FileOutcome::Unknown)
            .count();
        if error.is_some() {
            n = n.saturating_sub(unsettled);
        }
        lock(&measured.files).extend(
            report
                .files
                .into_iter()
                .filter(|f| error.is_none() || f.outcome != FileOutcome::Unknown)
                .map(|f| (i, f)),
        );
        match error {
            None => failures = 0,
            Some(send::SessionError::Stopped) => return,
            Some(
                send::SessionError::Yielded(_) | send::SessionError::Refused { status: 429, .. },
            ) => {
                failures = 0;
                let until = Instant::now() + BUSY_RETRY;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Some(_) => {
                if sent_any {
                    failures = 0;
                }
                let wait = (FIRST_RETRY * 2u32.pow(failures.min(6))).min(MAX_RETRY);
                failures += 1;
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}
