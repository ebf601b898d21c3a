//! The shared half of every OpenSSL-backed connection: what is done on the `SSL`
//! object itself, never through its BIOs' I/O (so also on a stream whose BIO
//! needs a context only its owner can give, as tokio-openssl's). Per-`SSL` state
//! lives in ex_data.

use std::ffi::c_int;
use std::os::fd::RawFd;
use std::sync::OnceLock;

use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslRef};
use openssl_sys as ffi;

use super::ext::*;
use crate::machine::{ShutdownAnswer, Status, TlsError};
use crate::report::{Alert, AlertDirection, AlertLevel, AlertLog, AlertRecord, Report, TlsVersion};
use crate::socket;

// The option constants are `uint64_t` in OpenSSL 3 and `unsigned long` before.
#[cfg(ossl300)]
#[allow(clippy::unnecessary_cast)]
const IGNORE_UNEXPECTED_EOF: u64 = ffi::SSL_OP_IGNORE_UNEXPECTED_EOF as u64;
#[allow(clippy::unnecessary_cast)]
const NO_TICKET: u64 = ffi::SSL_OP_NO_TICKET as u64;

/// Per-`SSL` state kept in ex_data: the final report (so that a second shutdown
/// returns it), the alerts seen while a shutdown runs, and what `begin` and
/// `seal` changed, for `end` to undo.
#[derive(Default)]
struct Saved {
    report: Option<Report>,
    /// What `record_alert` saw since `begin`.
    alerts: AlertLog,
    /// A `RawConnection` on this SSL is alive (`claim`).
    claimed: bool,
    /// `begin` installed `record_alert` as the SSL's info callback; this is the
    /// callback it replaced (the SSL's own, or `None`: the context's applies).
    watching: Option<InfoCallback>,
    /// `begin` cleared `SSL_OP_IGNORE_UNEXPECTED_EOF`.
    suspended_ignore_eof: bool,
    /// `begin` switched the socket from blocking to non-blocking mode.
    was_blocking: bool,
    /// `keep_transport` turned read-ahead off.
    read_ahead: bool,
    /// `read_ahead` turned read-ahead on.
    read_ahead_added: bool,
    /// `seal` replaced the write BIO by a sink; this is the address of the
    /// original, on which `seal` holds one reference until `end` puts it back.
    sealed_wbio: usize,
}

fn saved_index() -> Option<Index<Ssl, Saved>> {
    static INDEX: OnceLock<Option<Index<Ssl, Saved>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

pub(crate) fn status(ssl: &SslRef) -> Status {
    let usable = ssl.is_init_finished();
    // SAFETY: `ssl` is a valid SSL for the duration of the borrow.
    let flags = unsafe { ffi::SSL_get_shutdown(ssl.as_ptr()) };
    let sent = flags & ffi::SSL_SENT_SHUTDOWN != 0;
    // OpenSSL 4.0 leaves the state machine in an error state after a record
    // failure that carried no alert (the application saw an EOF), so that
    // `SSL_is_init_finished` says no; the version is known all the same.
    let version = (usable || handshake_completed(ssl)).then(|| {
        // SAFETY: as above.
        let v = unsafe { ffi::SSL_version(ssl.as_ptr()) };
        TlsVersion::from_wire(v as u16)
    });
    Status {
        usable,
        sent,
        received: flags & ffi::SSL_RECEIVED_SHUTDOWN != 0,
        version,
    }
}

/// Runs `shutdown` (one `SSL_shutdown` call) so that it can only write: with
/// `SSL_RECEIVED_SHUTDOWN` presented, `SSL_shutdown` flushes a close_notify
/// still buffered and returns, and when there is none it returns at once; its
/// branch that reads for the peer's close_notify cannot run. The flags are
/// put back afterwards.
pub(crate) fn flush_close_notify(
    ssl: *mut ffi::SSL,
    shutdown: impl FnOnce() -> Result<ShutdownAnswer, TlsError>,
) -> Result<(), TlsError> {
    // SAFETY: `ssl` is the caller's valid SSL; SSL_get/set_shutdown only read
    // and write its flags.
    let flags = unsafe { ffi::SSL_get_shutdown(ssl) };
    unsafe { ffi::SSL_set_shutdown(ssl, flags | ffi::SSL_RECEIVED_SHUTDOWN) };
    let result = shutdown();
    // SAFETY: as above.
    unsafe { ffi::SSL_set_shutdown(ssl, flags) };
    result.map(drop)
}

/// Prepares the connection for the shutdown:
/// - suspends `SSL_OP_IGNORE_UNEXPECTED_EOF`: with it, OpenSSL turns an EOF
///   into a fake close_notify and a truncation would be reported as `clean`;
/// - puts the socket `fd` in non-blocking mode, so that no OpenSSL call can
///   block past the policy's deadlines (`None`: the caller's I/O never blocks,
///   as with tokio, and the fd's mode is left alone).
pub(crate) fn begin(ssl: &mut SslRef, fd: Option<RawFd>) {
    #[cfg(ossl300)]
    // SAFETY: `ssl` is valid; the option calls only read/modify a bit field.
    let suspended = unsafe {
        let had = SSL_get_options(ssl.as_ptr()) & IGNORE_UNEXPECTED_EOF != 0;
        if had {
            SSL_clear_options(ssl.as_ptr(), IGNORE_UNEXPECTED_EOF);
        }
        had
    };
    #[cfg(not(ossl300))]
    let suspended = false;
    let was_blocking = match fd.map(|fd| (fd, socket::set_nonblocking(fd))) {
        Some((_, Ok(was_blocking))) => was_blocking,
        // A broken fd: the first OpenSSL call reports it.
        Some((fd, Err(err))) => {
            log::debug!("closenotify: cannot make fd {fd} non-blocking: {err}");
            false
        }
        None => false,
    };
    // SAFETY: `ssl` is valid; the getter reads a function pointer.
    let previous = unsafe { SSL_get_info_callback(ssl.as_ptr()) };
    with_saved(ssl, |s| {
        s.suspended_ignore_eof |= suspended;
        s.was_blocking |= was_blocking;
        s.alerts = AlertLog::default();
        s.watching.get_or_insert(previous);
    });
    // SAFETY: `ssl` is valid; `record_alert` finds its state through the SSL's
    // ex_data, which `with_saved` just created, and which lives as long as the SSL.
    unsafe { SSL_set_info_callback(ssl.as_ptr(), Some(record_alert)) };
}

/// The info callback of a shutdown in progress: notes every alert read or
/// written (close_notify aside) in the SSL's `Saved`, then calls the callback
/// the application set (on the SSL, or else on its context).
unsafe extern "C" fn record_alert(ssl: *const ffi::SSL, where_: c_int, ret: c_int) {
    let Some(index) = saved_index() else { return };
    // SAFETY: OpenSSL calls this with the SSL whose callback it is, valid for the
    // call. rust-openssl keeps ex_data as a `Box<Saved>` whose pointer
    // SSL_get_ex_data returns; no reference to it is alive while OpenSSL runs (the
    // shutdown borrows it only between OpenSSL calls).
    let saved = unsafe {
        ffi::SSL_get_ex_data(ssl, index.as_raw())
            .cast::<Saved>()
            .as_mut()
    };
    let Some(saved) = saved else { return };
    if where_ & SSL_CB_ALERT != 0 {
        let level = AlertLevel::from_code(((ret >> 8) & 0xff) as u8);
        let code = (ret & 0xff) as u8;
        let direction = if where_ & SSL_CB_READ != 0 {
            AlertDirection::Received
        } else {
            AlertDirection::Sent
        };
        if let (Some(level), false) = (level, code == 0) {
            saved
                .alerts
                .push(AlertRecord::new(Alert::from_code(code), direction, level));
        }
    }
    let chained = match saved.watching {
        Some(Some(callback)) => Some(callback),
        // SAFETY: `ssl` is valid for the call; its context outlives it.
        _ => unsafe { SSL_CTX_get_info_callback(ffi::SSL_get_SSL_CTX(ssl)) },
    };
    if let Some(callback) = chained {
        // SAFETY: the application's callback, with the arguments OpenSSL gave us.
        unsafe { callback(ssl, where_, ret) };
    }
}

/// Marks `ssl` as having a raw shutdown object; false (and nothing changed) if
/// one is alive already.
pub(crate) fn claim(ssl: &mut SslRef) -> bool {
    let mut claimed = false;
    with_saved(ssl, |s| {
        claimed = !s.claimed;
        s.claimed = true;
    });
    claimed
}

/// Undoes `claim`.
pub(crate) fn release(ssl: &mut SslRef) {
    with_saved(ssl, |s| s.claimed = false);
}

/// The alerts seen since `begin`.
pub(crate) fn alerts(ssl: &SslRef) -> AlertLog {
    saved_index()
        .and_then(|index| ssl.ex_data(index))
        .map_or_else(AlertLog::default, |s| s.alerts)
}

/// A shutdown that ends TLS: read-ahead on, if it is off (see
/// `Connection::read_ahead`); `end` turns it off again.
pub(crate) fn read_ahead(ssl: &mut SslRef) {
    // SAFETY: `ssl` is valid; the read-ahead calls only read/set a flag.
    if unsafe { SSL_get_read_ahead(ssl.as_ptr()) } == 0 {
        unsafe { SSL_set_read_ahead(ssl.as_ptr(), 1) };
        with_saved(ssl, |s| s.read_ahead_added = true);
    }
}

/// STOPTLS: read-ahead off, so that OpenSSL reads records exactly and nothing
/// past the peer's close_notify leaves the socket. Returns whether read-ahead
/// may already have buffered bytes past what the shutdown will read. (The
/// check must come now: after a TLS 1.3 close_notify, OpenSSL 3.2+ says
/// `SSL_has_pending` with nothing buffered.)
pub(crate) fn keep_transport(ssl: &mut SslRef) -> bool {
    // SAFETY: `ssl` is valid; the read-ahead calls only read/set a flag.
    if unsafe { SSL_get_read_ahead(ssl.as_ptr()) } == 0 {
        return false;
    }
    unsafe { SSL_set_read_ahead(ssl.as_ptr(), 0) };
    with_saved(ssl, |s| s.read_ahead = true);
    has_pending(ssl)
}

/// Once our close_notify is flushed, nothing OpenSSL writes may reach the
/// peer: replaces the write BIO by a sink (`BIO_s_null`). A TLS 1.3 peer's
/// KeyUpdate(update_requested) makes OpenSSL write its own KeyUpdate while we
/// read; after our `shutdown(SHUT_WR)` that write would fail with EPIPE and
/// turn a clean close into a reset, and without the half-close it would put a
/// message on the wire after our close_notify, which TLS forbids. The read
/// side is untouched. Returns whether the sink is in place.
pub(crate) fn seal(ssl: &mut SslRef) -> bool {
    // SAFETY: `ssl` is valid. The original write BIO gets one more reference
    // before SSL_set0_wbio drops the SSL's, so it stays alive (and its fd
    // open) until `end` hands it back; the sink is a fresh BIO whose only
    // reference passes to the SSL. When the read and write BIOs are the same
    // BIO, the SSL's read reference keeps it alive as well.
    let wbio = unsafe {
        let ptr = ssl.as_ptr();
        let wbio = SSL_get_wbio(ptr);
        if wbio.is_null() || BIO_up_ref(wbio) != 1 {
            return false;
        }
        let sink = ffi::BIO_new(BIO_s_null());
        if sink.is_null() {
            ffi::BIO_free_all(wbio);
            return false;
        }
        SSL_set0_wbio(ptr, sink);
        wbio
    };
    with_saved(ssl, |s| s.sealed_wbio = wbio as usize);
    true
}

/// Undoes `begin` and `seal`, and leaves the error queue empty.
pub(crate) fn end(ssl: &mut SslRef, fd: RawFd) {
    clear_errors();
    let ptr = ssl.as_ptr();
    let Some(index) = saved_index() else { return };
    let Some(saved) = ssl.ex_data_mut(index) else {
        return;
    };
    let suspended = std::mem::take(&mut saved.suspended_ignore_eof);
    let was_blocking = std::mem::take(&mut saved.was_blocking);
    let sealed = std::mem::take(&mut saved.sealed_wbio);
    let read_ahead_added = std::mem::take(&mut saved.read_ahead_added);
    if let Some(previous) = saved.watching.take() {
        // SAFETY: `ssl` is valid; puts back the callback `begin` replaced.
        unsafe { SSL_set_info_callback(ptr, previous) };
    }
    if std::mem::take(&mut saved.read_ahead) {
        // SAFETY: `ssl` is valid; restores the flag `keep_transport` cleared.
        unsafe { SSL_set_read_ahead(ssl.as_ptr(), 1) };
    }
    if read_ahead_added {
        // SAFETY: `ssl` is valid; clears the flag `read_ahead` set.
        unsafe { SSL_set_read_ahead(ptr, 0) };
    }
    if sealed != 0 {
        // SAFETY: `sealed` is the write BIO `seal` took a reference on; giving
        // it back to the SSL transfers that reference and frees the sink.
        unsafe { SSL_set0_wbio(ssl.as_ptr(), sealed as *mut ffi::BIO) };
    }
    #[cfg(ossl300)]
    if suspended {
        // SAFETY: `ssl` is valid; restores the option `begin` cleared.
        unsafe { SSL_set_options(ssl.as_ptr(), IGNORE_UNEXPECTED_EOF) };
    }
    #[cfg(not(ossl300))]
    let _ = suspended;
    if was_blocking {
        if let Err(err) = socket::set_blocking(fd) {
            log::debug!("closenotify: cannot restore blocking mode on fd {fd}: {err}");
        }
    }
}

/// Lets a retried `SSL_write` come with a different buffer holding the same
/// bytes (the caller's unsent data, now owned by the shutdown).
pub(crate) fn accept_moving_write_buffer(ssl: &SslRef) {
    set_mode(ssl, ffi::SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/// Releases OpenSSL's read and write buffers whenever they are empty
/// (`SSL_MODE_RELEASE_BUFFERS`): a connection that only waits for an alert
/// then holds no 16 KiB record buffers.
pub(crate) fn release_buffers(ssl: &SslRef) {
    set_mode(ssl, ffi::SSL_MODE_RELEASE_BUFFERS);
}

/// Prepares a connection a closer owns: `SSL_MODE_RELEASE_BUFFERS`, so that
/// buffers OpenSSL allocates for the last records are freed once empty, and
/// read-ahead, so that the peer's close_notify takes one `recv` instead of two
/// (header, then body). Read-ahead may pull in bytes beyond the close_notify;
/// harmless there, since the closer closes the socket after it (it is off for
/// connections the caller keeps, which could carry plaintext after TLS).
pub(crate) fn prepare_for_closer(ssl: &SslRef) {
    release_buffers(ssl);
    // SAFETY: `ssl` is valid; SSL_set_read_ahead only sets a flag.
    unsafe { SSL_set_read_ahead(ssl.as_ptr(), 1) };
}

/// Frees the record buffers a connection holds, if they are empty
/// (`SSL_free_buffers`): for a shutdown that waits (it needs none until the
/// peer's alert arrives) or has ended (OpenSSL keeps the read buffer of the
/// close_notify it read, even with `SSL_MODE_RELEASE_BUFFERS`, until
/// `SSL_free`: a closer that frees connections a call later would otherwise
/// hold one per connection that finished in between).
pub(crate) fn free_buffers(ssl: &SslRef) {
    // SAFETY: `ssl` is valid; SSL_free_buffers frees only empty buffers (it
    // returns 0 and keeps them when data is pending).
    unsafe { SSL_free_buffers(ssl.as_ptr()) };
    clear_errors();
}

/// `SSL_set_mode`: ORs `mode` into the connection's mode bits.
fn set_mode(ssl: &SslRef, mode: std::ffi::c_long) {
    // SAFETY: `ssl` is valid; SSL_ctrl(SSL_CTRL_MODE) only ORs a mode bit.
    unsafe { ffi::SSL_ctrl(ssl.as_ptr(), ffi::SSL_CTRL_MODE, mode, std::ptr::null_mut()) };
}

/// The connection negotiated TLS 1.3.
pub(crate) fn is_tls13(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is valid; SSL_version reads a field.
    unsafe { ffi::SSL_version(ssl.as_ptr()) == ffi::TLS1_3_VERSION }
}

pub(crate) fn has_pending(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is valid; SSL_has_pending only inspects buffers.
    unsafe { SSL_has_pending(ssl.as_ptr()) == 1 }
}

/// The peer's close_notify has arrived (`SSL_RECEIVED_SHUTDOWN`).
pub(crate) fn received_close_notify(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is valid; SSL_get_shutdown only reads its flags.
    unsafe { ffi::SSL_get_shutdown(ssl.as_ptr()) & ffi::SSL_RECEIVED_SHUTDOWN != 0 }
}

/// OpenSSL holds bytes it could not write yet (`SSL_want_write`): the last
/// write of the connection stopped, on a retry or on an error, with part of a
/// record still in OpenSSL's buffer. A write that completed resets it.
#[cfg(feature = "tokio")]
pub(crate) fn write_stuck(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is valid; SSL_want only reads its state.
    unsafe { SSL_want(ssl.as_ptr()) == SSL_WRITING }
}

pub(crate) fn set_quiet(ssl: &mut SslRef) {
    // SAFETY: `ssl` is valid; sets the shutdown flags so that nothing is ever
    // sent, which OpenSSL allows in any state (it is what quiet shutdown does).
    unsafe {
        ffi::SSL_set_shutdown(
            ssl.as_ptr(),
            ffi::SSL_SENT_SHUTDOWN | ffi::SSL_RECEIVED_SHUTDOWN,
        )
    };
}

/// Removes the session from the context's cache; OpenSSL also marks it not
/// resumable, so a client holding it will not offer it again.
pub(crate) fn forget_session(ssl: &mut SslRef) {
    // SAFETY: `ssl` is valid; the session and context pointers come from it and
    // stay valid while it lives; SSL_CTX_remove_session accepts any session.
    unsafe {
        let session = ffi::SSL_get_session(ssl.as_ptr());
        if !session.is_null() {
            ffi::SSL_CTX_remove_session(ffi::SSL_get_SSL_CTX(ssl.as_ptr()), session);
        }
        ffi::ERR_clear_error();
    }
}

pub(crate) fn session_resumable(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is valid; the session pointer is checked for null.
    let (resumable, stateless_tickets) = unsafe {
        let session = ffi::SSL_get_session(ssl.as_ptr());
        let resumable = !session.is_null() && SSL_SESSION_is_resumable(session) == 1;
        let tickets = ffi::SSL_is_server(ssl.as_ptr()) == 1
            && SSL_get_options(ssl.as_ptr()) & NO_TICKET == 0
            && (ffi::SSL_version(ssl.as_ptr()) != ffi::TLS1_3_VERSION
                || ffi::SSL_get_num_tickets(ssl.as_ptr()) > 0);
        (resumable, tickets)
    };
    // A server cannot revoke a stateless ticket: the client can still resume.
    resumable || (stateless_tickets && handshake_completed(ssl))
}

/// The handshake completed at least once (both Finished messages were
/// exchanged), even if the connection failed since.
fn handshake_completed(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is valid; with a null buffer and count 0 these only return
    // the lengths of our Finished message and of the peer's.
    unsafe {
        ffi::SSL_get_finished(ssl.as_ptr(), std::ptr::null_mut(), 0) > 0
            && ffi::SSL_get_peer_finished(ssl.as_ptr(), std::ptr::null_mut(), 0) > 0
    }
}

pub(crate) fn saved_report(ssl: &SslRef) -> Option<Report> {
    saved_index()
        .and_then(|index| ssl.ex_data(index))
        .and_then(|s| s.report)
}

pub(crate) fn save_report(ssl: &mut SslRef, report: &Report) {
    with_saved(ssl, |s| s.report = Some(*report));
}

fn with_saved(ssl: &mut SslRef, f: impl FnOnce(&mut Saved)) {
    let Some(index) = saved_index() else { return };
    if let Some(saved) = ssl.ex_data_mut(index) {
        f(saved);
    } else {
        let mut saved = Saved::default();
        f(&mut saved);
        ssl.set_ex_data(index, saved);
    }
}

/// Clears the error queue before an OpenSSL call: a stale entry would turn the
/// next `SSL_ERROR_SYSCALL` into a misclassified `SSL_ERROR_SSL`.
pub(crate) fn clear_errors() {
    // SAFETY: both only touch this thread's error queue. ERR_clear_error resets
    // every slot of the queue; peeking first skips that when it is empty, as it
    // almost always is.
    unsafe {
        if ERR_peek_error() != 0 {
            ffi::ERR_clear_error();
        }
    }
}

/// Runs one OpenSSL call (and the classification of its failure) on a clean
/// error queue, so that no stale entry misleads it, and clears the queue again
/// after a failure, so that none of its entries outlives it to mislead the
/// application's next call. (A call that succeeded leaves nothing to clear; the
/// shutdown's `end` clears once more, for the rare entry OpenSSL leaves behind a
/// success.)
pub(crate) fn with_clean_queue<T: Failed>(call: impl FnOnce() -> T) -> T {
    clear_errors();
    let result = call();
    if result.failed() {
        clear_errors();
    }
    result
}

/// The result of an OpenSSL call, as `with_clean_queue` sees it.
pub(crate) trait Failed {
    /// The call failed (including "retry": its entries, if any, are stale now).
    fn failed(&self) -> bool;
}

impl<T, E> Failed for Result<T, E> {
    fn failed(&self) -> bool {
        self.is_err()
    }
}

impl Failed for (c_int, Option<TlsError>) {
    fn failed(&self) -> bool {
        self.1.is_some()
    }
}
