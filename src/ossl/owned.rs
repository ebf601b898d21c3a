//! The backend of the streams a [`Closer`](crate::Closer) owns: rust-openssl's
//! `SslStream` on a mio socket, driven with OpenSSL's own calls through the
//! shutdown's BIO (`fdio`), as a raw `SSL*` is. The stream's own BIO (which calls
//! the socket through rust-openssl) is back in place before the stream is freed.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

use super::core::Backend;
use super::fdio::FdIo;
use crate::closer::Stream;
use crate::machine::{ShutdownAnswer, TlsError};

/// A stream the Closer owns. (`io` first: dropped, and so detached, before the
/// stream.)
#[derive(Debug)]
pub(crate) struct Owned {
    io: FdIo,
    stream: Stream,
}

impl Owned {
    pub(crate) fn new(stream: Stream) -> Owned {
        let ssl = NonNull::new(stream.ssl().as_ptr()).expect("an SslStream has its SSL");
        let fd = stream.get_ref().as_raw_fd();
        // SAFETY: the SSL and the socket are the stream's, which this value owns
        // (moving the stream moves neither), for exactly as long.
        let io = unsafe { FdIo::new(ssl, fd) };
        Owned { io, stream }
    }

    /// The stream back (the shutdown's BIO detached first).
    pub(crate) fn into_stream(mut self) -> Stream {
        self.io.detach();
        let Owned { io, stream } = self;
        drop(io);
        stream
    }

    /// Frees the connection's empty record buffers (see `ssl::free_buffers`).
    pub(crate) fn free_buffers(&mut self) {
        super::ssl::free_buffers(self.io.ssl());
    }
}

impl AsRawFd for Owned {
    fn as_raw_fd(&self) -> RawFd {
        self.io.fd()
    }
}

impl Backend for Owned {
    fn ssl(&self) -> &SslRef {
        self.io.ssl()
    }
    fn ssl_mut(&mut self) -> &mut SslRef {
        self.io.ssl_mut()
    }
    /// (Not through the stream: rust-openssl finds its socket through its BIO,
    /// which is not in place while the shutdown runs.)
    fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: the stream this value owns keeps the socket open.
        unsafe { BorrowedFd::borrow_raw(self.io.fd()) }
    }
    fn attach(&mut self) {
        self.io.attach();
    }
    fn detach(&mut self) {
        self.io.detach();
    }
    fn switches_blocking(&self) -> bool {
        !self.io.owns_io()
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        self.io.shutdown()
    }
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        self.io.read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        self.io.write(buf)
    }
    fn set_sealed(&mut self, sealed: bool) {
        self.io.set_sealed(sealed);
    }
}
