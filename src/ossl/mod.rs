//! The only module that calls `openssl-sys`.
//!
//! - `core`: the one [`Connection`](crate::Connection) implementation, over a
//!   backend that supplies its handles and its I/O calls;
//! - the backends: `stream` (rust-openssl's `SslStream`), `raw`
//!   ([`RawConnection`]: a raw `SSL*` and its socket, as C callers own them),
//!   `tokio` (tokio-openssl's stream, through its poll methods);
//! - `ssl`: what is done on the `SSL` object itself (options, flags, sessions,
//!   the per-`SSL` state kept in ex_data);
//! - `classify` and `reasons`: OpenSSL's answers turned into
//!   [`TlsError`](crate::TlsError)s, the one place that reads the error queue;
//! - `ext`: the few OpenSSL functions `openssl-sys` does not declare.

mod classify;
mod core;
mod ext;
mod fdbio;
mod fdio;
mod owned;
mod raw;
mod reasons;
mod ssl;
mod stream;
#[cfg(feature = "tokio")]
pub(crate) mod tokio;

pub(crate) use self::owned::Owned;
pub use self::raw::RawConnection;
pub(crate) use self::stream::saved_report;

use crate::machine::TlsError;

impl From<&openssl::ssl::Error> for TlsError {
    /// Classifies an error rust-openssl returned (from `ssl_read`, `ssl_write`,
    /// `connect`, ...) the way the shutdown classifies its own; use it with
    /// [`Shutdown::after_error`](crate::Shutdown::after_error).
    ///
    /// The error alone does not say which TLS version the connection negotiated;
    /// where OpenSSL raises a different alert for TLS 1.3 with the same reason (a
    /// bad record version, OpenSSL 3.2+), the TLS 1.2 alert is named.
    fn from(err: &openssl::ssl::Error) -> TlsError {
        classify::classify_stream(err, false)
    }
}
