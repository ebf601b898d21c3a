//! Errors: bad input to the API, and the outcomes of [`Report::result`](crate::Report::result).

use std::io;

use crate::report::{Alert, Stage};

/// Everything that can go wrong, as one enum.
///
/// Bad input to the API ([`Error::InvalidPolicy`], [`Error::InvalidArgument`]) is
/// reported before anything happens to the connection. The other variants describe
/// how a connection ended ([`Report::result`](crate::Report::result)): a misbehaving
/// peer is an outcome, never a failure of the call.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A policy value is out of range.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// An argument is unusable: a null `SSL*`, a negative or non-socket fd.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The peer closed the transport without close_notify.
    #[error("connection truncated: the peer closed without close_notify")]
    Truncated,
    /// A transport error.
    #[error("connection reset: {}", io::Error::from_raw_os_error(*.os_error))]
    Reset {
        /// The errno.
        os_error: i32,
    },
    /// The peer sent a fatal alert.
    #[error("peer sent fatal alert {alert}")]
    PeerAlert {
        /// The alert.
        alert: Alert,
    },
    /// Our side rejected what the peer sent.
    #[error("protocol error: {detail}{}", .alert.map(|a| format!(" (alert {a})")).unwrap_or_default())]
    Protocol {
        /// The alert our side raised, when OpenSSL names one.
        alert: Option<Alert>,
        /// OpenSSL's reason.
        detail: &'static str,
    },
    /// A stage ran past its timeout.
    #[error("shutdown timed out in stage {stage}")]
    TimedOut {
        /// The stage.
        stage: Stage,
    },
    /// The peer sent more application data than the drain limit allows.
    #[error("peer sent more than the drain limit ({discarded} bytes discarded)")]
    DrainLimit {
        /// Bytes discarded before giving up.
        discarded: u64,
    },
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::InvalidPolicy(_) | Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::Truncated => io::ErrorKind::UnexpectedEof,
            Error::Reset { .. } => io::ErrorKind::ConnectionReset,
            Error::PeerAlert { .. } | Error::Protocol { .. } | Error::DrainLimit { .. } => {
                io::ErrorKind::InvalidData
            }
            Error::TimedOut { .. } => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_io_error_kinds() {
        let timed_out: io::Error = Error::TimedOut {
            stage: Stage::AwaitPeer,
        }
        .into();
        assert_eq!(timed_out.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            timed_out.to_string(),
            "shutdown timed out in stage await_peer"
        );

        let reset: io::Error = Error::Reset {
            os_error: libc::ECONNRESET,
        }
        .into();
        assert_eq!(reset.kind(), io::ErrorKind::ConnectionReset);
        assert!(reset.to_string().contains("reset by peer"), "{reset}");

        let eof: io::Error = Error::Truncated.into();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);

        let alert: io::Error = Error::PeerAlert {
            alert: Alert::UnknownCa,
        }
        .into();
        assert_eq!(alert.kind(), io::ErrorKind::InvalidData);
        assert_eq!(alert.to_string(), "peer sent fatal alert unknown_ca(48)");
    }
}
