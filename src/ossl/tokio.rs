//! The backend for tokio-openssl's `SslStream`. Every OpenSSL call that does I/O
//! goes through one of the stream's public poll methods, with a context made from
//! the waker the async driver (`crate::tokio`) hands in, so that tokio-openssl's
//! BIO runs as it expects; `Poll::Pending` is a retry request. Everything else is
//! done on the `SSL` object only, as for every backend.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use openssl::ssl::SslRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

use super::classify::classify_stream;
use super::core::Backend;
use super::ssl;
use super::stream::ssl_mut_of;
use crate::machine::{ShutdownAnswer, TlsError};
use crate::socket;

/// A tokio-openssl stream as a connection of the machine.
pub(crate) struct TokioConnection<'a, S> {
    stream: &'a mut SslStream<S>,
    /// The waker the stream's I/O gets (the driver's: it notes I/O wake-ups).
    waker: Waker,
    /// `SSL_shutdown` finished inside a `poll_shutdown` whose half-close of the
    /// inner stream is still pending: the next attempt polls only the inner stream
    /// (a second `SSL_shutdown` would read).
    ssl_shutdown_done: bool,
    /// What the inner stream's `poll_shutdown` answered, for `half_close`.
    half_closed: Option<io::Result<()>>,
}

impl<'a, S> TokioConnection<'a, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    pub(crate) fn new(stream: &'a mut SslStream<S>, waker: Waker) -> Self {
        TokioConnection {
            stream,
            waker,
            ssl_shutdown_done: false,
            half_closed: None,
        }
    }

    /// One poll method of the stream, with the driver's context.
    fn poll<R>(
        &mut self,
        f: impl FnOnce(Pin<&mut SslStream<S>>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        let mut cx = Context::from_waker(&self.waker);
        f(Pin::new(&mut *self.stream), &mut cx)
    }

    /// `SSL_shutdown`, through `poll_shutdown`, which then half-closes the inner
    /// stream. Its answers are told apart with the `SSL`'s state: an error that
    /// carries OpenSSL's error is `SSL_shutdown`'s; a plain I/O error is
    /// `SSL_shutdown`'s write failing when OpenSSL still holds the alert
    /// (`SSL_want_write`), else the inner half-close's.
    fn poll_shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        if self.ssl_shutdown_done {
            return match self.poll(|s, cx| s.get_pin_mut().poll_shutdown(cx)) {
                Poll::Pending => Err(TlsError::WantWrite),
                Poll::Ready(answer) => {
                    self.ssl_shutdown_done = false;
                    self.half_closed = Some(answer);
                    Ok(self.shutdown_answer())
                }
            };
        }
        match self.poll(|s, cx| s.poll_shutdown(cx)) {
            Poll::Ready(Ok(())) if ssl::write_stuck(self.ssl()) => {
                // SSL_ERROR_ZERO_RETURN: the peer's close_notify is in and ours
                // could not be written; tokio-openssl takes that for success.
                Err(TlsError::CloseNotify)
            }
            Poll::Ready(Ok(())) => {
                self.half_closed = Some(Ok(()));
                Ok(self.shutdown_answer())
            }
            Poll::Ready(Err(err)) => match ssl_error(&err) {
                Some(ssl_err) => Err(classify_stream(ssl_err, ssl::is_tls13(self.ssl()))),
                None if ssl::write_stuck(self.ssl()) => Err(os_error(&err)),
                None => {
                    self.half_closed = Some(Err(err));
                    Ok(self.shutdown_answer())
                }
            },
            Poll::Pending => {
                if !ssl::write_stuck(self.ssl()) {
                    // Our close_notify is out; the inner half-close is pending.
                    self.ssl_shutdown_done = true;
                }
                Err(TlsError::WantWrite)
            }
        }
    }

    fn shutdown_answer(&self) -> ShutdownAnswer {
        if ssl::received_close_notify(self.ssl()) {
            ShutdownAnswer::Received
        } else {
            ShutdownAnswer::Sent
        }
    }
}

/// The `openssl::ssl::Error` tokio-openssl wrapped in an `io::Error`, if any.
fn ssl_error(err: &io::Error) -> Option<&openssl::ssl::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<openssl::ssl::Error>())
}

/// A plain I/O error: its errno (EIO when it has none, as for rust-openssl's).
fn os_error(err: &io::Error) -> TlsError {
    TlsError::Os(err.raw_os_error().unwrap_or(libc::EIO))
}

/// What an error of tokio-openssl's `poll_read`/`poll_write` stands for: the
/// OpenSSL error it wraps, classified as the blocking path classifies its own, or
/// the transport's errno.
fn classify_io(err: &io::Error, tls13: bool) -> TlsError {
    ssl_error(err).map_or_else(|| os_error(err), |e| classify_stream(e, tls13))
}

impl<S> Backend for TokioConnection<'_, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    fn ssl(&self) -> &SslRef {
        self.stream.ssl()
    }
    fn ssl_mut(&mut self) -> &mut SslRef {
        // SAFETY: `SslStream::ssl` returns the stream's own SSL.
        unsafe { ssl_mut_of(&mut *self.stream, SslStream::ssl) }
    }
    fn socket(&self) -> BorrowedFd<'_> {
        self.stream.get_ref().as_fd()
    }
    /// tokio's I/O objects are non-blocking already: the fd's mode is left alone.
    fn switches_blocking(&self) -> bool {
        false
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        ssl::with_clean_queue(|| self.poll_shutdown())
    }
    /// tokio-openssl answers `Ok` with nothing read both for close_notify and for
    /// an EOF without it: an `Eof` here, which the core tells apart by the
    /// `SSL`'s flags (as for every backend).
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        let mut buf = ReadBuf::uninit(buf);
        ssl::with_clean_queue(|| match self.poll(|s, cx| s.poll_read(cx, &mut buf)) {
            Poll::Pending => Err(TlsError::WantRead),
            Poll::Ready(Ok(())) => match buf.filled().len() {
                0 => Err(TlsError::Eof),
                n => Ok(n),
            },
            Poll::Ready(Err(err)) => Err(classify_io(&err, ssl::is_tls13(self.ssl()))),
        })
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        ssl::with_clean_queue(|| match self.poll(|s, cx| s.poll_write(cx, buf)) {
            Poll::Pending => Err(TlsError::WantWrite),
            Poll::Ready(Ok(n)) => Ok(n),
            Poll::Ready(Err(err)) => Err(classify_io(&err, ssl::is_tls13(self.ssl()))),
        })
    }
    /// tokio-openssl's `poll_shutdown` already did it, right after close_notify:
    /// its answer, read as the blocking path reads its own `shutdown(SHUT_WR)`.
    fn half_close(&mut self) -> io::Result<()> {
        let answer = self.half_closed.take().unwrap_or_else(|| {
            Err(io::Error::other(
                "tokio-openssl's poll_shutdown did not half-close the stream",
            ))
        });
        socket::half_close_answer(answer, self.socket())
    }
}

impl<S> fmt::Debug for TokioConnection<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioConnection")
            .field("ssl", &self.stream.ssl())
            .field("ssl_shutdown_done", &self.ssl_shutdown_done)
            .finish_non_exhaustive()
    }
}
