//! The polling fleet: every synthetic source behaves as a paired source's daemon does when
//! it has nothing to send. Each heartbeat (shortened by up to 20 % at random, as the
//! poller's jitter does) it polls its `status.json` on the API listener, and opens its
//! idle transfer session on the tunnel (what a source's replicator does every heartbeat;
//! or a `GET /tunnel/v1/hello`), each on a fresh TLS connection from the source's own
//! loopback address; with renewals on, it renews its certificate over the tunnel at a
//! point between 60 and 75 % of its lifetime and proves the new one with a hello.
//!
//! One scheduler thread holds a timer heap of every source's next calls and hands due
//! calls to a fixed pool of workers, so thousands of sources cost a heap entry each, not
//! a thread. The lag between a call's due time and its start is recorded: when it grows,
//! the generator (not the target) is the bottleneck.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use serde_json::json;

use super::net::{self, CallError};
use super::pair::Fleet;
use super::send;
use super::stats::{lock, Endpoint};

/// What each source does on the tunnel every heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelCall {
    /// An idle transfer session (`Ready`, `Finish`, `Bye`): a source's replicator.
    Session,
    /// `GET /tunnel/v1/hello`.
    Hello,
    None,
}

pub struct Plan {
    pub heartbeat: Duration,
    pub tunnel_call: TunnelCall,
    pub renew: bool,
    pub workers: usize,
    /// Sources `0..count` of the fleet take part.
    pub count: usize,
    /// Only sources below this make the tunnel call (the ones above are sending, and a
    /// source's replicator opens no idle session while it has transfers).
    pub tunnel_below: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Poll,
    Tunnel,
    Renew,
}

/// What the fleet's calls measured.
#[derive(Default)]
pub struct Measured {
    pub poll: Endpoint,
    pub tunnel: Endpoint,
    pub renew: Endpoint,
    /// Connect plus TLS handshake of every poll.
    pub handshake: Endpoint,
    /// Due time to start, per call (ms).
    pub lag_ms: Mutex<Vec<u32>>,
    /// Calls started so far (all kinds), for the per-second series.
    pub started: AtomicU64,
    pub renewed: AtomicU64,
    pub expired: AtomicU64,
}

struct Source {
    addr: std::net::Ipv4Addr,
    poll: String,
    uuid: String,
    tunnel: Mutex<Arc<ClientConfig>>,
}

struct Queue {
    jobs: Mutex<VecDeque<(Instant, usize, Kind)>>,
    ready: Condvar,
}

/// Runs the fleet until `stop` is set. Returns when every worker has finished its call.
pub fn run(
    fleet: &Fleet,
    api: SocketAddr,
    plan: &Plan,
    measured: &Measured,
    stop: &AtomicBool,
) -> Result<(), String> {
    let api_config = net::source_config(&fleet.ca_pem, None)?;
    let mut sources = Vec::with_capacity(plan.count);
    let mut renew_at = Vec::new();
    let now_unix = replgate::model::now();
    let start = Instant::now();
    for (i, id) in fleet.sources.iter().take(plan.count).enumerate() {
        sources.push(Source {
            addr: id.addr,
            poll: id.poll.clone(),
            uuid: id.uuid.clone(),
            tunnel: Mutex::new(fleet.tunnel_config(i)?),
        });
        if plan.renew {
            match renew_point(&id.cert_pem, now_unix) {
                Some(wait) => renew_at.push((start + wait, i)),
                None => {
                    measured.expired.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    let mut heap = BinaryHeap::new();
    for i in 0..sources.len() {
        // A fleet that has run for a while: each source's calls fall anywhere in its period.
        let at = |u: f64| start + plan.heartbeat.mul_f64(u);
        heap.push(Reverse((at(replgate::rand::unit()), i, Kind::Poll)));
        if plan.tunnel_call != TunnelCall::None && i < plan.tunnel_below {
            heap.push(Reverse((at(replgate::rand::unit()), i, Kind::Tunnel)));
        }
    }
    for (at, i) in renew_at {
        heap.push(Reverse((at, i, Kind::Renew)));
    }
    let queue = Queue {
        jobs: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    };
    let renewed_at: Mutex<Vec<(Instant, usize)>> = Mutex::new(Vec::new());
    let ctx = Ctx {
        sources: &sources,
        api,
        api_config: &api_config,
        tunnel: fleet.tunnel,
        ca_pem: &fleet.ca_pem,
        plan,
        measured,
        renewed_at: &renewed_at,
    };
    std::thread::scope(|s| {
        for w in 0..plan.workers.max(1) {
            let (queue, ctx) = (&queue, &ctx);
            std::thread::Builder::new()
                .name(format!("fleet-{w}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || worker(queue, ctx, stop))
                .map(|_| ())
                .unwrap_or_else(|e| eprintln!("fleet: worker {w}: {e}"));
        }
        while !stop.load(Ordering::Relaxed) {
            for (at, i) in lock(&renewed_at).drain(..) {
                heap.push(Reverse((at, i, Kind::Renew)));
            }
            let Some(Reverse((due, i, kind))) = heap.peek().copied() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(50)));
                continue;
            }
            heap.pop();
            lock(&queue.jobs).push_back((due, i, kind));
            queue.ready.notify_one();
            let next = match kind {
                Kind::Poll | Kind::Tunnel => {
                    let jitter = 1.0 - 0.2 * replgate::rand::unit();
                    Some(due + plan.heartbeat.mul_f64(jitter))
                }
                Kind::Renew => None,
            };
            if let Some(next) = next {
                heap.push(Reverse((next, i, kind)));
            }
        }
        queue.ready.notify_all();
    });
    Ok(())
}

/// When a certificate reaches its renewal point (60 to 75 % of its lifetime, at random),
/// from now; None if it has ended.
fn renew_point(cert_pem: &str, now: i64) -> Option<Duration> {
    let der = replgate::ca::cert_pem_to_der(cert_pem).ok()?;
    let info = replgate::ca::cert_info(&der).ok()?;
    if info.not_after <= now {
        return None;
    }
    let life = (info.not_after - info.not_before).max(1) as f64;
    let at = info.not_before as f64 + life * (0.60 + 0.15 * replgate::rand::unit());
    Some(Duration::from_secs_f64((at - now as f64).max(0.0)))
}

struct Ctx<'a> {
    sources: &'a [Source],
    api: SocketAddr,
    api_config: &'a Arc<ClientConfig>,
    tunnel: SocketAddr,
    ca_pem: &'a str,
    plan: &'a Plan,
    measured: &'a Measured,
    renewed_at: &'a Mutex<Vec<(Instant, usize)>>,
}

fn worker(queue: &Queue, ctx: &Ctx<'_>, stop: &AtomicBool) {
    loop {
        let job = {
            let mut jobs = lock(&queue.jobs);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(j) = jobs.pop_front() {
                    break j;
                }
                jobs = queue
                    .ready
                    .wait_timeout(jobs, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let (due, i, kind) = job;
        let lag = due.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        lock(&ctx.measured.lag_ms).push(lag);
        ctx.measured.started.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Poll => poll(ctx, i),
            Kind::Tunnel => tunnel(ctx, i),
            Kind::Renew => renew(ctx, i),
        }
    }
}

fn failed(e: &Endpoint, err: CallError) {
    let handshake = matches!(err, CallError::Handshake(_));
    e.failed(handshake, err.to_string());
}

fn poll(ctx: &Ctx<'_>, i: usize) {
    let s = &ctx.sources[i];
    let path = format!("{}status.json", s.poll);
    let e = &ctx.measured.poll;
    match net::call_once(
        ctx.api_config,
        Some(s.addr),
        ctx.api,
        "GET",
        &path,
        &[],
        None,
    ) {
        Ok(t) => {
            ctx.measured.handshake.record(t.handshake);
            match t.response.status {
                200 => e.record(t.total),
                status => e.refused(status, t.total),
            }
        }
        Err(err) => failed(e, err),
    }
}

fn tunnel(ctx: &Ctx<'_>, i: usize) {
    let s = &ctx.sources[i];
    let config = lock(&s.tunnel).clone();
    let e = &ctx.measured.tunnel;
    let start = Instant::now();
    match ctx.plan.tunnel_call {
        TunnelCall::Hello => {
            match net::call_once(
                &config,
                Some(s.addr),
                ctx.tunnel,
                "GET",
                "/tunnel/v1/hello",
                &[],
                None,
            ) {
                Ok(t) if t.response.status == 200 => e.record(t.total),
                Ok(t) => e.refused(t.response.status, t.total),
                Err(err) => failed(e, err),
            }
        }
        TunnelCall::Session => {
            let peer = send::Peer {
                config: &config,
                from: Some(s.addr),
                tunnel: ctx.tunnel,
            };
            let progress = AtomicU64::new(0);
            let never = AtomicBool::new(false);
            // The whole idle session: connect, handshake, `Ready`, `Finish`, `Bye`.
            match send::session(&peer, &mut || None, &progress, &never) {
                Ok(_) => e.record(start.elapsed()),
                Err((send::SessionError::Refused { status, .. }, _)) => {
                    e.refused(status, start.elapsed())
                }
                Err((send::SessionError::Handshake(m), _)) => e.failed(true, m),
                Err((other, _)) => e.failed(false, other.to_string()),
            }
        }
        TunnelCall::None => {}
    }
}

/// Renews source `i`'s certificate over the tunnel (a new key and CSR, `POST
/// /tunnel/v1/renew` with the current certificate), then proves the new one with a hello
/// and schedules its own renewal.
fn renew(ctx: &Ctx<'_>, i: usize) {
    let s = &ctx.sources[i];
    let e = &ctx.measured.renew;
    let start = Instant::now();
    let (key_pem, csr) = match replgate::ca::generate_client_key_and_csr(&s.uuid) {
        Ok(k) => k,
        Err(err) => return e.failed(false, format!("key: {err}")),
    };
    let config = lock(&s.tunnel).clone();
    let body = json!({ "csr": csr }).to_string();
    let answer = match net::call_once(
        &config,
        Some(s.addr),
        ctx.tunnel,
        "POST",
        "/tunnel/v1/renew",
        &[],
        Some(body.as_bytes()),
    ) {
        Ok(t) if t.response.status == 200 => t.response,
        Ok(t) => return e.refused(t.response.status, t.total),
        Err(err) => return failed(e, err),
    };
    let cert_pem = match answer
        .json()
        .map(|v| v["certificate"].as_str().map(String::from))
    {
        Ok(Some(c)) => c,
        _ => return e.failed(false, "renewal answer without a certificate".into()),
    };
    let new_config = match net::source_config(ctx.ca_pem, Some((&cert_pem, &key_pem))) {
        Ok(c) => c,
        Err(err) => return e.failed(false, err),
    };
    match net::call_once(
        &new_config,
        Some(s.addr),
        ctx.tunnel,
        "GET",
        "/tunnel/v1/hello",
        &[],
        None,
    ) {
        Ok(t) if t.response.status == 200 => {}
        Ok(t) => return e.refused(t.response.status, start.elapsed()),
        Err(err) => return failed(e, err),
    }
    *lock(&s.tunnel) = new_config;
    e.record(start.elapsed());
    ctx.measured.renewed.fetch_add(1, Ordering::Relaxed);
    if let Some(wait) = renew_point(&cert_pem, replgate::model::now()) {
        lock(ctx.renewed_at).push((Instant::now() + wait, i));
    }
}
