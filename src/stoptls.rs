//! [`into_transport`]: the plaintext connection back, after STOPTLS.

use std::os::fd::{AsFd, OwnedFd};

use openssl::ssl::SslStream;

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
/// let mut tcp = into_transport(tls).map_err(|_| {
///     std::io::Error::other(format!("STOPTLS failed: {report}"))
/// })?;
/// tcp.write_all(b"plaintext again\n")?;
/// let mut line = String::new();
/// BufReader::new(&tcp).read_line(&mut line)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// The stream, untouched, when its last shutdown was not a successful STOPTLS
/// (no shutdown yet, another mode, or another outcome: close it), or when the
/// descriptor cannot be duplicated (`EMFILE`).
pub fn into_transport<S: AsFd + From<OwnedFd>>(stream: SslStream<S>) -> Result<S, SslStream<S>> {
    let reusable = crate::ossl::saved_report(&stream).is_some_and(|r| r.transport_reusable);
    if !reusable {
        return Err(stream);
    }
    match stream.get_ref().as_fd().try_clone_to_owned() {
        // Freeing the SSL closes its descriptor; the duplicate keeps the socket.
        Ok(fd) => Ok(S::from(fd)),
        Err(err) => {
            log::debug!("closenotify: cannot duplicate the transport: {err}");
            Err(stream)
        }
    }
}
