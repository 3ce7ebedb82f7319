//! Response tracking for one bound server connection: pure, no I/O.
//!
//! Every client message that makes the server answer pushes an [`Expect`];
//! every server message is matched against the head of the queue. That
//! tells the relay which responses to forward, which to swallow (answers to
//! messages the proxy injected, such as re-preparing a statement on a new
//! server connection), where to synthesize a response for a message the
//! proxy answered itself (a Parse of a statement the server already has),
//! and when the server is back at an idle transaction boundary so that it
//! can go back to the pool.
//!
//! Error and COPY rules follow the protocol: after an ErrorResponse in the
//! extended protocol the server skips everything up to the next Sync; Sync
//! and Flush sent while the server is in COPY IN are ignored by it.

use std::collections::VecDeque;
use std::rc::Rc;

/// A client-visible response the proxy synthesizes in place of the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fake {
    ParseComplete,
    CloseComplete,
}

/// Bookkeeping to undo when a Parse did not take effect on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undo {
    /// The client's statement name, to forget.
    pub client_name: Option<Rc<[u8]>>,
    /// The server-side statement id, to forget on this server.
    pub server_stmt: Option<u64>,
    /// A statement the proxy meant to evict but the server kept (its Close
    /// was skipped after an error): to remember again.
    pub kept_stmt: Option<u64>,
}

/// What the server will answer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete. `swallow`: injected by the proxy.
    Parse {
        swallow: bool,
        undo: Option<Box<Undo>>,
    },
    Bind,
    /// CloseComplete. `swallow`: injected by the proxy (cache eviction).
    Close {
        swallow: bool,
        evicted: Option<u64>,
    },
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// ReadyForQuery.
    Sync,
    /// A simple query: everything up to ReadyForQuery. `swallow`: injected.
    Query {
        swallow: bool,
    },
    /// FunctionCallResponse, then ReadyForQuery.
    FunctionCall,
    /// No server answer: the proxy answers here itself (unless an earlier
    /// error in the same Sync block means Postgres would have said nothing).
    Fake(Fake, Option<Box<Undo>>),
    /// No server answer: marks where the client ended a COPY IN.
    CopyEnd,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Swallow,
    /// Not expected in the current state: forward it, and do not reuse this
    /// server connection.
    Unexpected,
}

/// The per-binding response tracker.
#[derive(Debug, Default)]
pub struct Flow {
    queue: VecDeque<Expect>,
    /// Transaction status from the last ReadyForQuery: b'I', b'T' or b'E'.
    status: u8,
    /// The client is inside a COPY IN the server has started: its Sync and
    /// Flush messages are ignored by the server until CopyDone/CopyFail.
    client_in_copy: bool,
    /// The server answered something out of order: never pool it again.
    broken: bool,
    /// Undo records for Parses that did not take effect.
    undo: Vec<Undo>,
    /// Client statement names whose Parse the server accepted.
    parsed: Vec<Rc<[u8]>>,
    /// The last ReadyForQuery ended a client's simple query.
    ready_ended_client_query: bool,
    /// Extended-protocol messages were sent since the last Sync: the server
    /// is inside an unfinished batch (an implicit transaction, portals).
    batch_open: bool,
    /// An error arrived before the Sync that ends its batch: the server is
    /// discarding everything up to that Sync.
    skipping: bool,
    /// Client simple queries the server skipped after an error (their
    /// answers will never come).
    dropped_client_queries: usize,
}

impl Flow {
    pub fn new() -> Self {
        Flow { status: b'I', ..Default::default() }
    }

    /// Records what the server will answer to a message the relay sends.
    /// Returns false when the server will ignore the message (it is
    /// skipping to Sync after an error, or a Sync arrives during COPY IN):
    /// then nothing is expected and synthesized answers are dropped.
    pub fn push(&mut self, e: Expect) -> bool {
        if self.client_in_copy && matches!(e, Expect::Sync) {
            return false; // the server ignores Sync during COPY IN
        }
        if matches!(e, Expect::CopyEnd) {
            self.client_in_copy = false;
        }
        if self.skipping {
            if !matches!(e, Expect::Sync) {
                self.record_undo(e);
                return false;
            }
            self.skipping = false;
        }
        match e {
            Expect::Sync => self.batch_open = false,
            Expect::Query { .. } | Expect::FunctionCall | Expect::CopyEnd => {}
            _ => self.batch_open = true,
        }
        self.queue.push_back(e);
        true
    }

    /// Whether the server is skipping everything up to the next Sync.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Whether the message being answered now is a simple query the client
    /// sent (not one the proxy injected).
    pub fn answering_client_query(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Query { swallow: false }))
    }

    /// Client simple queries skipped by the server since the last call.
    pub fn take_dropped_client_queries(&mut self) -> usize {
        std::mem::take(&mut self.dropped_client_queries)
    }

    /// A Flush was sent: like any extended message it opens a batch.
    pub fn note_flush(&mut self) {
        if !self.skipping {
            self.batch_open = true;
        }
    }

    /// True when nothing is outstanding and the server is outside a
    /// transaction block and any batch: the connection may go back to the
    /// pool.
    pub fn idle(&self) -> bool {
        self.quiet() && self.status == b'I'
    }

    /// Nothing outstanding (the server waits for the client at a message
    /// boundary a new request can start from), whatever the transaction
    /// status.
    pub fn quiet(&self) -> bool {
        self.queue.is_empty() && !self.client_in_copy && !self.batch_open && !self.skipping
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Whether the last ReadyForQuery ended a simple query the client sent.
    pub fn ready_ended_client_query(&self) -> bool {
        self.ready_ended_client_query
    }

    /// Marks the connection unfit for reuse.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    pub fn take_undo(&mut self) -> Vec<Undo> {
        std::mem::take(&mut self.undo)
    }

    pub fn has_undo(&self) -> bool {
        !self.undo.is_empty() || !self.parsed.is_empty()
    }

    /// Client statement names whose Parse the server accepted since the
    /// last call.
    pub fn take_parsed(&mut self) -> Vec<Rc<[u8]>> {
        std::mem::take(&mut self.parsed)
    }

    /// Whether the head of the queue is an injected simple query (its
    /// notices are swallowed too).
    fn head_swallows_all(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Query { swallow: true }))
    }

    /// Matches one server message (by tag; `ready_status` is the body byte
    /// of a ReadyForQuery) against the queue.
    pub fn on_server(&mut self, tag: u8, ready_status: u8) -> Verdict {
        match tag {
            b'S' | b'A' => Verdict::Forward,
            b'N' => self.swallow_if(self.head_swallows_all()),
            b'E' => self.on_error(),
            b'Z' => self.on_ready(ready_status),
            b'1' => self.on_parse_complete(),
            b'2' => self.pop_if(|e| matches!(e, Expect::Bind)),
            b'3' => self.on_close_complete(),
            b't' => self.expect_head(|e| matches!(e, Expect::DescribeStatement)),
            b'T' | b'n' => self.on_row_description(),
            b'D' | b'd' | b'c' | b'H' | b'V' => self.in_command(),
            b'C' | b'I' | b's' => self.on_command_end(),
            b'G' => self.on_copy_in(),
            _ => self.unexpected(),
        }
    }

    fn swallow_if(&self, swallow: bool) -> Verdict {
        if swallow {
            Verdict::Swallow
        } else {
            Verdict::Forward
        }
    }

    fn unexpected(&mut self) -> Verdict {
        self.broken = true;
        Verdict::Unexpected
    }

    fn expect_head(&mut self, ok: impl Fn(&Expect) -> bool) -> Verdict {
        match self.queue.front() {
            Some(e) if ok(e) => Verdict::Forward,
            _ => self.unexpected(),
        }
    }

    fn pop_if(&mut self, ok: impl Fn(&Expect) -> bool) -> Verdict {
        match self.queue.front() {
            Some(e) if ok(e) => {
                self.queue.pop_front();
                Verdict::Forward
            }
            _ => self.unexpected(),
        }
    }

    /// Rows and COPY data belong to a running Execute, Query or FunctionCall.
    fn in_command(&mut self) -> Verdict {
        match self.queue.front() {
            Some(Expect::Execute | Expect::FunctionCall) => Verdict::Forward,
            Some(Expect::Query { swallow }) => self.swallow_if(*swallow),
            _ => self.unexpected(),
        }
    }

    fn on_command_end(&mut self) -> Verdict {
        match self.queue.front() {
            Some(Expect::Execute) => {
                self.queue.pop_front();
                Verdict::Forward
            }
            Some(Expect::Query { swallow }) => self.swallow_if(*swallow),
            _ => self.unexpected(),
        }
    }

    fn on_row_description(&mut self) -> Verdict {
        match self.queue.front() {
            Some(Expect::DescribeStatement | Expect::DescribePortal) => {
                self.queue.pop_front();
                Verdict::Forward
            }
            // A RowDescription inside a simple query's results.
            Some(Expect::Query { swallow }) => self.swallow_if(*swallow),
            _ => self.unexpected(),
        }
    }

    fn on_parse_complete(&mut self) -> Verdict {
        match self.queue.front() {
            Some(Expect::Parse { swallow, .. }) => {
                let v = self.swallow_if(*swallow);
                if let Some(Expect::Parse { undo: Some(u), .. }) = self.queue.pop_front() {
                    if let Some(name) = u.client_name {
                        self.parsed.push(name);
                    }
                }
                v
            }
            _ => self.unexpected(),
        }
    }

    fn on_close_complete(&mut self) -> Verdict {
        match self.queue.front() {
            Some(Expect::Close { swallow, .. }) => {
                let v = self.swallow_if(*swallow);
                self.queue.pop_front();
                v
            }
            _ => self.unexpected(),
        }
    }

    fn on_copy_in(&mut self) -> Verdict {
        match self.queue.front() {
            Some(Expect::Execute | Expect::Query { swallow: false }) => {}
            _ => return self.unexpected(),
        }
        // Syncs the client sent after the COPY started and before it ended
        // it are ignored by the server: drop their expectations.
        let end = self.queue.iter().position(|e| matches!(e, Expect::CopyEnd));
        let limit = end.unwrap_or(self.queue.len());
        let mut i = 1;
        let mut limit = limit;
        while i < limit {
            if matches!(self.queue[i], Expect::Sync) {
                self.queue.remove(i);
                limit -= 1;
            } else {
                i += 1;
            }
        }
        if end.is_none() {
            self.client_in_copy = true;
        }
        Verdict::Forward
    }

    /// An ErrorResponse ends the current extended-protocol message and makes
    /// the server skip everything up to the next Sync. Inside a simple query
    /// or at a Sync it ends nothing: ReadyForQuery follows.
    fn on_error(&mut self) -> Verdict {
        match self.queue.front() {
            None => self.unexpected(),
            Some(Expect::Query { swallow }) => self.swallow_if(*swallow),
            Some(Expect::Sync | Expect::FunctionCall) => Verdict::Forward,
            Some(_) => {
                self.client_in_copy = false;
                loop {
                    match self.queue.front() {
                        Some(Expect::Sync) => break,
                        Some(_) => {
                            // Everything up to the Sync is skipped by the
                            // server, simple queries included.
                            let e = self.queue.pop_front().expect("front exists");
                            if matches!(e, Expect::Query { swallow: false }) {
                                self.dropped_client_queries += 1;
                            }
                            self.record_undo(e);
                        }
                        None => {
                            // The Sync has not been sent yet: everything the
                            // client sends until then is skipped.
                            self.skipping = true;
                            break;
                        }
                    }
                }
                Verdict::Forward
            }
        }
    }

    fn record_undo(&mut self, e: Expect) {
        match e {
            Expect::Parse { undo: Some(u), .. } => self.undo.push(*u),
            // A statement the server already had: only the client's name
            // must go, since Postgres would have skipped this Parse.
            Expect::Fake(Fake::ParseComplete, Some(u)) => {
                self.undo.push(Undo { client_name: u.client_name, server_stmt: None, kept_stmt: None })
            }
            Expect::Close { evicted: Some(id), .. } => {
                self.undo.push(Undo { client_name: None, server_stmt: None, kept_stmt: Some(id) })
            }
            _ => {}
        }
    }

    fn on_ready(&mut self, status: u8) -> Verdict {
        let popped = self.queue.pop_front();
        self.ready_ended_client_query = matches!(popped, Some(Expect::Query { swallow: false }));
        let verdict = match popped {
            Some(Expect::Sync | Expect::FunctionCall | Expect::Query { swallow: false }) => Verdict::Forward,
            Some(Expect::Query { swallow: true }) => Verdict::Swallow,
            _ => {
                self.broken = true;
                Verdict::Unexpected
            }
        };
        self.status = status;
        verdict
    }

    /// Emits the synthesized responses now at the head of the queue (their
    /// predecessors are all answered) and drops CopyEnd markers there.
    pub fn take_ready_fakes(&mut self, mut emit: impl FnMut(Fake)) {
        while let Some(e) = self.queue.front() {
            match e {
                Expect::Fake(f, _) => {
                    emit(*f);
                    self.queue.pop_front();
                }
                Expect::CopyEnd => {
                    self.queue.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Starts over for a newly bound server connection, keeping the queue's
    /// allocation (no allocation per transaction).
    pub fn reset(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.clear();
        *self = Flow { queue, ..Flow::new() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fakes(f: &mut Flow) -> Vec<Fake> {
        let mut v = Vec::new();
        f.take_ready_fakes(|x| v.push(x));
        v
    }

    #[test]
    fn simple_query_cycle() {
        let mut f = Flow::new();
        f.push(Expect::Query { swallow: false });
        assert!(!f.idle());
        for t in [b'T', b'D', b'C'] {
            assert_eq!(f.on_server(t, 0), Verdict::Forward);
        }
        assert_eq!(f.on_server(b'Z', b'T'), Verdict::Forward);
        assert!(!f.idle() && f.quiet());
        f.push(Expect::Query { swallow: false });
        assert_eq!(f.on_server(b'C', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn fake_parse_complete_is_placed_in_order() {
        let mut f = Flow::new();
        f.push(Expect::Bind);
        f.push(Expect::Fake(Fake::ParseComplete, None));
        f.push(Expect::Bind);
        f.push(Expect::Sync);
        assert!(fakes(&mut f).is_empty());
        assert_eq!(f.on_server(b'2', 0), Verdict::Forward);
        assert_eq!(fakes(&mut f), vec![Fake::ParseComplete]);
        assert_eq!(f.on_server(b'2', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn injected_parse_is_swallowed() {
        let mut f = Flow::new();
        f.push(Expect::Parse { swallow: true, undo: None });
        f.push(Expect::Bind);
        f.push(Expect::Execute);
        f.push(Expect::Sync);
        assert_eq!(f.on_server(b'1', 0), Verdict::Swallow);
        assert_eq!(f.on_server(b'2', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'D', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'C', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn error_skips_to_sync_and_undoes_parses() {
        let mut f = Flow::new();
        let undo = |n: &[u8], s| {
            Some(Box::new(Undo { client_name: Some(n.into()), server_stmt: Some(s), kept_stmt: None }))
        };
        f.push(Expect::Parse { swallow: false, undo: undo(b"a", 1) });
        f.push(Expect::Fake(Fake::ParseComplete, undo(b"b", 2)));
        f.push(Expect::Bind);
        f.push(Expect::Sync);
        assert_eq!(f.on_server(b'E', 0), Verdict::Forward);
        assert!(fakes(&mut f).is_empty(), "no ParseComplete after an error");
        let u = f.take_undo();
        assert_eq!(u.len(), 2);
        assert_eq!(u[1].server_stmt, None, "the server still has statement 2");
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn copy_in_ignores_syncs_sent_during_copy() {
        let mut f = Flow::new();
        f.push(Expect::Bind);
        f.push(Expect::Execute);
        f.push(Expect::Sync); // libpq-style Sync right after Execute
        assert_eq!(f.on_server(b'2', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'G', 0), Verdict::Forward);
        f.push(Expect::Sync); // still in copy: ignored
        f.push(Expect::CopyEnd);
        f.push(Expect::Sync); // after CopyDone: honoured
        assert_eq!(f.on_server(b'C', 0), Verdict::Forward);
        fakes(&mut f);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn swallowed_query_hides_everything() {
        let mut f = Flow::new();
        f.push(Expect::Query { swallow: true });
        f.push(Expect::Query { swallow: false });
        assert_eq!(f.on_server(b'C', 0), Verdict::Swallow);
        assert_eq!(f.on_server(b'N', 0), Verdict::Swallow);
        assert_eq!(f.on_server(b'S', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Swallow);
        assert_eq!(f.on_server(b'C', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn error_before_sync_skips_what_follows_until_sync() {
        let mut f = Flow::new();
        assert!(f.push(Expect::Parse { swallow: false, undo: None }));
        assert_eq!(f.on_server(b'E', 0), Verdict::Forward);
        assert!(!f.quiet() && !f.idle(), "the server is skipping until Sync");
        let undo =
            Some(Box::new(Undo { client_name: Some(b"n"[..].into()), server_stmt: None, kept_stmt: None }));
        assert!(!f.push(Expect::Fake(Fake::ParseComplete, undo)));
        assert!(!f.push(Expect::Bind));
        assert!(!f.push(Expect::Query { swallow: false }));
        assert!(fakes(&mut f).is_empty());
        assert_eq!(f.take_undo().len(), 1);
        assert!(f.push(Expect::Sync));
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn a_query_inside_a_failed_batch_is_skipped_too() {
        let mut f = Flow::new();
        f.push(Expect::Bind);
        f.push(Expect::Execute);
        f.push(Expect::Query { swallow: false });
        f.push(Expect::Sync);
        assert_eq!(f.on_server(b'2', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'E', 0), Verdict::Forward);
        assert_eq!(f.take_dropped_client_queries(), 1);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle() && !f.broken());
    }

    #[test]
    fn a_batch_without_sync_is_not_idle() {
        let mut f = Flow::new();
        f.push(Expect::Bind);
        f.push(Expect::Execute);
        f.note_flush();
        assert_eq!(f.on_server(b'2', 0), Verdict::Forward);
        assert_eq!(f.on_server(b'D', 0), Verdict::Forward);
        assert_eq!(f.on_server(b's', 0), Verdict::Forward);
        assert!(!f.idle() && !f.quiet(), "portal and implicit transaction still open");
        f.push(Expect::Sync);
        assert_eq!(f.on_server(b'Z', b'I'), Verdict::Forward);
        assert!(f.idle());
    }

    #[test]
    fn skipped_eviction_is_undone() {
        let mut f = Flow::new();
        f.push(Expect::Bind);
        f.push(Expect::Close { swallow: true, evicted: Some(9) });
        f.push(Expect::Sync);
        assert_eq!(f.on_server(b'E', 0), Verdict::Forward);
        assert_eq!(f.take_undo()[0].kept_stmt, Some(9));
    }

    #[test]
    fn unexpected_marks_broken() {
        let mut f = Flow::new();
        assert_eq!(f.on_server(b'2', 0), Verdict::Unexpected);
        assert!(f.broken());
    }
}
