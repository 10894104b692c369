//! The link emulator's engine: two network namespaces, a TUN device in each, and one
//! forwarder per direction that holds every packet for its serialization at the link's
//! rate, a one-way delay, random loss and a tail-drop buffer, counting what it does.
//!
//! Shared by the `linkemu` example (bench/linkemu/main.rs, driven by bench/wan.sh) and the
//! integration test tests/it/wan.rs, which includes this file by path. Linux only; needs
//! root (namespaces, TUN devices) and `ip` from iproute2.
//!
//! A direction is two threads: the reader takes each packet from one TUN device, decides
//! its fate (cut, loss, buffer) and its due time, and queues it; the writer releases each
//! at its due time into the other device. Due times never decrease, so the queue is a FIFO
//! and the writer only ever waits for its head: it sleeps until the head is due (within
//! 50 µs). On a busy machine a sleeping thread wakes late, so the forwarders can run
//! SCHED_FIFO (`Setup::realtime`), like a NIC's interrupt work: then, at a load of 11-13
//! on two cores, under 0.01 % of the packets leave over 1 ms late at 100 Mbit/s and
//! 0.4-1.4 % at 1 Gbit/s, against 6-50 % without. (Sleeping to 100 µs before and yielding
//! from there cost a whole core at 100 Mbit/s.)

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The TUN device's name in both namespaces (names are per namespace).
pub const DEVICE: &str = "rgwan0";

/// Packets above this are never read whole; a TUN device's MTU stays far below it.
const MAX_PACKET: usize = 65_536;

/// The writer releases a packet this close to its due time (ns): early by at most 50 µs,
/// nothing at the scale of a round trip, and it never has to spin.
const EARLY: u64 = 50_000;

/// How often idle threads look at the stop flag.
const IDLE: Duration = Duration::from_millis(100);

/// Where the namespaces are, their addresses, and what their TCP stacks use.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Namespace names, side A then side B (created here; they must not exist).
    pub ns: [String; 2],
    /// The TUN device's address in each namespace (one /24 holds both).
    pub addr: [Ipv4Addr; 2],
    pub mtu: u32,
    /// `net.ipv4.tcp_congestion_control` in both namespaces; None keeps the host's.
    pub congestion: Option<String>,
    /// Run the forwarders SCHED_FIFO (root only), so they wake on time on a busy host.
    pub realtime: bool,
}

impl Setup {
    pub fn new(ns_a: &str, ns_b: &str) -> Setup {
        Setup {
            ns: [ns_a.to_string(), ns_b.to_string()],
            addr: [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)],
            mtu: 1500,
            congestion: None,
            realtime: false,
        }
    }
}

/// What the link does to packets; changeable while it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Bits per second; 0 is unlimited (no serialization, no buffer).
    pub rate_bps: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// The chance that a packet is lost, per direction: `[A→B, B→A]`, 0.0–1.0.
    pub loss: [f64; 2],
    /// The tail-drop buffer in front of the link, as time at the rate (50 ms: the buffer
    /// holds 50 ms worth of bytes).
    pub buffer: Duration,
    /// The link is cut: every packet, queued or new, is dropped.
    pub cut: bool,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            rate_bps: 0,
            delay: Duration::ZERO,
            loss: [0.0; 2],
            buffer: Duration::from_millis(50),
            cut: false,
        }
    }
}

impl Params {
    /// `--rate BITS --delay-ms MS --loss PCT --loss-ab PCT --loss-ba PCT --buffer-ms MS
    /// --cut on|off`, in any order, over `self`: the grammar of the command line and of
    /// the control file. Rates take k, M, G (powers of 1000).
    pub fn parse_into(&mut self, words: &[String]) -> Result<(), String> {
        let mut it = words.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .as_str();
            match flag.as_str() {
                "--rate" => self.rate_bps = parse_rate(value)?,
                "--delay-ms" => self.delay = millis(flag, value)?,
                "--buffer-ms" => self.buffer = millis(flag, value)?,
                "--loss" => self.loss = [percent(flag, value)?; 2],
                "--loss-ab" => self.loss[0] = percent(flag, value)?,
                "--loss-ba" => self.loss[1] = percent(flag, value)?,
                "--cut" => {
                    self.cut = match value {
                        "on" | "1" => true,
                        "off" | "0" => false,
                        _ => return Err(format!("--cut takes on or off, not {value:?}")),
                    }
                }
                other => return Err(format!("unknown link parameter {other}")),
            }
        }
        Ok(())
    }

    /// One line, as the stats file and the log show it.
    pub fn describe(&self) -> String {
        format!(
            "rate_bps={} delay_us={} loss_ab={} loss_ba={} buffer_us={} cut={}",
            self.rate_bps,
            self.delay.as_micros(),
            self.loss[0],
            self.loss[1],
            self.buffer.as_micros(),
            u8::from(self.cut)
        )
    }
}

/// `100M` → 100,000,000; `1G`, `500k`, plain digits.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (digits, scale) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1_000.0),
        Some((i, 'm' | 'M')) => (&s[..i], 1_000_000.0),
        Some((i, 'g' | 'G')) => (&s[..i], 1_000_000_000.0),
        _ => (s, 1.0),
    };
    match digits.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * scale) as u64),
        _ => Err(format!("--rate takes bits per second like 100M, not {s:?}")),
    }
}

fn millis(flag: &str, s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=600_000.0).contains(&v) => Ok(Duration::from_secs_f64(v / 1000.0)),
        _ => Err(format!("{flag} takes milliseconds, not {s:?}")),
    }
}

fn percent(flag: &str, s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v / 100.0),
        _ => Err(format!("{flag} takes a percentage 0–100, not {s:?}")),
    }
}

/// The link's model for one direction, over plain numbers (nanoseconds since the start):
/// a queue drained at the rate, in front of a delay line.
#[derive(Debug, Default)]
pub struct Shaper {
    /// When the link will have serialized everything admitted so far.
    free_at: u64,
    /// The latest due time handed out (due times never go back, even when the delay
    /// shrinks at run time: the writer's queue is a FIFO).
    last_due: u64,
}

impl Shaper {
    /// The due time of a packet of `len` bytes arriving at `now`, or None when the buffer
    /// has no room for it (tail drop). The buffer holds `buffer_ns` worth of bytes at the
    /// rate, the packet being serialized included; an empty buffer always takes a packet.
    pub fn admit(
        &mut self,
        now: u64,
        len: usize,
        rate_bps: u64,
        buffer_ns: u64,
        delay_ns: u64,
    ) -> Option<u64> {
        let sent = if rate_bps == 0 {
            now
        } else {
            let start = self.free_at.max(now);
            let backlog = start - now;
            let serialize = (len as u128 * 8 * 1_000_000_000 / rate_bps as u128) as u64;
            if backlog > 0 && backlog + serialize > buffer_ns {
                return None;
            }
            self.free_at = start + serialize;
            self.free_at
        };
        let due = (sent + delay_ns).max(self.last_due);
        self.last_due = due;
        Some(due)
    }
}

/// The parameters as the forwarders read them, one atomic each.
struct Knobs {
    rate_bps: AtomicU64,
    delay_ns: AtomicU64,
    buffer_ns: AtomicU64,
    /// Loss thresholds per direction: a packet is lost when 32 random bits fall below.
    loss: [AtomicU64; 2],
    cut: AtomicBool,
    generation: AtomicU64,
}

impl Knobs {
    fn store(&self, p: &Params) {
        self.rate_bps.store(p.rate_bps, Ordering::Relaxed);
        self.delay_ns
            .store(p.delay.as_nanos() as u64, Ordering::Relaxed);
        self.buffer_ns
            .store(p.buffer.as_nanos() as u64, Ordering::Relaxed);
        for (knob, loss) in self.loss.iter().zip(p.loss) {
            knob.store((loss * 4_294_967_296.0) as u64, Ordering::Relaxed);
        }
        self.cut.store(p.cut, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// One direction's counters. Packets and bytes are whole IP packets as the TUN devices
/// carry them (headers included, no link layer).
#[derive(Default)]
#[repr(align(64))]
struct Counters {
    // The reader's.
    in_pkts: AtomicU64,
    in_bytes: AtomicU64,
    loss_pkts: AtomicU64,
    loss_bytes: AtomicU64,
    buffer_pkts: AtomicU64,
    buffer_bytes: AtomicU64,
    cut_pkts: AtomicU64,
    cut_bytes: AtomicU64,
    // The writer's (its own cache line).
    out: WriterCounters,
}

#[derive(Default)]
#[repr(align(64))]
struct WriterCounters {
    pkts: AtomicU64,
    bytes: AtomicU64,
    /// Dropped at release because the link was cut meanwhile.
    cut_pkts: AtomicU64,
    cut_bytes: AtomicU64,
    /// Released over 1 ms after their due time (the emulator fell behind).
    late_pkts: AtomicU64,
    max_late_ns: AtomicU64,
    write_errors: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Taken from the sending side's device: everything offered to the link.
    pub in_pkts: u64,
    pub in_bytes: u64,
    /// Delivered into the receiving side's device.
    pub fwd_pkts: u64,
    pub fwd_bytes: u64,
    pub loss_pkts: u64,
    pub loss_bytes: u64,
    pub buffer_pkts: u64,
    pub buffer_bytes: u64,
    /// Dropped because the link was cut (on arrival or while in flight).
    pub cut_pkts: u64,
    pub cut_bytes: u64,
    pub late_pkts: u64,
    pub max_late_us: u64,
    pub write_errors: u64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirStats {
            in_pkts: get(&self.in_pkts),
            in_bytes: get(&self.in_bytes),
            fwd_pkts: get(&self.out.pkts),
            fwd_bytes: get(&self.out.bytes),
            loss_pkts: get(&self.loss_pkts),
            loss_bytes: get(&self.loss_bytes),
            buffer_pkts: get(&self.buffer_pkts),
            buffer_bytes: get(&self.buffer_bytes),
            cut_pkts: get(&self.cut_pkts) + get(&self.out.cut_pkts),
            cut_bytes: get(&self.cut_bytes) + get(&self.out.cut_bytes),
            late_pkts: get(&self.out.late_pkts),
            max_late_us: get(&self.out.max_late_ns) / 1000,
            write_errors: get(&self.out.write_errors),
        }
    }
}

/// Both directions' counters and the parameters in force.
#[derive(Clone, Debug)]
pub struct Stats {
    /// `[A→B, B→A]`.
    pub dir: [DirStats; 2],
    pub params: Params,
    /// How many times parameters were applied (1 after the start).
    pub generation: u64,
    pub uptime: Duration,
}

impl Stats {
    /// `key=value` lines: `ab_*` for A→B, `ba_*` for B→A, then the parameters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (prefix, d) in ["ab", "ba"].iter().zip(&self.dir) {
            let rows = [
                ("in_pkts", d.in_pkts),
                ("in_bytes", d.in_bytes),
                ("fwd_pkts", d.fwd_pkts),
                ("fwd_bytes", d.fwd_bytes),
                ("loss_pkts", d.loss_pkts),
                ("loss_bytes", d.loss_bytes),
                ("buffer_pkts", d.buffer_pkts),
                ("buffer_bytes", d.buffer_bytes),
                ("cut_pkts", d.cut_pkts),
                ("cut_bytes", d.cut_bytes),
                ("late_pkts", d.late_pkts),
                ("max_late_us", d.max_late_us),
                ("write_errors", d.write_errors),
            ];
            for (key, value) in rows {
                out.push_str(&format!("{prefix}_{key}={value}\n"));
            }
        }
        for pair in self.params.describe().split(' ') {
            out.push_str(pair);
            out.push('\n');
        }
        out.push_str(&format!("generation={}\n", self.generation));
        out.push_str(&format!("uptime_ms={}\n", self.uptime.as_millis()));
        out
    }
}

struct Shared {
    knobs: Knobs,
    counters: [Counters; 2],
    stop: AtomicBool,
    epoch: Instant,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// A running link: the namespaces exist, the forwarders run. Dropping it stops the
/// forwarders and deletes the namespaces (processes still inside keep theirs alive
/// until they exit; their link is gone).
pub struct Link {
    setup: Setup,
    shared: Arc<Shared>,
    params: std::sync::Mutex<Params>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Namespaces this link created (and so deletes).
    created: std::sync::Mutex<Vec<String>>,
}

impl Link {
    /// Creates both namespaces and their devices and starts forwarding. On an error
    /// whatever was created is removed again.
    pub fn start(setup: &Setup, params: &Params, seed: u64) -> io::Result<Link> {
        let shared = Arc::new(Shared {
            knobs: Knobs {
                rate_bps: AtomicU64::new(0),
                delay_ns: AtomicU64::new(0),
                buffer_ns: AtomicU64::new(0),
                loss: [AtomicU64::new(0), AtomicU64::new(0)],
                cut: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            },
            counters: [Counters::default(), Counters::default()],
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        shared.knobs.store(params);
        let link = Link {
            setup: setup.clone(),
            shared,
            params: std::sync::Mutex::new(params.clone()),
            threads: std::sync::Mutex::new(Vec::new()),
            created: std::sync::Mutex::new(Vec::new()),
        };
        let fds = link.create_namespaces()?;
        link.spawn_forwarders(fds, seed)?;
        Ok(link)
    }

    fn create_namespaces(&self) -> io::Result<[OwnedFd; 2]> {
        let mut fds = Vec::new();
        for (ns, addr) in self.setup.ns.clone().iter().zip(self.setup.addr) {
            ip(&["netns", "add", ns])?;
            lock(&self.created).push(ns.clone());
            let congestion = self.setup.congestion.clone();
            let fd = in_netns(ns, move || {
                // A transfer must not start from what an earlier one learned (ssthresh
                // and RTT are cached per destination otherwise).
                write_sysctl("net/ipv4/tcp_no_metrics_save", "1")?;
                if let Some(cc) = congestion {
                    write_sysctl("net/ipv4/tcp_congestion_control", &cc).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "set net.ipv4.tcp_congestion_control = {cc} in the namespace: \
                                 {e} (a namespace may only default to an algorithm listed \
                                 in the host's net.ipv4.tcp_allowed_congestion_control)"
                            ),
                        )
                    })?;
                }
                open_tun(DEVICE)
            })?;
            let mtu = self.setup.mtu.to_string();
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
            // A deep queue between the stack and our reader: the emulator's buffer is the
            // one that drops, not the device's.
            ip(&[
                "-n",
                ns,
                "link",
                "set",
                "dev",
                DEVICE,
                "mtu",
                &mtu,
                "txqueuelen",
                "10000",
                "up",
            ])?;
            ip(&["-n", ns, "addr", "add", &cidr, "dev", DEVICE])?;
            fds.push(fd);
        }
        let b = fds.pop().ok_or_else(|| io::Error::other("no device B"))?;
        let a = fds.pop().ok_or_else(|| io::Error::other("no device A"))?;
        Ok([a, b])
    }

    fn spawn_forwarders(&self, [a, b]: [OwnedFd; 2], seed: u64) -> io::Result<()> {
        let a = Arc::new(a);
        let b = Arc::new(b);
        for (dir, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Packet>();
            let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
            let shared = self.shared.clone();
            let rng = Rng::new(seed ^ (dir as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let rt = self.setup.realtime;
            lock(&self.threads).push(
                std::thread::Builder::new()
                    .name(format!("linkemu-read-{dir}"))
                    .spawn(move || {
                        realtime(rt);
                        read_loop(&shared, dir, &from, rng, &tx, &back_rx)
                    })?,
            );
            let shared = self.shared.clone();
            lock(&self.threads).push(
                std::thread::Builder::new()
                    .name(format!("linkemu-write-{dir}"))
                    .spawn(move || {
                        realtime(rt);
                        write_loop(&shared, dir, &to, &rx, &back_tx)
                    })?,
            );
        }
        Ok(())
    }

    /// Applies new parameters at once (packets already queued keep their due times).
    pub fn set_params(&self, params: &Params) {
        self.shared.knobs.store(params);
        *lock(&self.params) = params.clone();
    }

    /// Cuts the link (every packet dropped) or restores it.
    pub fn set_cut(&self, cut: bool) {
        let mut p = lock(&self.params).clone();
        p.cut = cut;
        self.set_params(&p);
    }

    pub fn params(&self) -> Params {
        lock(&self.params).clone()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            dir: [
                self.shared.counters[0].snapshot(),
                self.shared.counters[1].snapshot(),
            ],
            params: self.params(),
            generation: self.shared.knobs.generation.load(Ordering::Relaxed),
            uptime: self.shared.epoch.elapsed(),
        }
    }

    /// What each TUN device's own queue dropped (`tx_dropped`: the stack handed it
    /// packets faster than the reader took them), side A then B, from `ip -s -j link`.
    pub fn device_drops(&self) -> io::Result<[u64; 2]> {
        let mut out = [0; 2];
        for (slot, ns) in out.iter_mut().zip(&self.setup.ns) {
            let text = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", DEVICE])?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| io::Error::other(format!("ip -j link: {e}")))?;
            *slot = v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0);
        }
        Ok(out)
    }

    /// Stops forwarding and deletes the namespaces; the final counters. Idempotent.
    pub fn stop(&self) -> Stats {
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        let created: Vec<_> = lock(&self.created).drain(..).collect();
        for ns in created {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("linkemu: {e}");
            }
        }
        self.stats()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes the calling thread SCHED_FIFO (priority 10) when asked; warns when refused.
fn realtime(wanted: bool) {
    if !wanted {
        return;
    }
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sets this thread's policy from a valid sched_param.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        eprintln!(
            "linkemu: SCHED_FIFO refused ({}): forwarding at normal priority",
            io::Error::from_raw_os_error(rc)
        );
    }
}

struct Packet {
    due: u64,
    data: Vec<u8>,
}

fn read_loop(
    shared: &Shared,
    dir: usize,
    from: &OwnedFd,
    mut rng: Rng,
    queue: &mpsc::Sender<Packet>,
    spare: &mpsc::Receiver<Vec<u8>>,
) {
    let c = &shared.counters[dir];
    let k = &shared.knobs;
    let mut shaper = Shaper::default();
    let mut buf = vec![0u8; MAX_PACKET];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match read_packet(from.as_raw_fd(), &mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("linkemu: reading direction {dir}: {e}");
                return;
            }
        };
        let len = n as u64;
        c.in_pkts.fetch_add(1, Ordering::Relaxed);
        c.in_bytes.fetch_add(len, Ordering::Relaxed);
        if k.cut.load(Ordering::Relaxed) {
            c.cut_pkts.fetch_add(1, Ordering::Relaxed);
            c.cut_bytes.fetch_add(len, Ordering::Relaxed);
            continue;
        }
        if rng.bits32() < k.loss[dir].load(Ordering::Relaxed) {
            c.loss_pkts.fetch_add(1, Ordering::Relaxed);
            c.loss_bytes.fetch_add(len, Ordering::Relaxed);
            continue;
        }
        let due = shaper.admit(
            shared.now(),
            n,
            k.rate_bps.load(Ordering::Relaxed),
            k.buffer_ns.load(Ordering::Relaxed),
            k.delay_ns.load(Ordering::Relaxed),
        );
        let Some(due) = due else {
            c.buffer_pkts.fetch_add(1, Ordering::Relaxed);
            c.buffer_bytes.fetch_add(len, Ordering::Relaxed);
            continue;
        };
        let mut data = spare.try_recv().unwrap_or_default();
        data.clear();
        data.extend_from_slice(&buf[..n]);
        if queue.send(Packet { due, data }).is_err() {
            return;
        }
    }
}

fn write_loop(
    shared: &Shared,
    dir: usize,
    to: &OwnedFd,
    queue: &mpsc::Receiver<Packet>,
    spare: &mpsc::Sender<Vec<u8>>,
) {
    // Sleeps end when asked, not up to 50 µs later (the default timer slack).
    // SAFETY: prctl with integer arguments only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let c = &shared.counters[dir].out;
    while !shared.stop.load(Ordering::Relaxed) {
        let packet = match queue.recv_timeout(IDLE) {
            Ok(p) => p,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let now = wait_until(shared, packet.due);
        let len = packet.data.len() as u64;
        if shared.knobs.cut.load(Ordering::Relaxed) {
            c.cut_pkts.fetch_add(1, Ordering::Relaxed);
            c.cut_bytes.fetch_add(len, Ordering::Relaxed);
        } else {
            // SAFETY: writes `len` initialized bytes from a live buffer to an open fd.
            let n = unsafe {
                libc::write(
                    to.as_raw_fd(),
                    packet.data.as_ptr().cast(),
                    packet.data.len(),
                )
            };
            if n < 0 {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
            } else {
                c.pkts.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(len, Ordering::Relaxed);
            }
            let late = now.saturating_sub(packet.due);
            if late > 1_000_000 {
                c.late_pkts.fetch_add(1, Ordering::Relaxed);
            }
            c.max_late_ns.fetch_max(late, Ordering::Relaxed);
        }
        let _ = spare.send(packet.data);
    }
}

/// Waits until `due` (ns since the epoch) is less than [`EARLY`] away, sleeping (timer
/// slack 1 ns); the time it returned.
fn wait_until(shared: &Shared, due: u64) -> u64 {
    loop {
        let now = shared.now();
        if now + EARLY >= due {
            return now;
        }
        std::thread::sleep(Duration::from_nanos(due - now - EARLY / 2));
    }
}

/// One packet from a non-blocking TUN fd; None after [`IDLE`] without one.
fn read_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reads into a live buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, IDLE.as_millis() as libc::c_int) };
            Ok(None)
        }
        Some(libc::EINTR) => Ok(None),
        _ => Err(err),
    }
}

/// Runs `f` on a fresh thread that has entered the named network namespace, so that what
/// it opens (a TUN device, `/proc/sys/net`) belongs to that namespace; the calling thread's
/// namespace never changes.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
        // SAFETY: setns on an open namespace fd; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("setns {path}: {e}")));
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// The `struct ifreq` of TUNSETIFF: a name and the flags (the union's first short).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the TUN device `name` in the calling thread's namespace: its fd, non-blocking.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")));
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("device name {name} too long")));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out (40 bytes).
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    // SAFETY: fcntl on an owned fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(owned)
}

/// Writes a sysctl of the calling thread's network namespace (`/proc/sys/<key>`).
fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    use std::io::Write;
    #[allow(clippy::disallowed_methods)] // a kernel setting, not a file of ours
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/sys/{key}"))?;
    f.write_all(value.as_bytes())
}

/// Runs `ip ARGS`; its standard output, or an error with its standard error.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(e.kind(), format!("run `ip` (Debian package iproute2): {e}"))
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// xorshift64*: fast, and plenty for choosing which packets to lose.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn bits32(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_shaper_serializes_at_the_rate_then_delays() {
        // 8 Mbit/s: one byte per microsecond.
        let mut s = Shaper::default();
        let (rate, buffer, delay) = (8_000_000, 50 * MS, 10 * MS);
        assert_eq!(
            s.admit(0, 1000, rate, buffer, delay),
            Some(1_000_000 + delay)
        );
        assert_eq!(
            s.admit(0, 1000, rate, buffer, delay),
            Some(2_000_000 + delay)
        );
        // An idle link starts from now, not from when it last finished.
        assert_eq!(
            s.admit(5 * MS, 500, rate, buffer, delay),
            Some(5 * MS + 500_000 + delay)
        );
    }

    #[test]
    fn the_shaper_drops_at_the_tail_when_the_buffer_is_full() {
        // 1 byte per µs, a buffer of 2.5 ms (2,500 bytes): two 1,000-byte packets fit, a
        // third arriving at once does not; once the first left, one fits again.
        let mut s = Shaper::default();
        let (rate, buffer) = (8_000_000, 2_500_000);
        assert!(s.admit(0, 1000, rate, buffer, 0).is_some());
        assert!(s.admit(0, 1000, rate, buffer, 0).is_some());
        assert_eq!(s.admit(0, 1000, rate, buffer, 0), None);
        assert_eq!(s.admit(1_000_000, 1000, rate, buffer, 0), Some(3_000_000));
        // A packet larger than the whole buffer still passes an empty link.
        let mut s = Shaper::default();
        assert!(s.admit(0, 9000, rate, buffer, 0).is_some());
    }

    #[test]
    fn due_times_never_go_back_when_the_delay_shrinks() {
        let mut s = Shaper::default();
        assert_eq!(s.admit(0, 100, 0, 0, 50 * MS), Some(50 * MS));
        assert_eq!(s.admit(MS, 100, 0, 0, 5 * MS), Some(50 * MS));
        assert_eq!(s.admit(60 * MS, 100, 0, 0, 5 * MS), Some(65 * MS));
    }

    #[test]
    fn parameters_parse_as_the_command_line_writes_them() {
        let mut p = Params::default();
        let words: Vec<String> =
            "--rate 100M --delay-ms 25 --loss 0.5 --loss-ba 1% --buffer-ms 40 --cut on"
                .split(' ')
                .map(String::from)
                .collect();
        p.parse_into(&words).unwrap();
        assert_eq!(p.rate_bps, 100_000_000);
        assert_eq!(p.delay, Duration::from_millis(25));
        assert_eq!(p.loss, [0.005, 0.01]);
        assert_eq!(p.buffer, Duration::from_millis(40));
        assert!(p.cut);
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("2.5k"), Ok(2_500));
        for bad in [
            "--rate fast",
            "--loss 101",
            "--delay-ms -1",
            "--cut maybe",
            "--jitter 3",
        ] {
            let words: Vec<String> = bad.split(' ').map(String::from).collect();
            assert!(Params::default().parse_into(&words).is_err(), "{bad}");
        }
        assert!(Params::default()
            .parse_into(&["--rate".to_string()])
            .is_err());
    }

    #[test]
    fn loss_thresholds_lose_about_the_share_asked() {
        let knobs = Knobs {
            rate_bps: AtomicU64::new(0),
            delay_ns: AtomicU64::new(0),
            buffer_ns: AtomicU64::new(0),
            loss: [AtomicU64::new(0), AtomicU64::new(0)],
            cut: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        };
        knobs.store(&Params {
            loss: [0.01, 1.0],
            ..Params::default()
        });
        let mut rng = Rng::new(7);
        let lost = (0..100_000)
            .filter(|_| rng.bits32() < knobs.loss[0].load(Ordering::Relaxed))
            .count();
        assert!((800..1200).contains(&lost), "{lost} of 100,000 at 1 %");
        assert!((0..1000).all(|_| rng.bits32() < knobs.loss[1].load(Ordering::Relaxed)));
    }
}
