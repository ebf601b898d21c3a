//! How a connection ended: [`Report`], [`Outcome`], [`Stage`], [`Alert`].
//!
//! The names returned by the `as_str` methods are the public names: the same in logs,
//! in the examples' JSON and in the C API.

use std::fmt;
use std::time::Duration;

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Both close_notify alerts were exchanged: every byte either side sent was
    /// received, and nobody truncated the stream.
    Clean,
    /// Our close_notify reached the kernel; by policy we did not wait for an answer.
    SentOnly,
    /// No close_notify was sent: by policy, or because the connection was not usable
    /// (handshake not finished, a fatal error already happened, an unfinished write).
    Quiet,
    /// The peer ended the transport (EOF) without close_notify: whatever it sent last
    /// may be incomplete.
    Truncated,
    /// Transport error: ECONNRESET, EPIPE or another errno ([`Report::os_error`]).
    Reset,
    /// The peer sent a fatal alert ([`Report::alert`]).
    PeerAlert,
    /// Our side rejected what arrived (bad record MAC, garbage, ...);
    /// [`Report::alert`] is the alert our side raised.
    ProtocolError,
    /// A stage ran past its timeout ([`Report::stage`] names it).
    TimedOut,
    /// The peer kept sending application data past [`Policy::drain_limit`](crate::Policy::drain_limit)
    /// (or, while it is read with [`Shutdown::poll_read`](crate::Shutdown::poll_read),
    /// past the read limit).
    DrainLimit,
}

impl Outcome {
    /// Every outcome, in the order of the C constants.
    pub const ALL: [Outcome; 9] = [
        Outcome::Clean,
        Outcome::SentOnly,
        Outcome::Quiet,
        Outcome::Truncated,
        Outcome::Reset,
        Outcome::PeerAlert,
        Outcome::ProtocolError,
        Outcome::TimedOut,
        Outcome::DrainLimit,
    ];

    /// The public name: `clean`, `sent_only`, `quiet`, `truncated`, `reset`,
    /// `peer_alert`, `protocol_error`, `timed_out`, `drain_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::SentOnly => "sent_only",
            Outcome::Quiet => "quiet",
            Outcome::Truncated => "truncated",
            Outcome::Reset => "reset",
            Outcome::PeerAlert => "peer_alert",
            Outcome::ProtocolError => "protocol_error",
            Outcome::TimedOut => "timed_out",
            Outcome::DrainLimit => "drain_limit",
        }
    }

    /// Whether our close_notify left and nothing went wrong: `clean` and `sent_only`.
    /// These are the outcomes that keep the session resumable.
    pub fn is_orderly(self) -> bool {
        matches!(self, Outcome::Clean | Outcome::SentOnly)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent the first close_notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// We did (or the shutdown began before any close_notify from the peer arrived).
    Local,
    /// The peer's close_notify had already arrived when the shutdown began.
    Peer,
}

impl Initiator {
    /// `local` or `peer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Local => "local",
            Initiator::Peer => "peer",
        }
    }
}

impl fmt::Display for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stages of a shutdown, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Getting our close_notify into the kernel (`SSL_shutdown`). A close the
    /// peer initiated ends here when there is no half-close (by policy, or in
    /// [`Mode::StopTls`](crate::Mode::StopTls)).
    Flush,
    /// `shutdown(SHUT_WR)` once close_notify is flushed; where a close the peer
    /// initiated ends.
    HalfClose,
    /// Reading until the peer's close_notify (bidirectional mode).
    AwaitPeer,
    /// Waiting for the kernel send queue to empty before the caller closes.
    Linger,
}

impl Stage {
    /// `flush`, `half_close`, `await_peer`, `linger`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Flush => "flush",
            Stage::HalfClose => "half_close",
            Stage::AwaitPeer => "await_peer",
            Stage::Linger => "linger",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! alerts {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $name:literal, )*) => {
        /// A TLS alert, with the names of RFC 8446 §6 and RFC 5246 §7.2.
        ///
        /// Codes that neither RFC defines are kept as [`Alert::Unknown`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Alert {
            $( $(#[$doc])* #[doc = concat!("`", $name, "` (", $code, ")")] $variant, )*
            /// A code neither RFC defines.
            Unknown(u8),
        }

        impl Alert {
            /// Every alert defined by RFC 8446 or RFC 5246, in code order.
            pub const ALL: &'static [Alert] = &[$(Alert::$variant),*];

            /// The alert for a wire code.
            pub fn from_code(code: u8) -> Alert {
                match code {
                    $( $code => Alert::$variant, )*
                    other => Alert::Unknown(other),
                }
            }

            /// The wire code.
            pub fn code(self) -> u8 {
                match self {
                    $( Alert::$variant => $code, )*
                    Alert::Unknown(code) => code,
                }
            }

            /// The RFC name (`bad_record_mac`, `unknown_ca`, ...); `unknown` for codes
            /// no RFC defines.
            pub fn name(self) -> &'static str {
                match self {
                    $( Alert::$variant => $name, )*
                    Alert::Unknown(_) => "unknown",
                }
            }
        }
    };
}

alerts! {
    CloseNotify = 0 => "close_notify",
    UnexpectedMessage = 10 => "unexpected_message",
    BadRecordMac = 20 => "bad_record_mac",
    DecryptionFailed = 21 => "decryption_failed_RESERVED",
    RecordOverflow = 22 => "record_overflow",
    DecompressionFailure = 30 => "decompression_failure",
    HandshakeFailure = 40 => "handshake_failure",
    NoCertificate = 41 => "no_certificate_RESERVED",
    BadCertificate = 42 => "bad_certificate",
    UnsupportedCertificate = 43 => "unsupported_certificate",
    CertificateRevoked = 44 => "certificate_revoked",
    CertificateExpired = 45 => "certificate_expired",
    CertificateUnknown = 46 => "certificate_unknown",
    IllegalParameter = 47 => "illegal_parameter",
    UnknownCa = 48 => "unknown_ca",
    AccessDenied = 49 => "access_denied",
    DecodeError = 50 => "decode_error",
    DecryptError = 51 => "decrypt_error",
    ExportRestriction = 60 => "export_restriction_RESERVED",
    ProtocolVersion = 70 => "protocol_version",
    InsufficientSecurity = 71 => "insufficient_security",
    InternalError = 80 => "internal_error",
    InappropriateFallback = 86 => "inappropriate_fallback",
    UserCanceled = 90 => "user_canceled",
    NoRenegotiation = 100 => "no_renegotiation",
    MissingExtension = 109 => "missing_extension",
    UnsupportedExtension = 110 => "unsupported_extension",
    CertificateUnobtainable = 111 => "certificate_unobtainable_RESERVED",
    UnrecognizedName = 112 => "unrecognized_name",
    BadCertificateStatusResponse = 113 => "bad_certificate_status_response",
    BadCertificateHashValue = 114 => "bad_certificate_hash_value_RESERVED",
    UnknownPskIdentity = 115 => "unknown_psk_identity",
    CertificateRequired = 116 => "certificate_required",
    NoApplicationProtocol = 120 => "no_application_protocol",
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.code())
    }
}

/// Which side raised an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertDirection {
    /// The peer sent it ([`Outcome::PeerAlert`]).
    Received,
    /// Our side raised it ([`Outcome::ProtocolError`]). OpenSSL puts no alert on the
    /// wire after our close_notify (RFC 8446 §6.1), so during a shutdown the peer
    /// sees only the closed transport; the report still names the alert.
    Sent,
}

impl AlertDirection {
    /// `received` or `sent`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertDirection::Received => "received",
            AlertDirection::Sent => "sent",
        }
    }
}

/// An alert and who raised it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlertRecord {
    /// The alert.
    pub alert: Alert,
    /// Received from the peer, or raised by our side.
    pub direction: AlertDirection,
}

/// The negotiated protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.0.
    Tls1_0,
    /// TLS 1.1.
    Tls1_1,
    /// TLS 1.2.
    Tls1_2,
    /// TLS 1.3.
    Tls1_3,
    /// Another wire version (DTLS, SSL 3.0...).
    Other(u16),
}

impl TlsVersion {
    /// The version for a wire code (`0x0303` is TLS 1.2).
    pub fn from_wire(version: u16) -> TlsVersion {
        match version {
            0x0301 => TlsVersion::Tls1_0,
            0x0302 => TlsVersion::Tls1_1,
            0x0303 => TlsVersion::Tls1_2,
            0x0304 => TlsVersion::Tls1_3,
            other => TlsVersion::Other(other),
        }
    }

    /// The wire code (`0x0303` for TLS 1.2): the inverse of
    /// [`from_wire`](TlsVersion::from_wire).
    pub fn wire(self) -> u16 {
        match self {
            TlsVersion::Tls1_0 => 0x0301,
            TlsVersion::Tls1_1 => 0x0302,
            TlsVersion::Tls1_2 => 0x0303,
            TlsVersion::Tls1_3 => 0x0304,
            TlsVersion::Other(other) => other,
        }
    }

    /// OpenSSL's name: `TLSv1`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "TLSv1",
            TlsVersion::Tls1_1 => "TLSv1.1",
            TlsVersion::Tls1_2 => "TLSv1.2",
            TlsVersion::Tls1_3 => "TLSv1.3",
            TlsVersion::Other(_) => "unknown",
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one connection ended. Produced once per connection; asking again returns the
/// same report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Who sent the first close_notify.
    pub initiator: Initiator,
    /// The stage that timed out, or the last stage the shutdown reached.
    pub stage: Stage,
    /// Our close_notify was written to the kernel.
    pub close_notify_sent: bool,
    /// The peer's close_notify arrived.
    pub close_notify_received: bool,
    /// `shutdown(SHUT_WR)` was applied to the socket (or found applied already,
    /// by an earlier shutdown of the same connection, while the connection is
    /// still open).
    pub half_closed: bool,
    /// The alert behind `peer_alert` or `protocol_error`.
    pub alert: Option<AlertRecord>,
    /// The errno behind `reset` (ECONNRESET, EPIPE, ...).
    pub os_error: Option<i32>,
    /// Application bytes received and discarded after our close_notify.
    pub discarded_bytes: u64,
    /// Application bytes received after our close_notify and handed to the caller
    /// (by [`Shutdown::poll_read`](crate::Shutdown::poll_read) and the readers built
    /// on it), up to the end of the shutdown, whatever the outcome: on `timed_out`,
    /// what arrived before the deadline.
    pub delivered_bytes: u64,
    /// Time from the first call to the final report: the spread of the `now`
    /// values given to [`Shutdown::poll`](crate::Shutdown::poll), or the time that
    /// really passed if that is more.
    pub elapsed: Duration,
    /// Whether the session can still be resumed. Only `clean` and `sent_only` (and
    /// `truncated` when the policy says so) keep it; every other outcome removes it
    /// from the `SSL_CTX` cache and marks it not resumable. A server that issues
    /// stateless tickets cannot revoke them: it reports `true` whenever tickets were
    /// possible, since the client can still resume.
    pub session_resumable: bool,
    /// The negotiated version; `None` when the handshake never finished.
    pub tls_version: Option<TlsVersion>,
    /// OpenSSL's reason text for `protocol_error` (`"wrong version number"`, ...).
    pub detail: Option<&'static str>,
    /// Bytes the kernel send queue held, not yet acknowledged by the peer, when the
    /// linger stage began: what it waited for (`SIOCOUTQ`). `None` when the stage
    /// did not run (no linger timeout, or the shutdown ended before it).
    pub linger_bytes: Option<u64>,
    /// A [`Mode::StopTls`](crate::Mode::StopTls) shutdown succeeded: both
    /// close_notify alerts went through, the connection is open on our side, and
    /// nothing past the peer's close_notify was read, so the next byte the socket
    /// delivers is the peer's first plaintext byte (or its EOF, if the peer closed
    /// TCP after its close_notify). Always false in the other modes.
    pub transport_reusable: bool,
    /// `SSL_shutdown` and `SSL_read` calls made: a silent peer costs a handful, never a
    /// loop.
    pub ssl_calls: u32,
}

impl Report {
    /// `Ok` for `clean`, `sent_only` and `quiet`; otherwise the [`Error`](crate::Error)
    /// that describes the outcome, which converts into a [`std::io::Error`] of the
    /// matching kind.
    pub fn result(&self) -> Result<(), crate::Error> {
        use crate::Error;
        match self.outcome {
            Outcome::Clean | Outcome::SentOnly | Outcome::Quiet => Ok(()),
            Outcome::Truncated => Err(Error::Truncated),
            Outcome::Reset => Err(Error::Reset {
                os_error: self.os_error.unwrap_or(0),
            }),
            Outcome::PeerAlert => Err(Error::PeerAlert {
                alert: self.alert.map_or(Alert::Unknown(255), |a| a.alert),
            }),
            Outcome::ProtocolError => Err(Error::Protocol {
                alert: self.alert.map(|a| a.alert),
                detail: self.detail.unwrap_or("unknown"),
            }),
            Outcome::TimedOut => Err(Error::TimedOut { stage: self.stage }),
            Outcome::DrainLimit => Err(Error::DrainLimit {
                discarded: self.discarded_bytes,
            }),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (initiator {}, stage {}",
            self.outcome, self.initiator, self.stage
        )?;
        if let Some(a) = self.alert {
            write!(f, ", alert {} {}", a.alert, a.direction.as_str())?;
        }
        if let Some(e) = self.os_error {
            write!(f, ", {}", std::io::Error::from_raw_os_error(e))?;
        }
        if self.discarded_bytes > 0 {
            write!(f, ", {} bytes discarded", self.discarded_bytes)?;
        }
        write!(f, ", {:?})", self.elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_table_round_trips_every_code() {
        for code in 0..=255u8 {
            let alert = Alert::from_code(code);
            assert_eq!(alert.code(), code);
        }
        assert_eq!(Alert::ALL.len(), 34);
        for pair in Alert::ALL.windows(2) {
            assert!(pair[0].code() < pair[1].code());
        }
        assert_eq!(Alert::from_code(20).name(), "bad_record_mac");
        assert_eq!(Alert::from_code(48).name(), "unknown_ca");
        assert_eq!(Alert::from_code(90).name(), "user_canceled");
        assert_eq!(Alert::from_code(116).name(), "certificate_required");
        assert_eq!(Alert::from_code(3), Alert::Unknown(3));
        assert_eq!(Alert::Unknown(3).name(), "unknown");
    }

    #[test]
    fn outcome_names_are_snake_case_and_distinct() {
        let names: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for n in names {
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{n}");
        }
    }
}
