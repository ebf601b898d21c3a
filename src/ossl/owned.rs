//! The backend of the streams a [`Closer`](crate::Closer) owns: rust-openssl's
//! `SslStream` on a mio socket, driven with OpenSSL's own calls through the
//! shutdown's BIO (`fdio`), as a raw `SSL*` is. The stream's own BIO (which calls
//! the socket through rust-openssl) is back in place before the stream is freed.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use foreign_types::ForeignTypeRef;

use super::fdio::{fdio_backend, FdIo};
use crate::closer::Stream;

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

    /// The stream back (dropping `io` detaches the shutdown's BIO first).
    pub(crate) fn into_stream(self) -> Stream {
        let Owned { io, stream } = self;
        drop(io);
        stream
    }
}

fdio_backend!(Owned);
