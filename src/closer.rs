//! [`Closer`]: many connections being shut down on one thread.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use openssl::ssl::SslStream;

use crate::deadline::DeadlineQueue;
use crate::machine::{Progress, Ready};
use crate::ossl::{self, Owned};
use crate::policy::Policy;
use crate::report::Report;
use crate::shutdown::Shutdown;

/// The connections a [`Closer`] takes: rust-openssl streams on mio sockets.
pub type Stream = SslStream<TcpStream>;

/// Owns connections being shut down, on one thread, and hands back their reports.
///
/// Give it a connection with [`add`](Closer::add) (with a tag of yours, returned
/// with the report) and forget about it: the Closer runs the shutdown under its
/// policy, closes the socket as soon as the report is final, and queues the report
/// for [`reports`](Closer::reports). No socket stays open past its report, and
/// none past the policy's bound.
///
/// Two ways to drive it:
/// - its own `mio::Poll`: [`Closer::new`], then [`poll`](Closer::poll) in a loop,
///   or [`finish`](Closer::finish) to run until every shutdown has reported;
/// - your `mio::Poll`: [`Closer::with_registry`] with a range of tokens you reserve
///   for it; pass it your events ([`handle_event`](Closer::handle_event) returns
///   whether the event was its own), call [`handle_timeouts`](Closer::handle_timeouts)
///   after each poll, and use [`next_deadline`](Closer::next_deadline) in your poll
///   timeout.
///
/// A stream must not be registered with another `mio::Registry` when it is handed
/// over (deregister it first); a stream registered with the Closer's own registry
/// (the shared-poll setup) is re-registered under the Closer's token.
///
/// # Cost
/// Deadlines live in a [`DeadlineQueue`](crate::DeadlineQueue), whose cost per timeout
/// does not grow with the number pending (about 30 ns with a thousand or a million).
/// OpenSSL's record buffers are freed while a connection waits for its peer
/// (`SSL_free_buffers`, then `SSL_MODE_RELEASE_BUFFERS`), and read-ahead lets the
/// peer's close_notify arrive in one `recv`. Measured on OpenSSL 3.0 (TLS 1.3), a
/// pending shutdown holds about 19 KB of heap: OpenSSL's `SSL` object, its session
/// and cipher state, and about 400 bytes of the Closer's own. That is 37% of an idle
/// connection's 52 KB, plus the kernel's socket. A clean shutdown costs 4 system
/// calls besides `close()`. `BENCHMARKS.md` has the figures and how to reproduce
/// them.
pub struct Closer<T = ()> {
    own: Option<(Poll, Events)>,
    registry: Registry,
    tokens: Range<usize>,
    policy: Policy,
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    deadlines: DeadlineQueue<(usize, u32)>,
    /// `handle_timeouts`' list of what is due (kept for its allocation).
    due: Vec<(Instant, (usize, u32))>,
    reports: VecDeque<(T, Report)>,
    pending: usize,
}

struct Slot<T> {
    generation: u32,
    entry: Option<Entry<T>>,
}

struct Entry<T> {
    shutdown: Shutdown<Owned>,
    tag: T,
    /// The deadline of the wait in progress as it stands in the queue (`None`
    /// before the first wait, and once `handle_timeouts` popped it); queue
    /// entries with another deadline are stale.
    deadline: Option<Instant>,
}

/// A connection the Closer could not take, handed back untouched.
pub struct Rejected<T> {
    /// The stream, as it was given.
    pub stream: Stream,
    /// The caller's tag.
    pub tag: T,
    /// Why: the token range is exhausted, or mio refused the registration.
    pub error: io::Error,
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection not taken by the closer: {}", self.error)
    }
}

impl<T> std::error::Error for Rejected<T> {}

impl<T> fmt::Debug for Closer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Closer")
            .field("pending", &self.pending)
            .field("reports", &self.reports.len())
            .field("tokens", &self.tokens)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The Closer closes what it shuts down: a mode that keeps the connection has no
/// place here.
fn check_policy(policy: &Policy) -> io::Result<()> {
    if policy.mode() == crate::Mode::StopTls {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the Closer closes every connection; Mode::StopTls keeps it open: use \
             shutdown_blocking or Shutdown on the stream instead",
        ));
    }
    Ok(())
}

/// Events handled per `poll` of the Closer's own `mio::Poll`.
const EVENTS: usize = 1024;

impl<T> Closer<T> {
    /// A Closer with its own `mio::Poll`.
    ///
    /// # Errors
    /// `InvalidInput` for a [`Mode::StopTls`](crate::Mode::StopTls) policy: the
    /// Closer closes every connection, STOPTLS keeps it. The error of
    /// `mio::Poll::new` otherwise.
    pub fn new(policy: &Policy) -> io::Result<Self> {
        check_policy(policy)?;
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok(Closer::build(
            Some((poll, Events::with_capacity(EVENTS))),
            registry,
            0..usize::MAX,
            policy,
        ))
    }

    /// A Closer driven from the caller's `mio::Poll`: it registers connections with
    /// `registry` under tokens from `tokens`, which the caller reserves for it.
    ///
    /// # Errors
    /// As [`new`](Closer::new), or the error of `Registry::try_clone`.
    pub fn with_registry(
        registry: &Registry,
        tokens: Range<usize>,
        policy: &Policy,
    ) -> io::Result<Self> {
        check_policy(policy)?;
        Ok(Closer::build(None, registry.try_clone()?, tokens, policy))
    }

    fn build(
        own: Option<(Poll, Events)>,
        registry: Registry,
        tokens: Range<usize>,
        policy: &Policy,
    ) -> Self {
        Closer {
            own,
            registry,
            tokens,
            policy: policy.clone(),
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: DeadlineQueue::new(),
            due: Vec::new(),
            reports: VecDeque::new(),
            pending: 0,
        }
    }

    /// The policy connections are shut down under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Shutdowns in progress.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Hands `stream` over: its shutdown starts now. `tag` comes back with the
    /// report.
    ///
    /// # Errors
    /// The stream and tag, untouched, when the token range is exhausted or mio
    /// refuses the registration.
    pub fn add(&mut self, stream: Stream, tag: T) -> Result<(), Rejected<T>> {
        self.add_with(stream, tag, |shutdown| shutdown)
    }

    /// As [`add`](Closer::add), with `prepare` configuring the shutdown before it
    /// starts: [`Shutdown::with_unsent`] for application data the caller could not
    /// finish writing, [`Shutdown::after_error`] for a connection whose last read
    /// or write failed.
    ///
    /// ```no_run
    /// # fn demo(closer: &mut closenotify::Closer<u32>, stream: closenotify::Stream, pending: Vec<u8>) {
    /// closer
    ///     .add_with(stream, 7, |shutdown| shutdown.with_unsent(pending))
    ///     .expect("a free token");
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`add`](Closer::add); `prepare` has not run then.
    pub fn add_with(
        &mut self,
        mut stream: Stream,
        tag: T,
        prepare: impl FnOnce(Shutdown<Stream>) -> Shutdown<Stream>,
    ) -> Result<(), Rejected<T>> {
        let Some(index) = self.alloc() else {
            let error = io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the closer's token range is exhausted",
            );
            return Err(Rejected { stream, tag, error });
        };
        let token = Token(self.tokens.start + index);
        if let Err(error) = self.register(&mut stream, token) {
            self.free.push(index);
            return Err(Rejected { stream, tag, error });
        }
        ossl::prepare_for_closer(&mut stream);
        let mut shutdown = prepare(Shutdown::new(stream, &self.policy)).map_conn(Owned::new);
        // Registered just now: epoll reports what is already waiting, so the
        // machine need not try a read before it waits. The connection is closed
        // with its report, and `now` is always fresh.
        if let Some(setup) = shutdown.setup() {
            setup.level_readiness = true;
            setup.closed_after_report = true;
        }
        shutdown.adapter_clock(Instant::now);
        let now = Instant::now();
        self.pending += 1;
        self.slots[index].entry = Some(Entry {
            shutdown,
            tag,
            deadline: None,
        });
        self.drive(index, Ready::NONE, now);
        // Waiting now: hand OpenSSL's record buffers back until the peer's alert
        // arrives (with RELEASE_BUFFERS, the ones it then needs are freed again).
        if let Some(entry) = self.slots[index].entry.as_mut() {
            ossl::free_buffers(entry.shutdown.get_mut().stream_mut());
        }
        Ok(())
    }

    fn alloc(&mut self) -> Option<usize> {
        if let Some(index) = self.free.pop() {
            return Some(index);
        }
        let index = self.slots.len();
        if index >= self.tokens.len() {
            return None;
        }
        self.slots.push(Slot {
            generation: 0,
            entry: None,
        });
        Some(index)
    }

    fn register(&self, stream: &mut Stream, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self.registry.register(stream.get_mut(), token, interest) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.registry.reregister(stream.get_mut(), token, interest)
            }
            other => other,
        }
    }

    /// Handles one event of the caller's poll. Returns `false` if the event's token
    /// is not the Closer's (the caller handles it), `true` otherwise.
    pub fn handle_event(&mut self, event: &Event, now: Instant) -> bool {
        let token = event.token().0;
        if !self.tokens.contains(&token) {
            return false;
        }
        // An event for a slot freed (or reused) since it was queued is spurious:
        // the machine ignores readiness it does not wait for.
        self.drive(token - self.tokens.start, Ready::from(event), now);
        true
    }

    /// Times out the shutdowns whose deadline is at or before `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        // Only what was due when the call began: a shutdown that asks to be
        // called again at once (it read its budget of data) waits for the next
        // call and its fresh `now`.
        let mut due = std::mem::take(&mut self.due);
        while let Some((deadline, key)) = self.deadlines.pop_expired(now) {
            due.push((deadline, key));
        }
        for (deadline, (index, generation)) in due.drain(..) {
            let slot = &mut self.slots[index];
            let Some(entry) = slot.entry.as_mut() else {
                continue;
            };
            if slot.generation == generation && entry.deadline == Some(deadline) {
                // Its queue entry is used up: a wait with the same deadline is
                // queued again.
                entry.deadline = None;
                self.drive(index, Ready::NONE, now);
            }
        }
        self.due = due;
    }

    /// The earliest deadline of a pending shutdown (it may belong to one that has
    /// finished since: waking for it is harmless). Use it in the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek()
    }

    /// The finished shutdowns' reports, with their tags, in the order they ended.
    pub fn reports(&mut self) -> std::collections::vec_deque::Drain<'_, (T, Report)> {
        self.reports.drain(..)
    }

    fn drive(&mut self, index: usize, ready: Ready, now: Instant) {
        let slot = &mut self.slots[index];
        let Some(entry) = slot.entry.as_mut() else {
            return;
        };
        match entry.shutdown.poll(now, ready) {
            Progress::Wait(wait) => {
                if entry.deadline != Some(wait.deadline) {
                    entry.deadline = Some(wait.deadline);
                    self.deadlines.push(wait.deadline, (index, slot.generation));
                }
            }
            Progress::Done(report) => {
                let Some(entry) = slot.entry.take() else {
                    return;
                };
                slot.generation = slot.generation.wrapping_add(1);
                // Dropping the stream closes the socket, which also removes it
                // from epoll: no deregistration call is needed.
                drop(entry.shutdown);
                self.reports.push_back((entry.tag, report));
                self.free.push(index);
                self.pending -= 1;
            }
        }
    }

    /// With the Closer's own poll: waits for readiness or the next deadline (at most
    /// `timeout`, `None` for no limit beyond the deadlines), then handles what
    /// happened. Returns the number of reports waiting in
    /// [`reports`](Closer::reports).
    ///
    /// # Errors
    /// `Unsupported` for a Closer made with [`with_registry`](Closer::with_registry);
    /// the error of `mio::Poll::poll` otherwise (an interrupted wait is not one).
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let Some((mut poll, mut events)) = self.own.take() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this closer is driven by the caller's poll",
            ));
        };
        let now = Instant::now();
        let until_deadline = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        let wait = match (timeout, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match poll.poll(&mut events, wait) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        };
        let now = Instant::now();
        for event in events.iter() {
            self.handle_event(event, now);
        }
        self.handle_timeouts(now);
        self.own = Some((poll, events));
        result.map(|()| self.reports.len())
    }

    /// With the Closer's own poll: runs until every pending shutdown has reported.
    /// Bounded by the policy: each shutdown ends by its last deadline.
    pub fn finish(&mut self) -> io::Result<()> {
        while self.pending > 0 {
            self.poll(None)?;
        }
        Ok(())
    }
}

impl<T> Drop for Closer<T> {
    /// Connections still pending are closed without waiting further (their
    /// shutdowns are abandoned and report nothing).
    fn drop(&mut self) {
        log::debug!("closenotify: closer dropped with {} pending", self.pending);
    }
}
