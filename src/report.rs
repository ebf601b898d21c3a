//! How a connection ended: [`Report`], [`Outcome`], [`Stage`], [`Alert`].
//!
//! The names returned by the `as_str` methods are the public names: the same in logs,
//! in the examples' JSON and in the C API.

use std::fmt;
use std::time::Duration;

use crate::names::named;

named! {
    /// How the connection ended.
    ///
    /// Non-exhaustive: a later version may tell more endings apart; match with a
    /// wildcard arm (or use [`Outcome::is_orderly`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Outcome {
        /// Both close_notify alerts were exchanged: every byte either side sent was
        /// received, and nobody truncated the stream.
        Clean => "clean",
        /// Our close_notify reached the kernel; by policy we did not wait for an answer.
        SentOnly => "sent_only",
        /// No close_notify was sent: by policy, or because the connection was not usable
        /// (handshake not finished, a fatal error already happened, an unfinished write).
        Quiet => "quiet",
        /// The peer ended the transport (EOF) without close_notify: whatever it sent last
        /// may be incomplete.
        Truncated => "truncated",
        /// Transport error: ECONNRESET, EPIPE or another errno ([`Report::os_error`]).
        Reset => "reset",
        /// The peer sent a fatal alert ([`Report::alert`]).
        PeerAlert => "peer_alert",
        /// Our side rejected what arrived (bad record MAC, garbage, ...);
        /// [`Report::alert`] is the alert our side raised.
        ProtocolError => "protocol_error",
        /// A stage ran past its timeout ([`Report::stage`] names it).
        TimedOut => "timed_out",
        /// The peer kept sending application data past [`Policy::drain_limit`](crate::Policy::drain_limit)
        /// (or, while it is read with [`Shutdown::poll_read`](crate::Shutdown::poll_read),
        /// past the read limit).
        DrainLimit => "drain_limit",
    }
}

impl Outcome {
    /// Whether our close_notify left and nothing went wrong: `clean` and `sent_only`.
    /// These are the outcomes that keep the session resumable.
    pub fn is_orderly(self) -> bool {
        matches!(self, Outcome::Clean | Outcome::SentOnly)
    }
}

named! {
    /// Who sent the first close_notify, as this side saw it when its shutdown
    /// began.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Initiator {
        /// We did: the peer's close_notify had not been read when the shutdown
        /// began. This includes close_notify alerts that crossed on the wire, and a
        /// peer's close_notify that was already waiting, unread, in the socket:
        /// this side cannot see it without a read, and a shutdown does not read
        /// before its own close_notify is out.
        Local => "local",
        /// The peer did: its close_notify had been read (by the application's
        /// reads, or by an earlier shutdown) when the shutdown began, which then
        /// only answers it.
        Peer => "peer",
    }
}

named! {
    /// The stages of a shutdown, in order.
    ///
    /// Non-exhaustive: a later version may add a stage; match with a wildcard arm.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    #[non_exhaustive]
    pub enum Stage {
        /// Getting our close_notify into the kernel (`SSL_shutdown`). A close the
        /// peer initiated ends here when there is no half-close (by policy, or in
        /// [`Mode::StopTls`](crate::Mode::StopTls)).
        Flush => "flush",
        /// `shutdown(SHUT_WR)` once close_notify is flushed; where a close the peer
        /// initiated ends.
        HalfClose => "half_close",
        /// Reading until the peer's close_notify (bidirectional mode).
        AwaitPeer => "await_peer",
        /// Waiting for the kernel send queue to empty before the caller closes.
        Linger => "linger",
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

named! {
    /// Which side raised an alert.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum AlertDirection {
        /// The peer sent it.
        Received => "received",
        /// Our side raised it. OpenSSL puts no alert on the wire after our
        /// close_notify (RFC 8446 §6.1), so during a shutdown the peer sees only the
        /// closed transport; the report still names the alert.
        Sent => "sent",
    }
}

named! {
    /// The level of an alert (RFC 5246 §7.2; TLS 1.3 treats every alert but
    /// close_notify and user_canceled as fatal, whatever its level).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum AlertLevel {
        /// Level 1.
        Warning => "warning",
        /// Level 2.
        Fatal => "fatal",
    }
}

impl AlertLevel {
    /// The level of a wire code (1 warning, 2 fatal); `None` for another value.
    pub fn from_code(code: u8) -> Option<AlertLevel> {
        match code {
            1 => Some(AlertLevel::Warning),
            2 => Some(AlertLevel::Fatal),
            _ => None,
        }
    }

    /// The wire code: 1 or 2.
    pub fn code(self) -> u8 {
        match self {
            AlertLevel::Warning => 1,
            AlertLevel::Fatal => 2,
        }
    }
}

/// An alert, who raised it, and at which level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AlertRecord {
    /// The alert.
    pub alert: Alert,
    /// Received from the peer, or raised by our side.
    pub direction: AlertDirection,
    /// The level on the wire; `Fatal` for an alert our side raised and kept off
    /// the wire (after our close_notify).
    pub level: AlertLevel,
}

impl AlertRecord {
    /// An alert `direction`, at `level`.
    pub fn new(alert: Alert, direction: AlertDirection, level: AlertLevel) -> AlertRecord {
        AlertRecord {
            alert,
            direction,
            level,
        }
    }
}

impl fmt::Display for AlertRecord {
    /// `received warning no_renegotiation(100)`, `sent fatal bad_record_mac(20)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.direction, self.level, self.alert)
    }
}

/// The alerts seen during a shutdown, in the order they came: those the peer
/// sent (warning or fatal), those our side sent, and the one our side raised for
/// a `protocol_error` (kept off the wire after our close_notify). close_notify
/// itself is not listed ([`Report::close_notify_sent`] and
/// [`Report::close_notify_received`] say it). At most [`AlertLog::CAPACITY`]
/// are kept: the first ones, and always the alert behind the outcome
/// ([`Report::alert`]), which takes the last place when the log is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AlertLog {
    records: [Option<AlertRecord>; AlertLog::CAPACITY],
}

impl AlertLog {
    /// How many alerts a log keeps.
    pub const CAPACITY: usize = 4;

    /// Adds `record` if there is room.
    pub(crate) fn push(&mut self, record: AlertRecord) {
        if let Some(slot) = self.records.iter_mut().find(|r| r.is_none()) {
            *slot = Some(record);
        }
    }

    /// Adds `record`, in the last place if the log is full.
    pub(crate) fn push_last(&mut self, record: AlertRecord) {
        let slot = self.records.iter().position(Option::is_none);
        self.records[slot.unwrap_or(Self::CAPACITY - 1)] = Some(record);
    }

    /// The alerts, in order.
    pub fn iter(&self) -> impl Iterator<Item = AlertRecord> + '_ {
        self.records.iter().map_while(|r| *r)
    }

    /// The first alert the peer sent, if any.
    pub fn from_peer(&self) -> Option<AlertRecord> {
        self.iter()
            .find(|r| r.direction == AlertDirection::Received)
    }

    /// How many alerts are listed.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no alert was seen.
    pub fn is_empty(&self) -> bool {
        self.records[0].is_none()
    }
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
    /// The alert behind `peer_alert` (the peer's) or `protocol_error` (the one
    /// our side raised).
    pub alert: Option<AlertRecord>,
    /// Every alert seen during the shutdown, the peer's and ours, with their
    /// levels (a peer's warning that OpenSSL turned into a fatal error of its
    /// own is here beside the alert our side raised for it).
    pub alerts: AlertLog,
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
    /// Why, in words: OpenSSL's reason for `protocol_error` (`"wrong version
    /// number"`, ...) and for a failure the application handed over; why a
    /// shutdown was `quiet` (`"by policy"`, `"handshake unfinished or fatal
    /// error"`, `"bad write retry"`, ...); why a STOPTLS could not hand the
    /// transport back. `None` for the other outcomes.
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
    /// `Ok` for `clean`, `sent_only` and `quiet` (the connection ended in order,
    /// or by choice); otherwise a [`CloseError`](crate::CloseError) carrying this
    /// report, which converts into a [`std::io::Error`] of the matching kind
    /// (`UnexpectedEof` for a truncation, `TimedOut`, `ConnectionReset`,
    /// `InvalidData`).
    pub fn result(&self) -> Result<(), crate::CloseError> {
        match self.outcome {
            Outcome::Clean | Outcome::SentOnly | Outcome::Quiet => Ok(()),
            _ => Err(crate::CloseError::new(*self)),
        }
    }
}

impl fmt::Display for Report {
    /// One line with what an operator needs:
    /// `protocol_error (TLSv1.2, initiator local, stage await_peer, received
    /// warning no_renegotiation(100), sent fatal handshake_failure(40), detail:
    /// no renegotiation, 312µs)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self
            .tls_version
            .map_or("no TLS version", TlsVersion::as_str);
        write!(
            f,
            "{} ({version}, initiator {}, stage {}",
            self.outcome, self.initiator, self.stage
        )?;
        for alert in self.alerts.iter() {
            write!(f, ", {alert}")?;
        }
        if let Some(e) = self.os_error {
            write!(f, ", {}", std::io::Error::from_raw_os_error(e))?;
        }
        if self.discarded_bytes > 0 {
            write!(f, ", {} bytes discarded", self.discarded_bytes)?;
        }
        if self.delivered_bytes > 0 {
            write!(f, ", {} bytes delivered", self.delivered_bytes)?;
        }
        if let Some(detail) = self.detail {
            write!(f, ", detail: {detail}")?;
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

    /// One line with the version, the alerts both ways, the errno and the reason.
    #[test]
    fn display_says_what_an_operator_needs() {
        let mut alerts = AlertLog::default();
        alerts.push(AlertRecord::new(
            Alert::NoRenegotiation,
            AlertDirection::Received,
            AlertLevel::Warning,
        ));
        let ours = AlertRecord::new(
            Alert::HandshakeFailure,
            AlertDirection::Sent,
            AlertLevel::Fatal,
        );
        alerts.push(ours);
        let r = Report {
            outcome: Outcome::ProtocolError,
            initiator: Initiator::Local,
            stage: Stage::AwaitPeer,
            close_notify_sent: true,
            close_notify_received: false,
            half_closed: true,
            alert: Some(ours),
            alerts,
            os_error: None,
            discarded_bytes: 0,
            delivered_bytes: 12,
            elapsed: Duration::from_micros(312),
            session_resumable: false,
            tls_version: Some(TlsVersion::Tls1_2),
            detail: Some("no renegotiation"),
            linger_bytes: None,
            transport_reusable: false,
            ssl_calls: 3,
        };
        assert_eq!(
            r.to_string(),
            "protocol_error (TLSv1.2, initiator local, stage await_peer, received warning \
             no_renegotiation(100), sent fatal handshake_failure(40), 12 bytes delivered, \
             detail: no renegotiation, 312µs)"
        );
        let err = r.result().unwrap_err();
        assert_eq!(err.outcome(), Outcome::ProtocolError);
        assert_eq!(
            std::io::Error::from(err).kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
