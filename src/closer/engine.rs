//! The engine of the Closers (Rust's [`Closer`](crate::Closer) and C's
//! `closenotify_closer`): connections being shut down in slots of one mio
//! registry, their deadlines in a [`DeadlineQueue`], their reports in order.
//!
//! A finished connection's report is queued first. Its teardown (`SSL_free`,
//! `close`, some 15 µs) runs at once when the engine has time to spare (no
//! deadline due within [`IDLE_MARGIN`]): the connection is still warm in the
//! cache then, and freeing it costs least. Otherwise it waits for a later call
//! with time to spare, or, under a load that never leaves such time, until it
//! has waited [`TEARDOWN_AGE`] (then [`TEARDOWN_BUDGET`] of frees per call). A
//! burst of timeouts thus reaches the caller without waiting behind the frees of
//! the burst, and the memory and fds still come back, within a bounded time. (A
//! connection that ends inside `add` waits for the engine's next call.)

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::deadline::DeadlineQueue;
use crate::machine::{Connection, Progress, Ready};
use crate::report::Report;
use crate::shutdown::Shutdown;

/// The time a call spends tearing down connections that waited `TEARDOWN_AGE`
/// while deadlines were due: the reports of that call wait behind this much at
/// most, and every call makes progress.
const TEARDOWN_BUDGET: Duration = Duration::from_millis(1);

/// Teardown runs when no deadline is due within this margin.
const IDLE_MARGIN: Duration = Duration::from_millis(2);

/// How long a finished connection waits for its teardown while deadlines keep
/// the engine busy, before every call spends up to `TEARDOWN_BUDGET` on such
/// connections.
const TEARDOWN_AGE: Duration = Duration::from_millis(100);

/// Connections torn down between two checks of the clock.
const IDLE_SLICE: usize = 16;

/// Events handled per `poll` of the engine's own `mio::Poll`.
const EVENTS: usize = 1024;

/// What the engine needs of a connection it owns, beyond the machine's.
pub(crate) trait Closable: Connection + AsRawFd {
    /// Configures the connection for a closer, before its shutdown starts
    /// (`ssl::prepare_for_closer`).
    fn prepare_for_closer(&mut self);
    /// Frees what the connection holds and no longer needs (OpenSSL's empty
    /// record buffers): when its shutdown starts waiting, and when it ends with
    /// its teardown left for a later call.
    fn free_buffers(&mut self);
}

pub(crate) struct Engine<C: Closable, T> {
    driver: Driver,
    tokens: Range<usize>,
    slots: Vec<Slot<C, T>>,
    free: Vec<usize>,
    deadlines: DeadlineQueue<(usize, u32)>,
    /// `handle_timeouts`' list of what is due (kept for its allocation).
    due: Vec<(Instant, (usize, u32))>,
    reports: VecDeque<(T, Report)>,
    /// Finished connections whose teardown waits, oldest first, with the time
    /// each finished and the round it finished in.
    retired: VecDeque<(Instant, u64, Shutdown<C>)>,
    /// Rounds so far: a round is the events of one poll, then `handle_timeouts`.
    /// A connection is torn down in a later round than the one that reported it.
    round: u64,
}

/// Where the engine's readiness comes from.
enum Driver {
    /// Its own poll (Rust's `Closer::new`, the C closer), polled by `poll`.
    Own { poll: Poll, events: Events },
    /// The caller's registry: the caller polls and hands the events over.
    Shared(Registry),
}

struct Slot<C: Connection, T> {
    generation: u32,
    entry: Option<Entry<C, T>>,
}

struct Entry<C: Connection, T> {
    shutdown: Shutdown<C>,
    tag: T,
    /// The deadline of the wait in progress as it stands in the queue (`None`
    /// before the first wait, and once `handle_timeouts` popped it); queue
    /// entries with another deadline are stale.
    deadline: Option<Instant>,
}

impl<C: Closable, T> Engine<C, T> {
    /// An engine with its own `mio::Poll`.
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        Ok(Engine::build(
            Driver::Own {
                poll,
                events: Events::with_capacity(EVENTS),
            },
            0..usize::MAX,
        ))
    }

    /// An engine on the caller's registry, with the caller's tokens.
    pub fn with_registry(registry: &Registry, tokens: Range<usize>) -> io::Result<Self> {
        Ok(Engine::build(Driver::Shared(registry.try_clone()?), tokens))
    }

    fn build(driver: Driver, tokens: Range<usize>) -> Self {
        Engine {
            driver,
            tokens,
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: DeadlineQueue::new(),
            due: Vec::new(),
            reports: VecDeque::new(),
            retired: VecDeque::new(),
            round: 1,
        }
    }

    /// The engine's own poll, for a caller that polls its fd (C).
    #[cfg(feature = "capi")]
    pub fn own_poll(&self) -> Option<&Poll> {
        match &self.driver {
            Driver::Own { poll, .. } => Some(poll),
            Driver::Shared(_) => None,
        }
    }

    /// Shutdowns added and not yet reported: the slots in use.
    pub fn pending(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn reports_waiting(&self) -> usize {
        self.reports.len()
    }

    /// Takes `shutdown` (not started): registers its socket and starts it.
    ///
    /// # Errors
    /// The shutdown and the tag, untouched, when the token range is exhausted or
    /// the registration fails.
    // The error hands the caller's shutdown back by value, on a rare path.
    #[allow(clippy::result_large_err)]
    pub fn add(
        &mut self,
        mut shutdown: Shutdown<C>,
        tag: T,
        now: Instant,
    ) -> Result<(), (Shutdown<C>, T, io::Error)> {
        let Some(index) = self.alloc() else {
            let error = io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the closer's token range is exhausted",
            );
            return Err((shutdown, tag, error));
        };
        let token = Token(self.tokens.start + index);
        let fd = shutdown.get_ref().as_raw_fd();
        if let Err(error) = self.register(fd, token) {
            self.free.push(index);
            return Err((shutdown, tag, error));
        }
        shutdown.get_mut().prepare_for_closer();
        // Registered just now: epoll reports what is already waiting, so the
        // machine need not try a read before it waits. The connection is closed
        // with its report, and `now` is always fresh.
        if let Some(setup) = shutdown.setup() {
            setup.level_readiness = true;
            setup.closed_after_report = true;
        }
        shutdown.adapter_clock(Instant::now);
        self.slots[index].entry = Some(Entry {
            shutdown,
            tag,
            deadline: None,
        });
        let retired = self.retired.len();
        self.drive(index, Ready::NONE, now, false);
        if self.retired.len() > retired {
            // Finished at once, outside a round: its report is out before the next
            // round, which may tear it down.
            if let Some(last) = self.retired.back_mut() {
                last.1 = self.round - 1;
            }
        }
        if let Some(entry) = self.slots[index].entry.as_mut() {
            // Waiting now: OpenSSL's record buffers go back until the peer's alert
            // arrives (with RELEASE_BUFFERS, the ones it then needs are freed again).
            entry.shutdown.get_mut().free_buffers();
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

    fn register(&self, fd: i32, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let mut source = SourceFd(&fd);
        let (registry, shared) = match &self.driver {
            Driver::Own { poll, .. } => (poll.registry(), false),
            Driver::Shared(registry) => (registry, true),
        };
        match registry.register(&mut source, token, interest) {
            // Registered with this registry by the caller (a shared poll): the
            // engine's token replaces the caller's.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && shared => {
                registry.reregister(&mut source, token, interest)
            }
            // On the engine's own poll only the engine registers: the fd is one
            // of its connections' (whose teardown may still be due).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
                e.kind(),
                format!("fd {fd} is already one of this closer's connections"),
            )),
            other => other,
        }
    }

    /// One event of the poll the engine is registered with; `false` if its token
    /// is not the engine's.
    pub fn handle_event(&mut self, event: &Event, now: Instant) -> bool {
        let token = event.token().0;
        if !self.tokens.contains(&token) {
            return false;
        }
        // An event for a slot freed (or reused) since it was queued is spurious:
        // the machine ignores readiness it does not wait for.
        self.drive(token - self.tokens.start, Ready::from(event), now, true);
        true
    }

    /// The teardown of what finished before this call, then the shutdowns whose
    /// deadline is at or before `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        self.teardown();
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
                self.drive(index, Ready::NONE, now, true);
            }
        }
        self.due = due;
        self.round += 1;
    }

    /// Frees finished connections: those that waited `TEARDOWN_AGE`, for up to
    /// `TEARDOWN_BUDGET`, then any while no deadline is due within `IDLE_MARGIN`.
    fn teardown(&mut self) {
        let now = Instant::now();
        // Only what earlier rounds reported.
        let ready = self
            .retired
            .partition_point(|(_, round, _)| *round < self.round);
        let aged = self.retired.partition_point(|(at, round, _)| {
            *round < self.round && now.saturating_duration_since(*at) >= TEARDOWN_AGE
        });
        let mut done = 0;
        while done < aged && now.elapsed() < TEARDOWN_BUDGET {
            let n = IDLE_SLICE.min(aged - done);
            self.retired.drain(..n);
            done += n;
        }
        while done < ready && self.idle(Instant::now()) {
            let n = IDLE_SLICE.min(ready - done);
            self.retired.drain(..n);
            done += n;
        }
    }

    /// No deadline of a pending shutdown is due within `IDLE_MARGIN` of `now`.
    fn idle(&self, now: Instant) -> bool {
        self.pending() == 0 || self.deadlines.peek().is_none_or(|d| d > now + IDLE_MARGIN)
    }

    /// The earliest deadline of a pending shutdown (it may belong to one that has
    /// finished since: waking for it is harmless), or the time finished
    /// connections can be torn down if that is sooner (now when the engine is
    /// idle); `None` when there is neither.
    pub fn next_deadline(&self) -> Option<Instant> {
        let deadline = if self.pending() == 0 {
            None
        } else {
            self.deadlines.peek()
        };
        let Some((oldest, _, _)) = self.retired.front() else {
            return deadline;
        };
        let now = Instant::now();
        if self.idle(now) {
            return Some(now);
        }
        let forced = *oldest + TEARDOWN_AGE;
        Some(deadline.map_or(forced, |d| d.min(forced)))
    }

    pub fn reports(&mut self) -> std::collections::vec_deque::Drain<'_, (T, Report)> {
        self.reports.drain(..)
    }

    /// The oldest `n` reports (or fewer), taken.
    #[cfg(feature = "capi")]
    pub fn take_reports(
        &mut self,
        n: usize,
    ) -> std::collections::vec_deque::Drain<'_, (T, Report)> {
        let n = n.min(self.reports.len());
        self.reports.drain(..n)
    }

    /// One step of slot `index`. A shutdown that ends is reported; its connection
    /// is torn down at once when `teardown` allows it and the engine has time to
    /// spare (its memory is still warm in the cache: the cheapest moment), and
    /// retired for a later round otherwise.
    fn drive(&mut self, index: usize, ready: Ready, now: Instant, teardown: bool) {
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
                let Some(mut entry) = slot.entry.take() else {
                    return;
                };
                slot.generation = slot.generation.wrapping_add(1);
                self.reports.push_back((entry.tag, report));
                self.free.push(index);
                if teardown && self.idle(Instant::now()) {
                    drop(entry.shutdown);
                } else {
                    // Its empty buffers go now; the rest waits for the teardown.
                    entry.shutdown.get_mut().free_buffers();
                    self.retired.push_back((now, self.round, entry.shutdown));
                }
            }
        }
    }

    /// With the engine's own poll: waits for readiness or the next deadline (at
    /// most `timeout`), then handles what happened. Returns the number of reports
    /// waiting.
    ///
    /// # Errors
    /// `Unsupported` on the caller's registry; the error of `mio::Poll::poll`
    /// otherwise (an interrupted wait is not one).
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let now = Instant::now();
        let until_deadline = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        let wait = match (timeout, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Driver::Own { poll, events } = &mut self.driver else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this closer is driven by the caller's poll",
            ));
        };
        // The events leave the engine while they are handled (an empty `Events`
        // allocates nothing), and come back for the next call.
        let mut taken = std::mem::replace(events, Events::with_capacity(0));
        let result = match poll.poll(&mut taken, wait) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        };
        let now = Instant::now();
        for event in taken.iter() {
            self.handle_event(event, now);
        }
        self.handle_timeouts(now);
        if let Driver::Own { events, .. } = &mut self.driver {
            *events = taken;
        }
        result.map(|()| self.reports.len())
    }

    /// With the engine's own poll: runs until every pending shutdown has reported
    /// and every finished connection is closed.
    pub fn finish(&mut self) -> io::Result<()> {
        while self.pending() > 0 {
            self.poll(None)?;
        }
        self.retired.clear();
        Ok(())
    }
}

impl<C: Closable, T> Drop for Engine<C, T> {
    /// Connections still pending are closed without waiting further (their
    /// shutdowns are abandoned and report nothing).
    fn drop(&mut self) {
        if self.pending() > 0 {
            log::debug!(
                "closenotify: closer dropped with {} pending",
                self.pending()
            );
        }
    }
}
