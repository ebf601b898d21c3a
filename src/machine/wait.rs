//! What the state machine waits for ([`Wait`], [`Interest`]), what it answers
//! ([`Progress`]), and what the socket reported ([`Ready`]).

use std::time::{Duration, Instant};

use crate::report::Report;

/// What to wait for before calling [`Shutdown::poll`](crate::Shutdown::poll) again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interest {
    /// The socket becoming readable.
    Read,
    /// The socket becoming writable.
    Write,
    /// Only time: call again at the deadline (the linger stage re-checks the send
    /// queue, which has no readiness event).
    Timer,
}

/// "Wait for `interest`, at the latest until `deadline`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Wait {
    /// What to wait for.
    pub interest: Interest,
    /// When to call again even if nothing happened.
    pub deadline: Instant,
}

impl Wait {
    /// Time left until the deadline, zero if it has passed.
    pub fn timeout(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// The answer of [`Shutdown::poll`](crate::Shutdown::poll).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Progress {
    /// Not finished: wait, then call again.
    Wait(Wait),
    /// Finished; every later call returns the same report.
    Done(Report),
}

/// What the socket reported since the last call: the input of [`Shutdown::poll`](crate::Shutdown::poll).
///
/// A wake-up whose readiness does not match what the machine waits for, before the
/// deadline, is spurious: the call is a no-op and makes no OpenSSL call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ready {
    pub(super) readable: bool,
    pub(super) writable: bool,
}

impl Ready {
    /// Nothing: a timer wake-up.
    pub const NONE: Ready = Ready {
        readable: false,
        writable: false,
    };
    /// The socket is readable (or hung up, or has an error).
    pub const READABLE: Ready = Ready {
        readable: true,
        writable: false,
    };
    /// The socket is writable (or hung up, or has an error).
    pub const WRITABLE: Ready = Ready {
        readable: false,
        writable: true,
    };
    /// Unknown readiness: try whatever the machine waits for. Use it when the
    /// event loop cannot say what happened (the C step API does).
    pub const ALL: Ready = Ready {
        readable: true,
        writable: true,
    };

    /// Whether this includes readability.
    pub fn is_readable(self) -> bool {
        self.readable
    }
    /// Whether this includes writability.
    pub fn is_writable(self) -> bool {
        self.writable
    }
}

impl std::ops::BitOr for Ready {
    type Output = Ready;
    fn bitor(self, rhs: Ready) -> Ready {
        Ready {
            readable: self.readable || rhs.readable,
            writable: self.writable || rhs.writable,
        }
    }
}
