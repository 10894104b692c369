//! A fault-injecting HTTP proxy of ours, between the object-store client and SeaweedFS:
//! one thread per client connection, requests forwarded one at a time on a connection of
//! its own to the engine, and per request a [`Fault`] chosen by the first matching
//! [`Rule`] (by method and target, for a number of times or with a probability).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replgate::wire::chunked::ChunkedReader;
use replgate::wire::response::{read_final_head, BodyFraming};

/// What goes wrong with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an S3 `<Error>` of this code; nothing reaches the engine.
    Status(u16, &'static str),
    /// Reset the client's connection; nothing reaches the engine.
    Reset,
    /// Forward the request, then reset the client's connection instead of answering: the
    /// engine did the work and the answer is lost.
    LoseAnswer,
    /// Forward; answer with the true `Content-Length` but only the first bytes of the
    /// body (at most this many), then close.
    CutBody(usize),
    /// Forward; answer with the body cut to this many bytes and a `Content-Length` that
    /// says so (framing intact, content cut: a listing that stops mid-XML, an object
    /// shorter than its `Content-Range`).
    ShortBody(usize),
    /// Forward; in the answer (a ListParts listing) the first `<Part>` comes twice, the
    /// second time with the same ETag or, unless `same`, another one.
    RepeatFirstPart { same: bool },
}

/// Which requests get a fault, and how often.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `None` for any method.
    pub method: Option<&'static str>,
    /// A piece of the request target (path and query) that must be in it ("" for any).
    pub target: &'static str,
    pub fault: Fault,
    /// How many more requests it applies to.
    pub times: usize,
    /// The chance it applies to a matching request, from 0 to 1.
    pub probability: f64,
}

impl Rule {
    /// `fault` for the next `times` requests of `method` whose target holds `target`.
    pub fn next(
        method: Option<&'static str>,
        target: &'static str,
        fault: Fault,
        times: usize,
    ) -> Rule {
        Rule {
            method,
            target,
            fault,
            times,
            probability: 1.0,
        }
    }

    /// `fault` for any request, each with chance `p`.
    pub fn random(fault: Fault, p: f64) -> Rule {
        Rule {
            method: None,
            target: "",
            fault,
            times: usize::MAX,
            probability: p,
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<Rule>>,
    requests: AtomicUsize,
    faults: AtomicUsize,
    connections: AtomicUsize,
    stop: AtomicBool,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    s.connections.fetch_add(1, Ordering::SeqCst);
                    let s = s.clone();
                    std::thread::spawn(move || serve(conn, &s));
                }
            }
        });
        Proxy { addr, shared }
    }

    /// The endpoint a client uses to go through the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().expect("rules").push(rule);
    }

    pub fn clear(&self) {
        self.shared.rules.lock().expect("rules").clear();
    }

    /// Requests seen, faulty or not.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn faults(&self) -> usize {
        self.shared.faults.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The first rule that takes this request, its count spent.
fn choose(shared: &Shared, method: &str, target: &str) -> Option<Fault> {
    let mut rules = shared.rules.lock().expect("rules");
    for rule in rules.iter_mut() {
        let matches = rule.times > 0
            && rule.method.is_none_or(|m| m == method)
            && target.contains(rule.target);
        if matches && (rule.probability >= 1.0 || replgate::rand::unit() < rule.probability) {
            rule.times -= 1;
            shared.faults.fetch_add(1, Ordering::SeqCst);
            return Some(rule.fault);
        }
    }
    None
}

/// Closes `conn` with a TCP reset (SO_LINGER 0).
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

fn serve(client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(120)));
    let mut reader = BufReader::new(client.try_clone().expect("clone client socket"));
    let mut client = client;
    let mut upstream: Option<BufReader<TcpStream>> = None;
    loop {
        // The request: head, then a Content-Length body (the client never sends chunked).
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let mut words = text.split_whitespace();
        let (method, target) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let fault = choose(shared, &method, &target);
        match fault {
            Some(Fault::Status(status, code)) => {
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                     <Message>injected by the test proxy</Message></Error>"
                );
                let answer = format!(
                    "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\n\r\n{xml}",
                    xml.len()
                );
                if client.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::Reset) => return reset(client),
            _ => {}
        }
        // Forward on this connection's own upstream connection.
        let up = match &mut upstream {
            Some(u) => u,
            None => {
                let Ok(sock) = TcpStream::connect(shared.upstream) else {
                    return reset(client);
                };
                upstream.insert(BufReader::new(sock))
            }
        };
        if up.get_mut().write_all(&head).is_err() || up.get_mut().write_all(&body).is_err() {
            return reset(client);
        }
        let Ok(answer) = read_final_head(up) else {
            return reset(client);
        };
        let mut answer_body = Vec::new();
        let framing = answer
            .framing(method == "HEAD")
            .unwrap_or(BodyFraming::UntilClose);
        let read = match framing {
            BodyFraming::None => Ok(0),
            BodyFraming::Length(n) => up.take(n).read_to_end(&mut answer_body),
            BodyFraming::Chunked => ChunkedReader::new(&mut *up).read_to_end(&mut answer_body),
            BodyFraming::UntilClose => up.read_to_end(&mut answer_body),
        };
        if read.is_err() {
            return reset(client);
        }
        if framing == BodyFraming::UntilClose || !answer.keep_alive() {
            upstream = None;
        }
        let true_length = match framing {
            // A HEAD answer keeps the length of the object it describes.
            BodyFraming::None => answer.header("content-length").map(str::to_string),
            _ => Some(answer_body.len().to_string()),
        };
        if let Some(Fault::RepeatFirstPart { same }) = fault {
            answer_body = repeat_first_part(&answer_body, same);
        }
        let true_length = match fault {
            Some(Fault::RepeatFirstPart { .. }) => Some(answer_body.len().to_string()),
            _ => true_length,
        };
        let (send, length_field, close) = match fault {
            Some(Fault::LoseAnswer) => return reset(client),
            Some(Fault::CutBody(n)) => (n.min(answer_body.len()), true_length, true),
            Some(Fault::ShortBody(n)) => {
                let n = n.min(answer_body.len());
                (n, Some(n.to_string()), false)
            }
            _ => (answer_body.len(), true_length, false),
        };
        let mut out = format!("HTTP/1.1 {} Proxied\r\n", answer.status);
        for (k, v) in &answer.headers {
            if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        if let Some(l) = length_field {
            out.push_str(&format!("content-length: {l}\r\n"));
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        if client.write_all(out.as_bytes()).is_err()
            || client.write_all(&answer_body[..send]).is_err()
        {
            return;
        }
        if close {
            let _ = client.flush();
            let _ = client.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// `xml` with its first `<Part>…</Part>` element repeated after itself; the copy's ETag
/// replaced unless `same`.
fn repeat_first_part(xml: &[u8], same: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(xml).into_owned();
    let (Some(start), Some(end)) = (text.find("<Part>"), text.find("</Part>")) else {
        return xml.to_vec();
    };
    let end = end + "</Part>".len();
    let mut copy = text[start..end].to_string();
    if !same {
        if let (Some(a), Some(b)) = (copy.find("<ETag>"), copy.find("</ETag>")) {
            copy.replace_range(
                a + "<ETag>".len()..b,
                "\"00000000000000000000000000000000\"",
            );
        }
    }
    format!("{}{}{}", &text[..end], copy, &text[end..]).into_bytes()
}
