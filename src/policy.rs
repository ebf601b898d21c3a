//! How a shutdown behaves: [`Mode`], [`Policy`] and its defaults.
//!
//! A `Policy` is always valid: it is built by [`PolicyBuilder::build`], which rejects
//! zero and absurd timeouts, so the shutdown functions that take one cannot fail on
//! it.

use std::time::Duration;

use crate::error::Error;
use crate::names::named;

named! {
    /// What the shutdown sends and waits for.
    ///
    /// Non-exhaustive: a later version may add a mode; match with a wildcard arm
    /// (or use [`Mode::awaits_peer`]).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Mode {
        /// Send our close_notify, half-close TCP, then wait for the peer's close_notify
        /// (OpenSSL's full shutdown; Boost.Asio `async_shutdown`). The only mode that can
        /// tell a complete stream from a truncated one.
        #[default]
        Bidirectional => "bidirectional",
        /// Send our close_notify, half-close TCP, do not wait for an answer (Go's
        /// `Close`, tokio-openssl, nginx for HTTP). Costs no round trip.
        SendOnly => "send_only",
        /// Send nothing (`SSL_set_quiet_shutdown`): for connections you abandon on
        /// purpose. The peer will see a truncation.
        Quiet => "quiet",
        /// Leave TLS and keep the TCP connection (STOPTLS, FTPS `CCC`): send our
        /// close_notify and wait for the peer's, as [`Mode::Bidirectional`] does, but
        /// never half-close, and read nothing past the peer's close_notify, so that
        /// the plaintext that follows it stays in the socket for the application.
        /// Success is `clean` with [`Report::transport_reusable`](crate::Report::transport_reusable)
        /// set; any other outcome leaves the connection unusable (close it).
        /// [`Policy::half_close`] does not apply, and a linger timeout is refused
        /// (there is no close to linger before).
        StopTls => "stop_tls",
    }
}

impl Mode {
    /// Whether the mode waits for the peer's close_notify: [`Mode::Bidirectional`]
    /// and [`Mode::StopTls`].
    pub fn awaits_peer(self) -> bool {
        matches!(self, Mode::Bidirectional | Mode::StopTls)
    }
}

named! {
    /// When a timeout should make the final `close()` send a TCP RST instead of a FIN.
    ///
    /// Closenotify never closes a socket it does not own; it sets `SO_LINGER {1, 0}` so
    /// that the owner's `close()` resets the connection and the kernel frees its state at
    /// once instead of retrying unsent bytes for minutes.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub enum ResetOnTimeout {
        /// Never reset: `close()` always sends a FIN.
        Never => "never",
        /// Reset when the flush stage times out (the default). The peer is not reading:
        /// our send buffer is full and a FIN would sit behind bytes that will never be
        /// delivered, keeping the socket alive in the kernel long after `close()`.
        #[default]
        FlushOnly => "flush_only",
        /// Reset on every timeout, including `await_peer` and `linger`. For servers under
        /// load that prefer freeing kernel state to a graceful FIN; an RST can destroy
        /// bytes the peer has received but not yet read.
        Always => "always",
    }
}

/// A validated shutdown policy. Build one with [`Policy::builder`]; the defaults are
/// [`Policy::default`].
///
/// | knob | default | why |
/// |---|---|---|
/// | [`mode`](Policy::mode) | [`Mode::Bidirectional`] | only a bidirectional close tells a complete stream from a truncated one |
/// | [`flush_timeout`](Policy::flush_timeout) | 3 s | a peer that has not read for 3 s is not going to; nginx, Netty and curl use 2–3 s |
/// | [`peer_timeout`](Policy::peer_timeout) | 3 s | TLS 1.3 peers need not answer close_notify; 3 s covers any sane RTT and bounds the wait (nginx uses 3 s) |
/// | [`half_close`](Policy::half_close) | true | peers that read until EOF see the end at once instead of waiting for their own timeout |
/// | [`drain_limit`](Policy::drain_limit) | 64 KiB | application data after our close_notify is legal, but a peer may not keep us reading forever |
/// | [`reset_on_timeout`](Policy::reset_on_timeout) | [`ResetOnTimeout::FlushOnly`] | a peer that does not read would pin unsent bytes in the kernel; a silent peer has all our bytes, so a FIN is right |
/// | [`linger_timeout`](Policy::linger_timeout) | off | waiting for the send queue to empty costs time on every close; turn it on when the last bytes matter more |
/// | [`keep_session_on_truncation`](Policy::keep_session_on_truncation) | false | a truncated connection may have been attacked or the peer may have dropped the session; resume only after a proper close |
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    mode: Mode,
    flush_timeout: Duration,
    peer_timeout: Duration,
    half_close: bool,
    drain_limit: u64,
    reset_on_timeout: ResetOnTimeout,
    linger_timeout: Duration,
    keep_session_on_truncation: bool,
}

/// Default [`Policy::flush_timeout`]: 3 s.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`Policy::peer_timeout`]: 3 s.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`Policy::drain_limit`]: 64 KiB.
pub const DEFAULT_DRAIN_LIMIT: u64 = 64 * 1024;
/// The longest timeout a policy accepts: one hour. A shutdown that needs longer is a
/// bug elsewhere, and the bound keeps deadline arithmetic far from overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The shortest non-zero timeout a policy accepts: 1 ms, the resolution of `poll(2)`.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Bidirectional,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            half_close: true,
            drain_limit: DEFAULT_DRAIN_LIMIT,
            reset_on_timeout: ResetOnTimeout::FlushOnly,
            linger_timeout: Duration::ZERO,
            keep_session_on_truncation: false,
        }
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy::default(),
        }
    }

    /// A builder starting from this policy.
    pub fn to_builder(&self) -> PolicyBuilder {
        PolicyBuilder {
            policy: self.clone(),
        }
    }

    /// What the shutdown sends and waits for.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Longest wait to get our close_notify into the kernel (the peer is not reading).
    pub fn flush_timeout(&self) -> Duration {
        self.flush_timeout
    }
    /// Longest wait for the peer's close_notify once ours is flushed.
    pub fn peer_timeout(&self) -> Duration {
        self.peer_timeout
    }
    /// Whether to `shutdown(SHUT_WR)` the socket once close_notify is flushed
    /// (never in [`Mode::StopTls`], which keeps the connection).
    pub fn half_close(&self) -> bool {
        self.half_close && self.mode != Mode::StopTls
    }
    /// Most application bytes accepted (and discarded) while awaiting the peer.
    /// The limit is checked after each record, so the shutdown stops within one
    /// record (16 KiB) past it, and [`Report::discarded_bytes`](crate::Report::discarded_bytes)
    /// says exactly how many were read.
    pub fn drain_limit(&self) -> u64 {
        self.drain_limit
    }
    /// When a timeout arms a TCP reset for the final `close()`.
    pub fn reset_on_timeout(&self) -> ResetOnTimeout {
        self.reset_on_timeout
    }
    /// Bound of the linger stage (wait for the kernel send queue to empty);
    /// zero means the stage is off.
    pub fn linger_timeout(&self) -> Duration {
        self.linger_timeout
    }
    /// Whether a `truncated` outcome keeps the session resumable.
    pub fn keep_session_on_truncation(&self) -> bool {
        self.keep_session_on_truncation
    }
}

/// Builds a [`Policy`]; [`build`](PolicyBuilder::build) validates it.
#[derive(Clone, Debug, Default)]
pub struct PolicyBuilder {
    policy: Policy,
}

impl PolicyBuilder {
    /// Sets [`Policy::mode`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.policy.mode = mode;
        self
    }
    /// Sets [`Policy::flush_timeout`]: between 1 ms and one hour (zero is allowed
    /// in [`Mode::Quiet`], which sends nothing).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.policy.flush_timeout = timeout;
        self
    }
    /// Sets [`Policy::peer_timeout`]: between 1 ms and one hour (zero is allowed
    /// in the modes that do not wait for the peer).
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.policy.peer_timeout = timeout;
        self
    }
    /// Sets [`Policy::half_close`].
    pub fn half_close(mut self, half_close: bool) -> Self {
        self.policy.half_close = half_close;
        self
    }
    /// Sets [`Policy::drain_limit`] in bytes; 0 turns any application byte after our
    /// close_notify into a `drain_limit` outcome.
    pub fn drain_limit(mut self, bytes: u64) -> Self {
        self.policy.drain_limit = bytes;
        self
    }
    /// Sets [`Policy::reset_on_timeout`].
    pub fn reset_on_timeout(mut self, reset: ResetOnTimeout) -> Self {
        self.policy.reset_on_timeout = reset;
        self
    }
    /// Sets [`Policy::linger_timeout`]: zero (off) or between 1 ms and one hour.
    pub fn linger_timeout(mut self, timeout: Duration) -> Self {
        self.policy.linger_timeout = timeout;
        self
    }
    /// Sets [`Policy::keep_session_on_truncation`].
    pub fn keep_session_on_truncation(mut self, keep: bool) -> Self {
        self.policy.keep_session_on_truncation = keep;
        self
    }

    /// Checks the timeouts and returns the policy.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] when a timeout the mode uses is zero
    /// (`flush_timeout` unless the mode is [`Mode::Quiet`], which sends nothing;
    /// `peer_timeout` in [`Mode::Bidirectional`], the only mode that waits for the
    /// peer), below 1 ms, or above [`MAX_TIMEOUT`]. The message names the knob.
    pub fn build(self) -> Result<Policy, Error> {
        self.build_named(&Names::RUST)
    }

    /// As [`build`](PolicyBuilder::build), with the knobs named as the caller's API
    /// names them in the error message.
    pub(crate) fn build_named(self, names: &Names) -> Result<Policy, Error> {
        let p = self.policy;
        let check = |name: &str, value: Duration, zero_ok: bool, hint: &str| {
            timeout_problem(value, zero_ok)
                .map(|problem| match problem {
                    Problem::Zero => format!("{name} must be at least 1 ms ({hint})"),
                    Problem::TooSmall => {
                        format!("{name} of {value:?} is below the 1 ms resolution of poll(2)")
                    }
                    Problem::TooLarge => {
                        format!("{name} of {value:?} exceeds the maximum of one hour")
                    }
                })
                .map_or(Ok(()), |msg| Err(Error::InvalidPolicy(msg)))
        };
        let quiet = format!("or use {} to send nothing", names.quiet);
        let not_waiting = format!("or use {} not to wait for the peer", names.send_only);
        check(
            names.flush_timeout,
            p.flush_timeout,
            p.mode == Mode::Quiet,
            &quiet,
        )?;
        check(
            names.peer_timeout,
            p.peer_timeout,
            !p.mode.awaits_peer(),
            &not_waiting,
        )?;
        check(names.linger_timeout, p.linger_timeout, true, "")?;
        if p.mode == Mode::StopTls && !p.linger_timeout.is_zero() {
            return Err(Error::InvalidPolicy(format!(
                "{} does not apply to {}: it keeps the connection open, there is no \
                 close to linger before",
                names.linger_timeout, names.stop_tls
            )));
        }
        Ok(p)
    }
}

/// How an API names the knobs of a policy, for error messages.
pub(crate) struct Names {
    pub flush_timeout: &'static str,
    pub peer_timeout: &'static str,
    pub linger_timeout: &'static str,
    pub quiet: &'static str,
    pub send_only: &'static str,
    pub stop_tls: &'static str,
}

impl Names {
    /// The Rust API's names.
    pub const RUST: Names = Names {
        flush_timeout: "flush_timeout",
        peer_timeout: "peer_timeout",
        linger_timeout: "linger_timeout",
        quiet: "Mode::Quiet",
        send_only: "Mode::SendOnly",
        stop_tls: "Mode::StopTls",
    };
}

/// What is wrong with a timeout.
enum Problem {
    Zero,
    TooSmall,
    TooLarge,
}

fn timeout_problem(value: Duration, zero_ok: bool) -> Option<Problem> {
    if value.is_zero() {
        return (!zero_ok).then_some(Problem::Zero);
    }
    if value < MIN_TIMEOUT {
        return Some(Problem::TooSmall);
    }
    (value > MAX_TIMEOUT).then_some(Problem::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let p = Policy::default();
        assert_eq!(p.mode(), Mode::Bidirectional);
        assert_eq!(p.flush_timeout(), Duration::from_secs(3));
        assert_eq!(p.peer_timeout(), Duration::from_secs(3));
        assert!(p.half_close());
        assert_eq!(p.drain_limit(), 65536);
        assert_eq!(p.reset_on_timeout(), ResetOnTimeout::FlushOnly);
        assert_eq!(p.linger_timeout(), Duration::ZERO);
        assert!(!p.keep_session_on_truncation());
        assert_eq!(Policy::builder().build().unwrap(), p);
    }

    #[test]
    fn zero_and_absurd_timeouts_are_rejected_with_the_knob_named() {
        let zero = Policy::builder().peer_timeout(Duration::ZERO).build();
        let msg = zero.unwrap_err().to_string();
        assert!(
            msg.contains("peer_timeout") && msg.contains("SendOnly"),
            "{msg}"
        );

        let zero = Policy::builder().flush_timeout(Duration::ZERO).build();
        assert!(zero.unwrap_err().to_string().contains("flush_timeout"));

        let tiny = Policy::builder()
            .flush_timeout(Duration::from_micros(10))
            .build();
        assert!(tiny.unwrap_err().to_string().contains("resolution"));

        let huge = Policy::builder().peer_timeout(Duration::MAX).build();
        assert!(huge.unwrap_err().to_string().contains("one hour"));

        let linger = Policy::builder()
            .linger_timeout(Duration::from_secs(7200))
            .build();
        assert!(linger.unwrap_err().to_string().contains("linger_timeout"));
    }

    #[test]
    fn modes_that_do_not_use_a_timeout_accept_zero() {
        let quiet = Policy::builder()
            .mode(Mode::Quiet)
            .flush_timeout(Duration::ZERO)
            .peer_timeout(Duration::ZERO)
            .build();
        assert!(quiet.is_ok(), "{quiet:?}");
        let send_only = Policy::builder()
            .mode(Mode::SendOnly)
            .peer_timeout(Duration::ZERO)
            .build();
        assert!(send_only.is_ok(), "{send_only:?}");
        let send_only = Policy::builder()
            .mode(Mode::SendOnly)
            .flush_timeout(Duration::ZERO)
            .build();
        assert!(send_only.unwrap_err().to_string().contains("flush_timeout"));
    }

    #[test]
    fn stop_tls_never_half_closes_and_refuses_linger() {
        let p = Policy::builder().mode(Mode::StopTls).build().unwrap();
        assert!(!p.half_close());
        assert!(p
            .to_builder()
            .mode(Mode::Bidirectional)
            .build()
            .unwrap()
            .half_close());
        let linger = Policy::builder()
            .mode(Mode::StopTls)
            .linger_timeout(Duration::from_secs(1))
            .build();
        let msg = linger.unwrap_err().to_string();
        assert!(
            msg.contains("linger_timeout") && msg.contains("StopTls"),
            "{msg}"
        );
        let zero_peer = Policy::builder()
            .mode(Mode::StopTls)
            .peer_timeout(Duration::ZERO)
            .build();
        assert!(zero_peer.unwrap_err().to_string().contains("peer_timeout"));
    }

    #[test]
    fn bounds_are_inclusive() {
        Policy::builder()
            .flush_timeout(MIN_TIMEOUT)
            .peer_timeout(MAX_TIMEOUT)
            .linger_timeout(MAX_TIMEOUT)
            .build()
            .unwrap();
    }
}
