//! # closenotify: end TLS connections correctly
//!
//! Everyone calls `SSL_shutdown`; few get it right. Servers hang on peers that never
//! answer, clients cannot tell a complete response from a truncated one, the last
//! bytes vanish in an RST, sessions break, C programs die of `SIGPIPE`.
//! `closenotify` drives the end of an OpenSSL connection through four stages and
//! says, with a typed [`Report`], exactly how it ended:
//!
//! 1. **flush** — get our close_notify into the kernel (`SSL_shutdown`), waiting for
//!    WRITE readiness when the peer is not reading;
//! 2. **half-close** — `shutdown(SHUT_WR)` once, and only once, close_notify is out;
//! 3. **await_peer** — read (with `SSL_read`, never a second `SSL_shutdown`) until
//!    the peer's close_notify, discarding at most `drain_limit` bytes of data;
//! 4. **linger** (optional) — wait for the kernel send queue to empty before close.
//!
//! Each stage is bounded by the [`Policy`]; nothing ever busy-loops.
//!
//! ```
//! # use std::net::{TcpListener, TcpStream};
//! # use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslVerifyMode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (cert, key) = closenotify::doc_support::self_signed("localhost")?;
//! # let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
//! # acceptor.set_certificate(&cert)?;
//! # acceptor.set_private_key(&key)?;
//! # let acceptor = acceptor.build();
//! # let listener = TcpListener::bind("127.0.0.1:0")?;
//! # let addr = listener.local_addr()?;
//! # let server = std::thread::spawn(move || {
//! #     let (tcp, _) = listener.accept().unwrap();
//! #     let mut tls = acceptor.accept(tcp).unwrap();
//! #     // A well-behaved peer: answers our close_notify with its own.
//! #     let _ = std::io::Read::read(&mut tls, &mut [0u8; 16]);
//! #     let _ = tls.shutdown();
//! # });
//! # let mut connector = SslConnector::builder(SslMethod::tls())?;
//! # connector.set_verify(SslVerifyMode::NONE);
//! # let connector = connector.build();
//! use closenotify::{shutdown_blocking, Outcome, Policy};
//! use std::time::Duration;
//!
//! // `stream` is an established `openssl::ssl::SslStream<std::net::TcpStream>`.
//! let mut stream = connector.connect("localhost", TcpStream::connect(addr)?)?;
//!
//! let policy = Policy::builder()
//!     .peer_timeout(Duration::from_millis(500))
//!     .build()?;
//! let report = shutdown_blocking(&mut stream, &policy);
//!
//! assert_eq!(report.outcome, Outcome::Clean); // both close_notify alerts exchanged
//! assert!(report.session_resumable);
//! println!("{report}");
//! report.result()?; // or turn any other outcome into an error (and an io::Error)
//! # server.join().unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! ## Choosing an entry point
//! - Blocking code: [`shutdown_blocking`]; [`shutdown_blocking_read`] to read the
//!   rest of the peer's answer after our close_notify (the TLS half-close).
//! - Your own event loop: [`Shutdown`] is the state machine itself. Call
//!   [`Shutdown::poll`] (or [`Shutdown::poll_read`]) with the current time and what
//!   the socket reported; it answers with a [`Wait`] (an [`Interest`] and a
//!   deadline) or the [`Report`]. It never sleeps, and its deadlines come only from
//!   the `now` it is given. With mio, register the socket once for
//!   `READABLE | WRITABLE` and pass [`Ready::from`] each event.
//! - Leaving TLS and keeping the connection (STOPTLS): [`Mode::StopTls`], then
//!   [`into_transport`] for the socket.
//! - Many connections on one thread: [`Closer`] owns them, runs their shutdowns on
//!   one `mio::Poll` (its own or yours) and hands back the reports.
//! - A raw `SSL*` and socket, as C callers own them: [`RawConnection`], and the C
//!   API in `include/closenotify.h`.
//! - tokio and tokio-openssl (the `tokio` feature): `closenotify::tokio::shutdown`
//!   and the half-close reader `closenotify::tokio::HalfClose`.
//!
//! ## Guarantees
//! - Every entry point ends within its policy, whatever the socket's mode: a
//!   blocking socket is in non-blocking mode while the shutdown runs, and back
//!   afterwards. [`Report::elapsed`] is the time that really passed.
//! - A raw `SSL*` must read and write through OpenSSL's socket BIO on the given fd;
//!   anything else is refused before either socket is touched.
//! - `SSL_shutdown` is called at most once to send; the peer's answer is read with
//!   `SSL_read`, and nothing reaches the wire after our close_notify (a TLS 1.3
//!   KeyUpdate answer goes to a sink).
//! - `SIGPIPE` is never raised in the host process ([`RawConnection`] blocks it
//!   around OpenSSL's writes; Rust streams send with `MSG_NOSIGNAL`).
//! - `truncated` is never reported as `clean`, also when the context sets
//!   `SSL_OP_IGNORE_UNEXPECTED_EOF` (suspended while the shutdown reads).
//! - Sessions stay resumable only after `clean` or `sent_only`; every other outcome
//!   removes them from the cache (see [`Report::session_resumable`]).
//! - A second shutdown of the same connection returns the same report.
//! - A connection whose handshake never finished, or that already hit a fatal
//!   error, gets a `quiet` shutdown: nothing is sent and `SSL_shutdown` is not
//!   called in a state OpenSSL forbids.
//! - Each stage transition is logged at debug level with the `log` crate.

#![warn(missing_docs)]
#![deny(unused_must_use)]

// Only `capi` feeds the C header; cbindgen skips the other modules.
/// cbindgen:ignore
mod blocking;
#[cfg(any(feature = "capi", test))]
pub mod capi;
/// cbindgen:ignore
mod closer;
/// cbindgen:ignore
mod deadline;
/// cbindgen:ignore
mod error;
/// cbindgen:ignore
mod event;
/// cbindgen:ignore
mod machine;
/// cbindgen:ignore
mod names;
/// cbindgen:ignore
mod ossl;
/// cbindgen:ignore
mod policy;
/// cbindgen:ignore
mod report;
/// cbindgen:ignore
mod shutdown;
/// cbindgen:ignore
mod sigpipe;
/// cbindgen:ignore
mod socket;
/// cbindgen:ignore
mod stoptls;
/// cbindgen:ignore
#[cfg(feature = "tokio")]
pub mod tokio;

/// cbindgen:ignore
#[doc(hidden)]
pub mod doc_support;

pub use blocking::{shutdown_blocking, shutdown_blocking_read};
pub use closer::{Closer, Rejected, Stream};
pub use deadline::DeadlineQueue;
pub use error::{CloseError, Error, ReadError};
pub use machine::{Connection, Interest, Progress, Ready, ShutdownAnswer, Status, TlsError, Wait};
pub use ossl::RawConnection;
pub use policy::{
    Mode, Policy, PolicyBuilder, ResetOnTimeout, DEFAULT_DRAIN_LIMIT, DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_PEER_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT,
};
pub use report::{
    Alert, AlertDirection, AlertLevel, AlertLog, AlertRecord, Initiator, Outcome, Report, Stage,
    TlsVersion,
};
pub use shutdown::Shutdown;
pub use stoptls::{into_transport, IntoTransportError};

/// Re-exported so that users name the same `openssl-sys` types as the crate.
pub use openssl_sys;

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
