//! The bounded, typed shutdown for tokio: [`shutdown`](crate::tokio::shutdown)
//! and the TLS half-close [`HalfClose`](crate::tokio::HalfClose), for
//! [`tokio_openssl::SslStream`]. Available with the `tokio` feature.
//!
//! tokio-openssl's own `shutdown().await` sends close_notify and a FIN and stops
//! there: a truncation and a clean close both look like `Ok(0)` on the next read,
//! nothing bounds the wait, and nothing says how the connection ended. Here the
//! same state machine as [`shutdown_blocking`](crate::shutdown_blocking) runs
//! under the same [`Policy`], and returns the same [`Report`]:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslVerifyMode};
//! # let (cert, key) = closenotify::doc_support::self_signed("localhost")?;
//! # let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
//! # acceptor.set_certificate(&cert)?;
//! # acceptor.set_private_key(&key)?;
//! # let acceptor = acceptor.build();
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
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
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! # rt.block_on(async {
//! use closenotify::{Outcome, Policy};
//! use std::time::Duration;
//!
//! let tcp = tokio::net::TcpStream::connect(addr).await?;
//! let ssl = connector.configure()?.into_ssl("localhost")?;
//! let mut stream = tokio_openssl::SslStream::new(ssl, tcp)?;
//! std::pin::Pin::new(&mut stream).connect().await?;
//! // ... the application's exchange ...
//!
//! let policy = Policy::builder()
//!     .peer_timeout(Duration::from_millis(500))
//!     .build()?;
//! // was: tokio::io::AsyncWriteExt::shutdown(&mut stream).await?;
//! let report = closenotify::tokio::shutdown(&mut stream, &policy).await?;
//!
//! assert_eq!(report.outcome, Outcome::Clean); // both close_notify alerts exchanged
//! assert!(report.half_closed && report.session_resumable);
//! report.result()?; // or turn any other outcome into an error (and an io::Error)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # server.join().unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! # What is the same as the blocking call
//! The stages (flush, half-close, await_peer, linger), the modes, every timeout of
//! the policy, the outcomes and their alert names and errnos, the session hygiene
//! (the session is removed from the cache unless the close was orderly),
//! `SSL_OP_IGNORE_UNEXPECTED_EOF` suspended while the shutdown reads, TLS 1.3
//! KeyUpdates answered into a sink once our close_notify is out, and a second call
//! on the same stream returning the first report. The shutdowns of one connection
//! share that report whichever API made them.
//!
//! # What differs
//! - **The half-close is tokio-openssl's.** OpenSSL must run on tokio-openssl's
//!   `SSL` only through its poll methods (its BIO needs the task's context), and the
//!   only one that calls `SSL_shutdown` is `AsyncWrite::poll_shutdown`, which always
//!   shuts the inner stream's write side down once close_notify is out (a
//!   `TcpStream`'s `shutdown(SHUT_WR)`). So a policy with
//!   [`half_close(false)`](crate::PolicyBuilder::half_close) is refused with
//!   [`Error::InvalidPolicy`] before the stream is touched, and
//!   [`Report::half_closed`] says whether that inner `poll_shutdown` succeeded.
//! - **Socket calls need a socket.** The linger stage (`SIOCOUTQ`) and the reset
//!   on timeout (`SO_LINGER`) act on the fd of `S: AsFd`. When that fd is not a
//!   stream socket (a pipe, a file), a policy with a linger timeout is refused
//!   with [`Error::InvalidPolicy`]. The reset is only needed when a timeout
//!   happens, so it is not checked on every close (a system call each): on such
//!   an fd, a timeout that should arm it cannot, and its report's
//!   [`detail`](Report::detail) says so. The half-close is whatever
//!   `S::poll_shutdown` does, and [`Report::half_closed`] only says that it
//!   returned `Ok`.
//! - **The fd's mode is left alone.** tokio's I/O objects are non-blocking already;
//!   the blocking call's switch to non-blocking mode does not happen here.
//! - **`ssl_calls` may count one more read.** The blocking call waits for
//!   `poll(2)` to report the socket readable before its first read for the peer's
//!   close_notify; a generic `S` has no readiness to ask for, so the first read is
//!   tried at once, which also registers the task's wake-up (as with mio and the
//!   [`Closer`](crate::Closer)). A wake-up by the timer alone makes no OpenSSL
//!   call, as in the blocking call.
//! - **Time is tokio's.** Timeouts use tokio's timer (`tokio::time::Sleep`, never a
//!   thread), so the runtime needs its time driver (`enable_time` or `enable_all`),
//!   and [`Report::elapsed`] is measured on tokio's clock too (below).
//!
//! # Time, and tokio's paused clock
//! Every deadline of the policy and [`Report::elapsed`] are on tokio's clock
//! (`tokio::time::Instant`), the clock of `tokio::time::timeout`: on a running
//! clock that is real time, and the policy's bounds hold as they do for the
//! blocking call. Under a paused clock (`start_paused(true)`,
//! `tokio::time::pause`, as tokio users write tests) the rule is tokio's: the
//! clock stands still while any task can run or any I/O the runtime watches is
//! ready, and jumps to the next timer when the runtime has nothing else to do.
//! So, with the clock paused:
//! - a peer on the same runtime (its I/O on tokio's reactor) is deterministic:
//!   its answer arrives before the clock moves, and a shutdown it answers at once
//!   reports `elapsed` zero;
//! - a silent peer times out at once in real time, and `elapsed` is exactly the
//!   timeout it waited out (on a peer timeout of 5 s: `timed_out`, 5 s);
//! - a peer outside the runtime (another process, a `std` thread) is invisible to
//!   the runtime: while our side waits for it, tokio sees nothing to do and jumps
//!   to the timer, so the shutdown times out even if the peer would have answered
//!   within milliseconds, as `tokio::time::timeout` around a read would. Test
//!   against such peers with the clock running.
//!
//! # Cancellation
//! Dropping the future of [`shutdown`](crate::tokio::shutdown) (for example in
//! `tokio::time::timeout` or `select!`), or a [`HalfClose`](crate::tokio::HalfClose),
//! before it is done leaves the stream usable and consistent, but not closed:
//! - never polled: nothing happened;
//! - dropped in the flush stage: our close_notify is queued in OpenSSL
//!   (`SSL_SENT_SHUTDOWN`), and all, part or none of it reached the peer; no FIN was
//!   sent;
//! - dropped later: the peer has our close_notify and our FIN; it may have answered
//!   already, unread by us;
//! - in every case the option `SSL_OP_IGNORE_UNEXPECTED_EOF` and the write BIO are
//!   restored, no report is saved and the session is left as it was.
//!
//! Calling [`shutdown`](crate::tokio::shutdown) again later resumes: it finishes
//! writing a close_notify that is still queued (without a second `SSL_shutdown`
//! that would read), then awaits the peer's under the new call's policy.
//! Application data can no longer be written once close_notify is queued.

// The links above spell out `crate::tokio::...`: with the outer doc lib.rs gives
// this module (`cbindgen:ignore`), rustdoc resolves them from the crate root.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsFd;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{ready, Context, Poll, Wake, Waker};

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::time::{sleep_until, Instant as TokioInstant, Sleep};
use tokio_openssl::SslStream;

use crate::error::{Error, ReadError};
use crate::machine::{Progress, Ready};
use crate::ossl::tokio::TokioConnection;
use crate::policy::{Mode, Policy};
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::socket;

/// Shuts `stream` down under `policy`, awaiting each stage under its timeout with
/// tokio's timer, and returns how the connection ended: the same [`Report`] as
/// [`shutdown_blocking`](crate::shutdown_blocking) (see the [module
/// documentation](self) for the few differences).
///
/// It never takes longer than the policy allows (`flush_timeout + peer_timeout +
/// linger_timeout` at most). The stream is not closed: drop it to close the
/// socket. A misbehaving peer is an outcome in the report, never an error. Calling
/// it again on the same stream returns the same report. The future is `Send` when
/// `S` is; dropping it early leaves the stream as the module documentation says.
///
/// # Errors
/// [`Error::InvalidPolicy`], before anything is done to the stream, for a policy
/// this adapter cannot honour: [`half_close(false)`](crate::PolicyBuilder::half_close)
/// (tokio-openssl always half-closes after close_notify), or a reset on timeout or
/// a linger timeout when the stream's fd is not a stream socket. Quiet mode is
/// always accepted.
///
/// # Panics
/// When it has to wait (for the peer, for the socket, or in the linger stage)
/// outside a tokio runtime whose time driver is enabled, as `tokio::time::sleep`
/// does. A shutdown that needs no wait (quiet mode, an answer already there, a
/// second call) takes no timer.
pub async fn shutdown<S>(stream: &mut SslStream<S>, policy: &Policy) -> Result<Report, Error>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    check(stream, policy)?;
    let mut driver = Driver::new(stream, policy);
    let mut timer = pin!(None::<Sleep>);
    Ok(poll_fn(|cx| driver.poll_report(cx, timer.as_mut())).await)
}

/// Shuts `stream` down like [`shutdown`], but writes the application data the
/// peer sends until its close_notify to `out` instead of discarding it: the TLS
/// half-close of a client that has sent its request and reads the answer to the
/// end. The async counterpart of
/// [`shutdown_blocking_read`](crate::shutdown_blocking_read), with the same
/// contract: bounded by the policy (the whole answer must arrive within
/// `peer_timeout`, however fast the peer streams and however slowly `out` takes
/// it: then `timed_out`, and [`Report::delivered_bytes`] counts what `out`
/// received), and by `limit` (past it, [`Outcome::DrainLimit`](crate::Outcome::DrainLimit)
/// with exactly `limit` bytes written). `report.outcome == Outcome::Clean` means
/// `out` received the complete answer. [`HalfClose`] is the same shutdown as an
/// [`AsyncRead`], for a caller that reads the answer itself.
///
/// # Errors
/// [`ReadError::Invalid`] before anything is sent: a policy [`shutdown`] refuses,
/// or a mode that does not wait for the peer (send-only, quiet);
/// [`ReadError::Write`] with the error of `out`, after which the shutdown is
/// abandoned as a dropped future leaves it (see [Cancellation](self#cancellation)).
/// How the connection ended is never an error: it is the report.
///
/// # Panics
/// As [`shutdown`].
pub async fn shutdown_read<S, W>(
    stream: &mut SslStream<S>,
    policy: &Policy,
    out: &mut W,
    limit: u64,
) -> Result<Report, ReadError>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    check(stream, policy)?;
    crate::blocking::check_awaits_peer(policy)?;
    let mut driver = Driver::new(stream, policy);
    driver.sd = driver.sd.with_read_limit(limit);
    let mut timer = pin!(None::<Sleep>);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // The machine delivers nothing past the limit.
        let read = poll_fn(|cx| driver.poll_read(cx, timer.as_mut(), &mut buf)).await;
        match read {
            Read::Data(n) => {
                write_all(out, &buf[..n]).await.map_err(ReadError::Write)?;
            }
            Read::Done(report) => {
                poll_fn(|cx| Pin::new(&mut *out).poll_flush(cx))
                    .await
                    .map_err(ReadError::Write)?;
                return Ok(report);
            }
        }
    }
}

/// `AsyncWriteExt::write_all` (which needs tokio's `io-util`, a feature this crate
/// does not otherwise use).
async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    out: &mut W,
    mut bytes: &[u8],
) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *out).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// The TLS half-close on a tokio-openssl stream: our close_notify and FIN go out,
/// and the peer's answer can still be read, until its close_notify. The async
/// counterpart of [`Shutdown::poll_read`].
///
/// Read it as any [`AsyncRead`] (`read`, `read_to_end`, `tokio::io::copy` ...):
/// the first read sends close_notify and half-closes; it then yields the peer's
/// application data, byte for byte, and ends when the shutdown does:
/// - with `Ok(0)` (end of file) when the connection ended in order (`clean`; or
///   `sent_only` and `quiet` in those modes, where nothing is read);
/// - with an error for every other outcome (a peer still sending when
///   `peer_timeout` runs out, however fast it streams, is `TimedOut`), of the kind
///   [`Report::result`]'s error converts to (`UnexpectedEof` for a truncation,
///   `TimedOut`, `ConnectionReset`, `InvalidData`), so that a truncated answer is
///   never mistaken for a complete one.
///
/// Either way [`report`](HalfClose::report) then has the [`Report`]. Delivered
/// bytes do not count against the drain limit and are not in
/// [`Report::discarded_bytes`]; [`finish`](HalfClose::finish) discards the rest
/// (under the drain limit) instead.
///
/// ```no_run
/// # async fn demo(
/// #     mut stream: tokio_openssl::SslStream<tokio::net::TcpStream>,
/// # ) -> std::io::Result<()> {
/// use tokio::io::AsyncReadExt;
///
/// // The request is written; now say we are done, and read the whole answer.
/// let mut closing = closenotify::tokio::HalfClose::new(&mut stream, &Default::default())?;
/// let mut answer = Vec::new();
/// closing.read_to_end(&mut answer).await?; // fails unless the peer closed properly
/// println!("{}", closing.report().expect("done"));
/// # Ok(())
/// # }
/// ```
///
/// Timeouts, errors, panics and cancellation are those of [`shutdown`].
pub struct HalfClose<'a, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    driver: Driver<'a, S>,
    timer: Pin<Box<Option<Sleep>>>,
}

impl<'a, S> HalfClose<'a, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    /// Prepares the half-close of `stream` under `policy`; nothing is sent until the
    /// first read.
    ///
    /// # Errors
    /// As [`shutdown`]: [`Error::InvalidPolicy`] for a policy this adapter cannot
    /// honour, before the stream is touched.
    pub fn new(stream: &'a mut SslStream<S>, policy: &Policy) -> Result<Self, Error> {
        check(stream, policy)?;
        Ok(HalfClose {
            driver: Driver::new(stream, policy),
            timer: Box::pin(None),
        })
    }

    /// The report, once the reads have reached the end (or
    /// [`finish`](HalfClose::finish) returned).
    pub fn report(&self) -> Option<Report> {
        self.driver.sd.report()
    }

    /// Runs the shutdown to its end without delivering more data: what the peer
    /// still sends is discarded, up to the drain limit. Returns the report (at once
    /// if it is already there).
    pub async fn finish(&mut self) -> Report {
        poll_fn(|cx| self.poll_finish(cx)).await
    }

    /// The poll form of [`finish`](HalfClose::finish).
    pub fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Report> {
        self.driver.poll_report(cx, self.timer.as_mut())
    }
}

impl<S> AsyncRead for HalfClose<'_, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let read =
            ready!(this
                .driver
                .poll_read(cx, this.timer.as_mut(), buf.initialize_unfilled()));
        Poll::Ready(match read {
            Read::Data(n) => {
                buf.advance(n);
                Ok(())
            }
            Read::Done(report) => report.result().map_err(io::Error::from),
        })
    }
}

impl<S> fmt::Debug for HalfClose<'_, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HalfClose")
            .field("waiting", &self.driver.sd.waiting())
            .field("report", &self.driver.sd.report())
            .finish_non_exhaustive()
    }
}

/// Refuses, before anything happens, a policy this adapter cannot honour.
fn check<S: AsFd>(stream: &SslStream<S>, policy: &Policy) -> Result<(), Error> {
    if policy.mode() == Mode::Quiet {
        return Ok(()); // sends nothing, waits for nothing
    }
    if policy.mode() == Mode::StopTls {
        return Err(Error::InvalidPolicy(
            "Mode::StopTls cannot be honoured on a tokio-openssl stream: its \
             poll_shutdown, the only way to send close_notify through it, always shuts \
             the inner stream's write side down, and STOPTLS keeps the connection \
             (use shutdown_blocking or Shutdown on an openssl::ssl::SslStream)"
                .into(),
        ));
    }
    if !policy.half_close() {
        return Err(Error::InvalidPolicy(
            "half_close(false) cannot be honoured on a tokio-openssl stream: its \
             poll_shutdown, the only way to send close_notify through it, always shuts \
             the inner stream's write side down afterwards (use half_close(true), or \
             shutdown_blocking on an openssl::ssl::SslStream)"
                .into(),
        ));
    }
    // The linger stage reads the socket's send queue at every check: it needs a
    // socket, checked now. (The reset on timeout needs one only at a timeout,
    // and is not checked on every close: see the module documentation.)
    if policy.linger_timeout().is_zero() {
        return Ok(());
    }
    socket::check_stream_socket(stream.get_ref().as_fd()).map_err(|err| {
        Error::InvalidPolicy(format!(
            "linger_timeout (SIOCOUTQ) needs a socket, and the stream's fd is not a \
             stream socket ({err}): use no linger timeout"
        ))
    })
}

// --- driving the machine from a task ---------------------------------------------------

/// What one poll of a half-close produced.
enum Read {
    /// Application data, in the caller's buffer.
    Data(usize),
    /// The shutdown is over.
    Done(Report),
}

/// The machine, and what woke the task.
struct Driver<'a, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    sd: Shutdown<TokioConnection<'a, S>>,
    io: Arc<IoWaker>,
}

impl<'a, S> Driver<'a, S>
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin,
{
    fn new(stream: &'a mut SslStream<S>, policy: &Policy) -> Self {
        let io = Arc::new(IoWaker {
            woken: AtomicBool::new(false),
            task: Mutex::new(noop_waker()),
        });
        let conn = TokioConnection::new(stream, Waker::from(io.clone()));
        let mut sd = Shutdown::new(conn, policy);
        // The `now` values are tokio's clock's: taken as they are (see the
        // module documentation on a paused clock). Not level readiness: a generic
        // `S` offers no readiness to wait for, so the machine tries one read
        // before waiting (which registers the wake-up).
        sd.adapter_clock(tokio_now);
        Driver { sd, io }
    }

    fn poll_report(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Option<Sleep>>,
    ) -> Poll<Report> {
        loop {
            let (now, ready) = self.wake_up(cx);
            match self.sd.poll(now, ready) {
                Progress::Done(report) => return Poll::Ready(report),
                Progress::Wait(wait) => ready!(wait_until(cx, timer.as_mut(), wait.deadline)),
            }
        }
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Option<Sleep>>,
        buf: &mut [u8],
    ) -> Poll<Read> {
        loop {
            let (now, ready) = self.wake_up(cx);
            match self.sd.poll_read(now, ready, buf) {
                // More may be buffered: the machine reads again on the next call
                // without waiting.
                (n, _) if n > 0 => return Poll::Ready(Read::Data(n)),
                (_, Progress::Done(report)) => return Poll::Ready(Read::Done(report)),
                (_, Progress::Wait(wait)) => ready!(wait_until(cx, timer.as_mut(), wait.deadline)),
            }
        }
    }

    /// The task runs: hands its waker to the stream's I/O, and says what the
    /// machine may do, as `poll(2)` would: try its I/O when the stream's I/O woke
    /// the task; when only the timer (or an unrelated wake-up) did, only check the
    /// deadline, without an OpenSSL call. (The machine's first poll starts the
    /// shutdown whatever the readiness.)
    fn wake_up(&mut self, cx: &Context<'_>) -> (std::time::Instant, Ready) {
        self.io.set_task(cx.waker());
        let io = self.io.woken.swap(false, Ordering::AcqRel);
        let ready = if io { Ready::ALL } else { Ready::NONE };
        // tokio's clock, the timer's: once the timer has fired, the machine sees
        // its deadline passed too, whatever clock tokio runs on.
        (tokio_now(), ready)
    }
}

/// tokio's clock (the timer's), as a std `Instant`.
fn tokio_now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

/// Arms the timer for `deadline` and polls it: `Ready` once the deadline has
/// passed on tokio's clock, which is then also past for the machine (the timer
/// fires on or after its deadline), so the next machine call ends the stage or
/// moves on: no busy loop.
fn wait_until(
    cx: &mut Context<'_>,
    mut timer: Pin<&mut Option<Sleep>>,
    deadline: std::time::Instant,
) -> Poll<()> {
    let deadline = TokioInstant::from_std(deadline);
    match timer.as_mut().as_pin_mut() {
        Some(sleep) if sleep.deadline() == deadline => {}
        Some(sleep) => sleep.reset(deadline),
        None => timer.set(Some(sleep_until(deadline))),
    }
    match timer.as_pin_mut() {
        Some(sleep) => std::future::Future::poll(sleep, cx),
        None => Poll::Ready(()),
    }
}

/// The waker the stream's I/O gets: it notes that the I/O woke the task (what
/// `poll(2)`'s `revents` would say), then wakes the task.
struct IoWaker {
    woken: AtomicBool,
    task: Mutex<Waker>,
}

impl IoWaker {
    fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.will_wake(waker) {
            task.clone_from(waker);
        }
    }
}

impl Wake for IoWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wake_by_ref();
    }
}

/// A waker for the time before the first poll (nothing can wake then).
fn noop_waker() -> Waker {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    static NOOP: OnceLock<Waker> = OnceLock::new();
    NOOP.get_or_init(|| Waker::from(Arc::new(Noop))).clone()
}
