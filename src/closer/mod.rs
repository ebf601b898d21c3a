//! [`Closer`]: many connections being shut down on one thread.

pub(crate) mod engine;

use std::fmt;
use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::Registry;
use openssl::ssl::SslStream;

pub(crate) use self::engine::Engine;
use crate::ossl::Owned;
use crate::policy::Policy;
use crate::report::Report;
use crate::shutdown::Shutdown;

/// The connections a [`Closer`] takes: rust-openssl streams on mio sockets.
pub type Stream = SslStream<TcpStream>;

/// Owns connections being shut down, on one thread, and hands back their reports.
///
/// Give it a connection with [`add`](Closer::add) (with a tag of yours, returned
/// with the report) and forget about it: the Closer runs the shutdown under its
/// policy, queues the report for [`reports`](Closer::reports) as soon as it is
/// final, and closes the connection (`SSL_free`, `close`): in the same call when
/// it has time to spare (no other deadline due within 2 ms), else, so that a
/// burst of reports never waits behind its frees, in a later call with time to
/// spare ([`next_deadline`](Closer::next_deadline) is then due at once) or, if
/// deadlines keep it busy, once the connection has waited 100 ms (at most 1 ms of
/// frees per call). The shutdown itself never runs past the policy's bound.
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
    engine: Engine<Owned, T>,
    policy: Policy,
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
            .field("pending", &self.engine.pending())
            .field("reports", &self.engine.reports_waiting())
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

impl<T> Closer<T> {
    /// A Closer with its own `mio::Poll`.
    ///
    /// # Errors
    /// `InvalidInput` for a [`Mode::StopTls`](crate::Mode::StopTls) policy: the
    /// Closer closes every connection, STOPTLS keeps it. The error of
    /// `mio::Poll::new` otherwise.
    pub fn new(policy: &Policy) -> io::Result<Self> {
        check_policy(policy)?;
        Ok(Closer {
            engine: Engine::new()?,
            policy: policy.clone(),
        })
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
        Ok(Closer {
            engine: Engine::with_registry(registry, tokens)?,
            policy: policy.clone(),
        })
    }

    /// The policy connections are shut down under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Shutdowns in progress.
    pub fn pending(&self) -> usize {
        self.engine.pending()
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
        stream: Stream,
        tag: T,
        prepare: impl FnOnce(Shutdown<Stream>) -> Shutdown<Stream>,
    ) -> Result<(), Rejected<T>> {
        let shutdown = prepare(Shutdown::new(stream, &self.policy)).map_conn(Owned::new);
        self.engine
            .add(shutdown, tag, Instant::now())
            .map_err(|(shutdown, tag, error)| Rejected {
                stream: shutdown.into_inner().into_stream(),
                tag,
                error,
            })
    }

    /// Handles one event of the caller's poll. Returns `false` if the event's token
    /// is not the Closer's (the caller handles it), `true` otherwise.
    pub fn handle_event(&mut self, event: &Event, now: Instant) -> bool {
        self.engine.handle_event(event, now)
    }

    /// Times out the shutdowns whose deadline is at or before `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        self.engine.handle_timeouts(now);
    }

    /// The earliest deadline of a pending shutdown (it may belong to one that has
    /// finished since: waking for it is harmless). Use it in the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.engine.next_deadline()
    }

    /// The finished shutdowns' reports, with their tags, in the order they ended.
    pub fn reports(&mut self) -> std::collections::vec_deque::Drain<'_, (T, Report)> {
        self.engine.reports()
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
        self.engine.poll(timeout)
    }

    /// With the Closer's own poll: runs until every pending shutdown has reported.
    /// Bounded by the policy: each shutdown ends by its last deadline.
    pub fn finish(&mut self) -> io::Result<()> {
        self.engine.finish()
    }
}
