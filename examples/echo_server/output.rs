//! What the echo server prints: one line per finished connection (JSON with
//! `--json`), and the summary after SIGINT or SIGTERM.

use std::io::{self, Write};
use std::net::SocketAddr;

use closenotify::Report;
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::common;
use crate::Server;

/// What the JSON line says about a connection besides the report.
pub struct Info {
    pub peer: SocketAddr,
    /// The name the client sent in SNI.
    pub sni: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Server {
    pub(crate) fn emit_reports(&mut self) {
        let reports: Vec<(Info, Report)> = self.closer.reports().collect();
        for (info, report) in reports {
            self.report_line(&info, &report, None);
        }
    }

    /// One finished connection. `plaintext` is what came after a STOPTLS (`None`
    /// when the connection went to the Closer).
    pub(crate) fn report_line(
        &mut self,
        info: &Info,
        report: &Report,
        plaintext: Option<Option<&[u8]>>,
    ) {
        *self.outcomes.entry(report.outcome.as_str()).or_default() += 1;
        let received = plaintext
            .flatten()
            .map(|l| String::from_utf8_lossy(l).into_owned());
        if self.json {
            let mut v = common::report_json(
                vec![
                    ("peer", json!(info.peer.to_string())),
                    ("sni", json!(info.sni)),
                ],
                report,
                vec![
                    ("bytes_in", json!(info.bytes_in)),
                    ("bytes_out", json!(info.bytes_out)),
                ],
            );
            if let (true, Some(fields)) = (self.stoptls.is_some(), v.as_object_mut()) {
                fields.insert(
                    "transport_reusable".into(),
                    json!(report.transport_reusable),
                );
                fields.insert("plaintext_received".into(), json!(received));
            }
            println!("{v}");
        } else {
            let after = match (self.stoptls.is_some(), &received) {
                (false, _) => String::new(),
                (true, Some(l)) => format!(" then plaintext {l:?}"),
                (true, None) => " no plaintext".to_string(),
            };
            println!(
                "{} sni={} in={} out={} {report}{after}",
                info.peer,
                info.sni.as_deref().unwrap_or("-"),
                info.bytes_in,
                info.bytes_out
            );
        }
    }

    pub(crate) fn line(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        } else if let Some(peer) = value.get("peer") {
            println!(
                "{} {} {}",
                peer.as_str().unwrap_or("?"),
                value["outcome"],
                value["error"]
            );
        }
    }

    pub(crate) fn summary(&self) {
        let signal = match self.stopping {
            Some(SIGINT) => "SIGINT",
            Some(SIGTERM) => "SIGTERM",
            _ => "signal",
        };
        let total: u64 = self.outcomes.values().sum();
        println!(
            "{}",
            json!({ "summary": { "signal": signal, "connections": total, "outcomes": self.outcomes } })
        );
        io::stdout().flush().ok();
    }
}

/// OpenSSL's reason for a failed handshake, or the transport's error.
pub fn describe(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => stack
            .errors()
            .last()
            .and_then(|err| err.reason())
            .unwrap_or("TLS error")
            .to_string(),
        None => e
            .io_error()
            .map_or_else(|| "connection closed".to_string(), |io| io.to_string()),
    }
}
