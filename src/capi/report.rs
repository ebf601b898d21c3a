//! `closenotify_report`: a [`Report`] as C reads it.

use std::ffi::{c_char, c_int};

use super::static_cstr;
use crate::report::Report;

/// How the connection ended (the names of `closenotify_outcome_name`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_outcome(pub u32);
/// Both close_notify alerts exchanged.
pub const CLOSENOTIFY_OUTCOME_CLEAN: closenotify_outcome = closenotify_outcome(0);
/// Ours flushed; not waiting, by policy.
pub const CLOSENOTIFY_OUTCOME_SENT_ONLY: closenotify_outcome = closenotify_outcome(1);
/// No close_notify sent: by policy, or the connection was not usable.
pub const CLOSENOTIFY_OUTCOME_QUIET: closenotify_outcome = closenotify_outcome(2);
/// The peer ended the transport without close_notify.
pub const CLOSENOTIFY_OUTCOME_TRUNCATED: closenotify_outcome = closenotify_outcome(3);
/// Transport error; `os_error` has the errno.
pub const CLOSENOTIFY_OUTCOME_RESET: closenotify_outcome = closenotify_outcome(4);
/// The peer sent a fatal alert; `alert` has its code.
pub const CLOSENOTIFY_OUTCOME_PEER_ALERT: closenotify_outcome = closenotify_outcome(5);
/// Our side rejected what arrived; `alert` has the alert it raised.
pub const CLOSENOTIFY_OUTCOME_PROTOCOL_ERROR: closenotify_outcome = closenotify_outcome(6);
/// A stage ran past its timeout; `stage` names it.
pub const CLOSENOTIFY_OUTCOME_TIMED_OUT: closenotify_outcome = closenotify_outcome(7);
/// The peer sent more application data than `drain_limit`.
pub const CLOSENOTIFY_OUTCOME_DRAIN_LIMIT: closenotify_outcome = closenotify_outcome(8);

/// Who sent the first close_notify.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_initiator(pub u32);
/// We did.
pub const CLOSENOTIFY_INITIATOR_LOCAL: closenotify_initiator = closenotify_initiator(0);
/// The peer's had arrived before the shutdown began.
pub const CLOSENOTIFY_INITIATOR_PEER: closenotify_initiator = closenotify_initiator(1);

/// The stages of a shutdown.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_stage(pub u32);
/// Getting our close_notify into the kernel.
pub const CLOSENOTIFY_STAGE_FLUSH: closenotify_stage = closenotify_stage(0);
/// `shutdown(SHUT_WR)`.
pub const CLOSENOTIFY_STAGE_HALF_CLOSE: closenotify_stage = closenotify_stage(1);
/// Waiting for the peer's close_notify.
pub const CLOSENOTIFY_STAGE_AWAIT_PEER: closenotify_stage = closenotify_stage(2);
/// Waiting for the kernel send queue to empty.
pub const CLOSENOTIFY_STAGE_LINGER: closenotify_stage = closenotify_stage(3);

/// Reserved words at the end of `closenotify_report`: room for fields of later
/// versions, written as zero.
pub const CLOSENOTIFY_REPORT_RESERVED: usize = 2;

/// How a connection ended. Written whole by the library (the reserved words as
/// zero); a later version fills them with new fields, so the size never changes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct closenotify_report {
    /// `CLOSENOTIFY_OUTCOME_*`.
    pub outcome: closenotify_outcome,
    /// `CLOSENOTIFY_INITIATOR_*`.
    pub initiator: closenotify_initiator,
    /// The stage that timed out, or the last stage reached.
    pub stage: closenotify_stage,
    /// The alert behind `peer_alert` (received) or `protocol_error` (raised by our
    /// side); -1 if none. `closenotify_alert_name` gives its RFC name. The peer's
    /// own alert, when OpenSSL turned it into an error of its own, is
    /// `peer_alert`.
    pub alert: c_int,
    /// The errno behind `reset`; 0 if none.
    pub os_error: c_int,
    /// Our close_notify was written to the kernel.
    pub close_notify_sent: bool,
    /// The peer's close_notify arrived.
    pub close_notify_received: bool,
    /// `shutdown(SHUT_WR)` was applied.
    pub half_closed: bool,
    /// The session can still be resumed.
    pub session_resumable: bool,
    /// Application bytes received and discarded after our close_notify.
    pub discarded_bytes: u64,
    /// Time from the first call to the report, in milliseconds.
    pub elapsed_ms: u64,
    /// Negotiated version as on the wire (0x0303 TLS 1.2, 0x0304 TLS 1.3); 0 if
    /// the handshake never finished.
    pub tls_version: c_int,
    /// `SSL_shutdown` and `SSL_read` calls made.
    pub ssl_calls: u32,
    /// A `CLOSENOTIFY_MODE_STOPTLS` shutdown succeeded: the fd is open and the
    /// next byte it delivers is the peer's first plaintext byte (nothing past the
    /// peer's close_notify was read). Always false in the other modes.
    pub transport_reusable: bool,
    /// Bytes in the kernel send queue, not yet acknowledged, when the linger
    /// stage began (what it waited for); -1 if the stage did not run.
    pub linger_bytes: i64,
    /// Why, in words: OpenSSL's reason for `protocol_error` ("wrong version
    /// number", ...), why a shutdown was `quiet` ("by policy", "handshake
    /// unfinished or fatal error", "bad write retry", ...); always set for those
    /// two outcomes, NULL when there is nothing to add (`clean`, `sent_only`,
    /// `timed_out`, ...). The string is static.
    pub detail: *const c_char,
    /// Application bytes received after our close_notify and handed to the
    /// caller (`closenotify_shutdown_step_read`, the sink of
    /// `closenotify_shutdown_blocking_read`), whatever the outcome: on
    /// `timed_out`, what arrived before the deadline. (Added in 0.2, in what was
    /// the first reserved word.)
    pub delivered_bytes: u64,
    /// The first alert the peer sent during the shutdown, at any level
    /// (close_notify aside): -1 if none. A TLS 1.2 peer's warning that OpenSSL
    /// made fatal (no_renegotiation becomes our handshake_failure) is here
    /// while `alert` names ours. (Added in 0.2.)
    pub peer_alert: c_int,
    /// The level of `peer_alert` on the wire: 1 warning, 2 fatal, 0 if none.
    /// (Added in 0.2.)
    pub peer_alert_level: c_int,
    /// Zero; later versions put new fields here.
    pub reserved: [u64; CLOSENOTIFY_REPORT_RESERVED],
}

pub(super) fn to_c_report(r: &Report) -> closenotify_report {
    closenotify_report {
        outcome: closenotify_outcome(r.outcome.number()),
        initiator: closenotify_initiator(r.initiator.number()),
        stage: closenotify_stage(r.stage.number()),
        alert: r.alert.map_or(-1, |a| c_int::from(a.alert.code())),
        os_error: r.os_error.unwrap_or(0),
        close_notify_sent: r.close_notify_sent,
        close_notify_received: r.close_notify_received,
        half_closed: r.half_closed,
        session_resumable: r.session_resumable,
        discarded_bytes: r.discarded_bytes,
        elapsed_ms: r.elapsed.as_millis().min(u64::MAX as u128) as u64,
        tls_version: r.tls_version.map_or(0, |v| c_int::from(v.wire())),
        ssl_calls: r.ssl_calls,
        transport_reusable: r.transport_reusable,
        linger_bytes: r
            .linger_bytes
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        detail: r.detail.map_or(std::ptr::null(), static_cstr),
        delivered_bytes: r.delivered_bytes,
        peer_alert: r
            .alerts
            .from_peer()
            .map_or(-1, |a| c_int::from(a.alert.code())),
        peer_alert_level: r
            .alerts
            .from_peer()
            .map_or(0, |a| c_int::from(a.level.code())),
        reserved: [0; CLOSENOTIFY_REPORT_RESERVED],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Initiator, Outcome, Stage};

    /// Each C constant is its Rust value's number, and every value has one: a
    /// value added to the Rust enum without its C constant fails here.
    #[test]
    fn the_c_constants_are_the_rust_values() {
        let outcomes = [
            (CLOSENOTIFY_OUTCOME_CLEAN, Outcome::Clean),
            (CLOSENOTIFY_OUTCOME_SENT_ONLY, Outcome::SentOnly),
            (CLOSENOTIFY_OUTCOME_QUIET, Outcome::Quiet),
            (CLOSENOTIFY_OUTCOME_TRUNCATED, Outcome::Truncated),
            (CLOSENOTIFY_OUTCOME_RESET, Outcome::Reset),
            (CLOSENOTIFY_OUTCOME_PEER_ALERT, Outcome::PeerAlert),
            (CLOSENOTIFY_OUTCOME_PROTOCOL_ERROR, Outcome::ProtocolError),
            (CLOSENOTIFY_OUTCOME_TIMED_OUT, Outcome::TimedOut),
            (CLOSENOTIFY_OUTCOME_DRAIN_LIMIT, Outcome::DrainLimit),
        ];
        assert_eq!(outcomes.len(), Outcome::ALL.len());
        for (c, rust) in outcomes {
            assert_eq!(c.0, rust.number(), "{rust}");
        }
        let stages = [
            (CLOSENOTIFY_STAGE_FLUSH, Stage::Flush),
            (CLOSENOTIFY_STAGE_HALF_CLOSE, Stage::HalfClose),
            (CLOSENOTIFY_STAGE_AWAIT_PEER, Stage::AwaitPeer),
            (CLOSENOTIFY_STAGE_LINGER, Stage::Linger),
        ];
        assert_eq!(stages.len(), Stage::ALL.len());
        for (c, rust) in stages {
            assert_eq!(c.0, rust.number(), "{rust}");
        }
        let initiators = [
            (CLOSENOTIFY_INITIATOR_LOCAL, Initiator::Local),
            (CLOSENOTIFY_INITIATOR_PEER, Initiator::Peer),
        ];
        assert_eq!(initiators.len(), Initiator::ALL.len());
        for (c, rust) in initiators {
            assert_eq!(c.0, rust.number(), "{rust}");
        }
    }
}
