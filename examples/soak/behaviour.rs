//! The ways a peer ends a connection in the soak, and the report each one calls
//! for.

use closenotify::{Alert, Outcome, Report, Stage};

/// What the peer does once the handshake is done. The peer process listens on
/// one port per behaviour: the client chooses it by the port it connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads our close_notify, waits a little, answers with its own.
    Answers,
    /// Never reads, never answers: our peer timeout ends the shutdown.
    Silent,
    /// Reads our close_notify, waits a little, then closes with an RST.
    Resets,
    /// Reads our close_notify, waits a little, then closes (a FIN, no
    /// close_notify).
    Truncates,
    /// Reads our close_notify, waits a little, then sends application data, more
    /// than our drain limit, and closes.
    Floods,
    /// Waits a little, then reads the forged record our client sent after the
    /// handshake and sends the fatal alert it calls for (bad_record_mac).
    Alerts,
}

impl Behaviour {
    pub const ALL: [Behaviour; 6] = [
        Behaviour::Answers,
        Behaviour::Silent,
        Behaviour::Resets,
        Behaviour::Truncates,
        Behaviour::Floods,
        Behaviour::Alerts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Answers => "answers",
            Behaviour::Silent => "silent",
            Behaviour::Resets => "resets",
            Behaviour::Truncates => "truncates",
            Behaviour::Floods => "floods",
            Behaviour::Alerts => "alerts",
        }
    }

    /// The outcome this behaviour calls for.
    pub fn outcome(self) -> Outcome {
        match self {
            Behaviour::Answers => Outcome::Clean,
            Behaviour::Silent => Outcome::TimedOut,
            Behaviour::Resets => Outcome::Reset,
            Behaviour::Truncates => Outcome::Truncated,
            Behaviour::Floods => Outcome::DrainLimit,
            Behaviour::Alerts => Outcome::PeerAlert,
        }
    }

    /// Whether `report` is the one this behaviour calls for: its outcome, and
    /// where the outcome has more to say, the stage (a silent peer times out
    /// waiting for it, not while flushing) and the alert.
    pub fn expects(self, report: &Report) -> bool {
        if report.outcome != self.outcome() {
            return false;
        }
        match self {
            Behaviour::Silent => report.stage == Stage::AwaitPeer,
            Behaviour::Alerts => report.alert.map(|a| a.alert) == Some(Alert::BadRecordMac),
            _ => true,
        }
    }
}

/// A well-formed TLS application-data record header with a body that fails
/// authentication: the peer's OpenSSL raises bad_record_mac on it. The client
/// of an `Alerts` connection sends it, under the TLS layer, right after the
/// handshake.
pub fn forged_record() -> Vec<u8> {
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    record.extend((0..0x30u8).map(|i| i.wrapping_mul(37)));
    record
}
