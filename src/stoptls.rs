//! [`into_transport`]: the plaintext connection back, after STOPTLS.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use openssl::ssl::SslStream;

use crate::report::Outcome;

/// [`into_transport`] refused: the stream, untouched, and why.
pub struct IntoTransportError<S> {
    /// The stream, as it was given: close it (drop it).
    pub stream: SslStream<S>,
    reason: String,
}

impl<S> IntoTransportError<S> {
    /// Why the transport cannot be handed back.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The stream, as it was given.
    pub fn into_stream(self) -> SslStream<S> {
        self.stream
    }
}

impl<S> fmt::Debug for IntoTransportError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoTransportError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Display for IntoTransportError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the transport cannot be handed back: {}", self.reason)
    }
}

impl<S> std::error::Error for IntoTransportError<S> {}

/// Leaves TLS for good and hands back the transport, after a
/// [`Mode::StopTls`](crate::Mode::StopTls) shutdown of `stream` that succeeded
/// ([`Report::transport_reusable`](crate::Report::transport_reusable)): STOPTLS,
/// FTPS `CCC`, or any protocol that goes back to plaintext on the same TCP
/// connection.
///
/// The transport is the same socket (a duplicate of its descriptor, made before
/// the `SslStream` and its `SSL` are freed), positioned exactly after the peer's
/// close_notify: the shutdown read nothing past it, so no byte is held back and
/// there is nothing to hand over besides the socket. Its blocking mode is the one
/// it had before the shutdown. A stream registered with a `mio::Poll` must be
/// deregistered first: epoll keeps a registration of the old descriptor alive
/// through the duplicate. With a [`Shutdown`](crate::Shutdown) that owns the
/// stream, take it back with [`Shutdown::into_inner`](crate::Shutdown::into_inner).
///
/// ```no_run
/// use closenotify::{into_transport, shutdown_blocking, Mode, Policy};
/// use std::io::{BufRead, BufReader, Write};
///
/// # fn demo(mut tls: openssl::ssl::SslStream<std::net::TcpStream>) -> std::io::Result<()> {
/// let policy = Policy::builder().mode(Mode::StopTls).build().expect("valid policy");
/// let report = shutdown_blocking(&mut tls, &policy);
/// let mut tcp = into_transport(tls).map_err(|e| std::io::Error::other(e.to_string()))?;
/// tcp.write_all(b"plaintext again\n")?;
/// let mut line = String::new();
/// BufReader::new(&tcp).read_line(&mut line)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// The stream, untouched, with the reason, when its last shutdown was not a
/// successful STOPTLS (no shutdown yet, another mode, another outcome, or
/// read-ahead had buffered bytes past the peer's close_notify: close it), or
/// when the descriptor cannot be duplicated (`EMFILE`).
pub fn into_transport<S: AsFd + From<OwnedFd>>(
    stream: SslStream<S>,
) -> Result<S, IntoTransportError<S>> {
    let refuse = |stream, reason: String| Err(IntoTransportError { stream, reason });
    let report = match crate::ossl::saved_report(&stream) {
        None => return refuse(stream, "no shutdown has finished on this stream".into()),
        Some(r) if r.outcome != Outcome::Clean => {
            return refuse(stream, format!("the shutdown did not end clean: {r}"))
        }
        Some(r) => r,
    };
    if !report.transport_reusable {
        let reason = match report.detail {
            Some(detail) => format!("the STOPTLS cannot hand the transport back: {detail}"),
            None => "the shutdown was not a STOPTLS (Mode::StopTls)".into(),
        };
        return refuse(stream, reason);
    }
    match stream.get_ref().as_fd().try_clone_to_owned() {
        // Freeing the SSL closes its descriptor; the duplicate keeps the socket.
        Ok(fd) => Ok(S::from(fd)),
        Err(err) => refuse(stream, format!("cannot duplicate the socket: {err}")),
    }
}
