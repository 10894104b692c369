//! Holding requests: the client's decrypted bytes are framed into requests (the head
//! checked by `wire::http`, then the whole capped body awaited, `100 Continue` sent when
//! the client waits for it), and each complete one is answered on this thread by the
//! listener's [`LocalAnswer`](crate::front::LocalAnswer) or released whole to the backend;
//! what breaks the rules is refused.

use std::io::{self, Read};
use std::time::Instant;

use super::{Continue, Framing, Inbound, Outbound, Refusal, Relay, Stop};
use crate::front::Shared;
use crate::listener::UNAUTHENTICATED_DEADLINE;
use crate::wire::http::{self, HeadError};

/// The front's interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Relay<'_> {
    /// Takes decrypted client bytes into `up` and runs the framing over them.
    pub(super) fn read_plaintext(&mut self, now: Instant) {
        if self.inbound != Inbound::Open {
            return;
        }
        loop {
            let spare = self.up.spare();
            if spare.is_empty() {
                break;
            }
            match self.tls.reader().read(spare) {
                Ok(0) => {
                    self.inbound = Inbound::Finished;
                    break;
                }
                Ok(n) => self.up.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // UnexpectedEof: TCP end of stream without close_notify. Requests already
                // complete still count; a partial one is dropped below.
                Err(_) => {
                    self.inbound = Inbound::Finished;
                    break;
                }
            }
        }
        if let Err(refusal) = self.frame(now) {
            self.refuse(refusal);
            return;
        }
        if self.inbound != Inbound::Open {
            self.up.drop_held();
            return;
        }
        // Only the client's own slowness counts: while earlier bytes still wait for the
        // backend, the request cannot progress through any fault of the client.
        if !self.up.unsent().is_empty() {
            return;
        }
        if self.first_request_by.is_some_and(|by| now >= by) && !self.up.held().is_empty() {
            self.refuse(Refusal::FirstRequestTimeout {
                limit: UNAUTHENTICATED_DEADLINE,
            });
            return;
        }
        let limit = self.shared.limits.head_timeout;
        let overdue =
            |since: Option<Instant>| since.is_some_and(|s| now.duration_since(s) >= limit);
        match self.framing {
            Framing::Head { since, .. } if overdue(since) => {
                self.refuse(Refusal::HeadTimeout { limit });
            }
            Framing::Body { since, .. } if overdue(since) => {
                self.refuse(Refusal::BodyTimeout { limit });
            }
            _ => {}
        }
    }

    /// Runs the framing over the held bytes: each complete request is answered in the
    /// front (when the answerer takes it and nothing is in flight) or released to the
    /// backend whole; an incomplete one stays held, with room reserved for all of it.
    fn frame(&mut self, now: Instant) -> Result<(), Refusal> {
        let max_head = self.shared.limits.max_head_bytes;
        let max_body = self.shared.limits.max_body_bytes;
        loop {
            match self.framing {
                Framing::Head { scanned, since } => {
                    let held = self.up.held();
                    if held.is_empty() {
                        return Ok(());
                    }
                    let since = since.unwrap_or(now);
                    let window = &held[..held.len().min(max_head)];
                    let Some(len) = http::request_head_end(window, scanned) else {
                        if held.len() >= max_head {
                            return Err(Refusal::HeadTooLarge { limit: max_head });
                        }
                        self.framing = Framing::Head {
                            scanned: window.len(),
                            since: Some(since),
                        };
                        return Ok(());
                    };
                    let head = http::parse(&window[..len]).map_err(Refusal::Head)?;
                    let body_len = head.capped_length(max_body).map_err(Refusal::Head)?;
                    // Within max_body_bytes, which the configuration keeps addressable.
                    let body_len = usize::try_from(body_len).map_err(|_| {
                        Refusal::Head(HeadError::BodyTooLarge {
                            length: body_len,
                            limit: max_body,
                        })
                    })?;
                    if body_len == 0
                        && self.may_add_bytes()
                        && answer_locally(self.shared, &head, &mut self.answer)
                        && self.down.append(&self.answer)
                    {
                        self.up.skip(len);
                        self.framing = Framing::BETWEEN_REQUESTS;
                        self.first_request_by = None;
                        continue;
                    }
                    let expect = if head.expect_continue && body_len > 0 {
                        Continue::Owed
                    } else {
                        Continue::NotAsked
                    };
                    let head_request = head.method == "HEAD";
                    let last = !head.keep_alive;
                    // tiny_http must not see `Expect`: it would send a second `100
                    // Continue`, and it hands a request that has one to a worker before
                    // reading its body.
                    let cut = head.expect_continue.then(|| head.line_range("expect"));
                    let head_len = match cut.flatten() {
                        Some(range) => {
                            let removed = range.len();
                            self.up.cut(range);
                            len - removed
                        }
                        None => len,
                    };
                    self.up.reserve(head_len + body_len);
                    self.framing = Framing::Body {
                        head_len,
                        body_len,
                        head_request,
                        last,
                        since: (expect == Continue::NotAsked).then_some(now),
                        expect,
                    };
                }
                Framing::Body {
                    head_len,
                    body_len,
                    head_request,
                    last,
                    expect,
                    ..
                } => {
                    if self.up.held().len() < head_len + body_len {
                        if expect == Continue::Owed
                            && self.may_add_bytes()
                            && self.down.append(CONTINUE)
                        {
                            self.framing = Framing::Body {
                                head_len,
                                body_len,
                                head_request,
                                last,
                                expect: Continue::Sent,
                                since: Some(now),
                            };
                        }
                        return Ok(());
                    }
                    self.up.release(head_len + body_len);
                    self.responses.expect(head_request);
                    self.framing = Framing::BETWEEN_REQUESTS;
                    self.first_request_by = None;
                    if last {
                        // Whatever follows would never be answered: tiny_http closes after
                        // this request.
                        self.inbound = Inbound::Stopped(Stop::LastRequest);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Whether the front may put bytes of its own into the client-bound stream now:
    /// every forwarded request has been answered in full, nothing waits to be forwarded,
    /// and the stream is still open.
    fn may_add_bytes(&self) -> bool {
        self.outbound == Outbound::Relaying
            && self.responses.owed() == 0
            && self.up.unsent().is_empty()
    }

    fn refuse(&mut self, refusal: Refusal) {
        log::info!(
            "{}: {}: refused request with {}: {}",
            self.control.name(),
            self.addr,
            refusal.status(),
            refusal.message()
        );
        self.inbound = Inbound::Stopped(Stop::Refused(refusal));
        self.up.drop_held();
    }
}

/// Asks the listener's answerer (if it has one) for an answer to a complete bodiless
/// request, under the rules of [`LocalAnswer`](super::LocalAnswer): HTTP/1.1, keep-alive, no body framing.
/// The caller has checked that nothing is in flight.
fn answer_locally(shared: &Shared, head: &http::RequestHead<'_>, out: &mut Vec<u8>) -> bool {
    let Some(answerer) = shared.local.as_deref() else {
        return false;
    };
    if head.version != http::Version::Http11
        || !head.keep_alive
        || head.body != http::BodyFraming::Length(0)
        || head.expect_continue
    {
        return false;
    }
    out.clear();
    let answered = answerer.answer(head, out);
    if !answered {
        out.clear();
    }
    answered
}
