//! The backend for rust-openssl's `SslStream<S>`: its own I/O methods, through
//! the stream's BIO (so any `S: Read + Write` works, wrappers included).

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

use foreign_types::ForeignTypeRef;
use openssl::ssl::{ShutdownResult, SslRef, SslStream};

use super::classify::classify_stream;
use super::core::Backend;
use super::ssl;
use crate::machine::{ShutdownAnswer, TlsError};
use crate::report::Report;

impl<S: Read + Write + AsFd> Backend for SslStream<S> {
    fn ssl(&self) -> &SslRef {
        SslStream::ssl(self)
    }
    fn ssl_mut(&mut self) -> &mut SslRef {
        stream_ssl_mut(self)
    }
    fn socket(&self) -> BorrowedFd<'_> {
        self.get_ref().as_fd()
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        stream_call(self, SslStream::shutdown).map(|r| match r {
            ShutdownResult::Sent => ShutdownAnswer::Sent,
            ShutdownResult::Received => ShutdownAnswer::Received,
        })
    }
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        stream_call(self, |s| s.ssl_read_uninit(buf))
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        stream_call(self, |s| s.ssl_write(buf))
    }
}

/// The report of the last shutdown of `stream`, if one finished.
pub(crate) fn saved_report<S>(stream: &SslStream<S>) -> Option<Report> {
    ssl::saved_report(stream.ssl())
}

/// One rust-openssl call on `stream`, on a clean error queue, its failure
/// classified.
fn stream_call<S, T>(
    stream: &mut SslStream<S>,
    call: impl FnOnce(&mut SslStream<S>) -> Result<T, openssl::ssl::Error>,
) -> Result<T, TlsError> {
    ssl::with_clean_queue(|| {
        call(stream).map_err(|e| classify_stream(&e, ssl::is_tls13(stream.ssl())))
    })
}

/// `&mut SslRef` of a stream; rust-openssl only hands out `&SslRef`.
fn stream_ssl_mut<S>(stream: &mut SslStream<S>) -> &mut SslRef {
    // SAFETY: `SslStream::ssl` returns the stream's own SSL.
    unsafe { ssl_mut_of(stream, SslStream::ssl) }
}

/// `&mut SslRef` of the `SSL` that `owner` owns, found with `ssl`: rust-openssl's
/// and tokio-openssl's streams only hand out `&SslRef`.
///
/// # Safety
/// `ssl(owner)` must return the `SSL` that `owner` owns (not one shared with
/// anything else), so that `&mut owner` makes the result the only reference to it
/// for the lifetime of the borrow.
pub(crate) unsafe fn ssl_mut_of<T: ?Sized>(
    owner: &mut T,
    ssl: impl FnOnce(&T) -> &SslRef,
) -> &mut SslRef {
    let ptr = ssl(owner).as_ptr();
    // SAFETY: the pointer is the owner's own valid SSL (the caller's contract),
    // and the exclusive borrow of the owner covers the returned reference.
    unsafe { SslRef::from_ptr_mut(ptr) }
}
