//! What the examples share: their command-line parsing (`cli`), the echo
//! clients' options and printing (`client`), the line protocol around TLS
//! (`line`), the server's default identity and the JSON form of a report.
#![allow(dead_code)]

pub mod cli;
pub mod client;
pub mod line;
pub mod starttls;

use std::io;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

/// The self-signed identity a server uses when given no certificate.
pub fn identity() -> &'static (X509, PKey<Private>) {
    static ID: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    ID.get_or_init(|| closenotify::doc_support::self_signed("localhost").expect("certificate"))
}

/// Makes the final close() of the socket `sock` send an RST (SO_LINGER 0).
pub fn try_reset_on_drop(sock: &impl AsFd) -> io::Result<()> {
    socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO))
}

/// A report as the examples' JSON object, fields in the order the README shows
/// them: `before` first (the server's `peer` and `sni`), then the report, with
/// `middle` (byte counts, the client's errno) between `alerts` and
/// `discarded_bytes`.
pub fn report_json(
    before: Vec<(&str, serde_json::Value)>,
    r: &closenotify::Report,
    middle: Vec<(&str, serde_json::Value)>,
) -> serde_json::Value {
    use serde_json::json;
    let mut fields: Vec<(&str, serde_json::Value)> = before;
    fields.extend([
        ("outcome", json!(r.outcome.as_str())),
        ("initiator", json!(r.initiator.as_str())),
        ("stage", json!(r.stage.as_str())),
        ("alert", json!(r.alert.map(|a| a.alert.code()))),
        ("alert_name", json!(r.alert.map(|a| a.alert.name()))),
        // OpenSSL's reason (a protocol error), or why a shutdown was quiet.
        ("detail", json!(r.detail)),
        // Every alert of the shutdown, in order, with who sent it: when OpenSSL
        // answers a peer's alert with its own, both are here.
        (
            "alerts",
            json!(r
                .alerts
                .iter()
                .map(|a| json!({
                    "alert": a.alert.code(),
                    "name": a.alert.name(),
                    "direction": a.direction.as_str(),
                    "level": a.level.as_str(),
                }))
                .collect::<Vec<_>>()),
        ),
    ]);
    fields.extend(middle);
    fields.extend([
        ("discarded_bytes", json!(r.discarded_bytes)),
        ("elapsed_ms", json!(r.elapsed.as_millis() as u64)),
        ("tls_version", json!(r.tls_version.map(|v| v.as_str()))),
        ("session_resumable", json!(r.session_resumable)),
    ]);
    serde_json::Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}
