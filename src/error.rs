//! The two kinds of failure, kept apart: [`Error`] (the call was misused; nothing
//! happened to the connection) and [`CloseError`] (the connection did not end in
//! order: the [`Report`] says how it ended).

use std::fmt;
use std::io;

use crate::report::{Outcome, Report};

/// A call that cannot do what was asked: a policy or an argument it cannot
/// honour. It is reported before anything happens to the connection; how a
/// connection ended is never an `Error` (it is the [`Report`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A policy value is out of range, or the entry point cannot honour it.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// An argument is unusable: a null `SSL*`, a negative or non-socket fd, an
    /// `SSL*` whose BIOs are not on the given socket.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another shutdown of this `SSL*` is in progress (a second
    /// [`RawConnection`](crate::RawConnection), or a C shutdown object, on it):
    /// two would fight over the socket's mode and the `SSL`'s state.
    #[error("busy: {0}")]
    Busy(String),
}

impl From<Error> for io::Error {
    /// `InvalidInput` for a bad policy or argument, `ResourceBusy` for a
    /// connection another shutdown is running on.
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::InvalidPolicy(_) | Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::Busy(_) => io::ErrorKind::ResourceBusy,
        };
        io::Error::new(kind, err)
    }
}

/// A connection that did not end in order: the `Err` of
/// [`Report::result`], which carries the [`Report`].
///
/// It converts to an [`io::Error`] whose kind follows the outcome:
/// `UnexpectedEof` for `truncated`, `ConnectionReset` for `reset`, `TimedOut`
/// for `timed_out`, `InvalidData` for `peer_alert`, `protocol_error` and
/// `drain_limit`. Its message is the report's one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseError {
    report: Report,
}

impl CloseError {
    pub(crate) fn new(report: Report) -> CloseError {
        CloseError { report }
    }

    /// How the connection ended.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The outcome: never `clean`, `sent_only` or `quiet`.
    pub fn outcome(&self) -> Outcome {
        self.report.outcome
    }

    /// The kind of [`io::Error`] this converts to.
    pub fn kind(&self) -> io::ErrorKind {
        match self.report.outcome {
            Outcome::Truncated => io::ErrorKind::UnexpectedEof,
            Outcome::Reset => io::ErrorKind::ConnectionReset,
            Outcome::TimedOut => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidData,
        }
    }
}

impl fmt::Display for CloseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS connection not closed in order: {}", self.report)
    }
}

impl std::error::Error for CloseError {}

impl From<CloseError> for io::Error {
    fn from(err: CloseError) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// The failure of a call that delivers the peer's answer to a writer of yours
/// ([`shutdown_blocking_read`](crate::shutdown_blocking_read)): the call was
/// misused, or your writer failed (the shutdown was then abandoned as a dropped
/// [`Shutdown`](crate::Shutdown) leaves it). How the connection ended is the
/// `Ok` report either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The call cannot do what was asked; nothing happened to the connection.
    #[error(transparent)]
    Invalid(#[from] Error),
    /// The writer the answer went to failed.
    #[error("the writer of the peer's answer failed: {0}")]
    Write(#[source] io::Error),
}

impl From<ReadError> for io::Error {
    /// The misuse as [`Error`] converts it; the writer's error as it was.
    fn from(err: ReadError) -> io::Error {
        match err {
            ReadError::Invalid(err) => err.into(),
            ReadError::Write(err) => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misuse_converts_to_invalid_input() {
        let err: io::Error =
            Error::InvalidPolicy("peer_timeout must be at least 1 ms".into()).into();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            err.to_string(),
            "invalid policy: peer_timeout must be at least 1 ms"
        );
        let busy: io::Error = Error::Busy("x".into()).into();
        assert_eq!(busy.kind(), io::ErrorKind::ResourceBusy);
        let write: io::Error = ReadError::Write(io::ErrorKind::BrokenPipe.into()).into();
        assert_eq!(write.kind(), io::ErrorKind::BrokenPipe);
    }
}
