//! OpenSSL's reason codes (`ERR_GET_REASON`) that the classifier needs, and the
//! alert OpenSSL raises with each: the one place that knows OpenSSL's numbers.
//!
//! `openssl-sys` declares none of the `SSL_R_*` constants, so they are written
//! here from `include/openssl/sslerr.h`. OpenSSL never renumbers a reason: a code
//! means the same in 1.1.1, 3.0, 3.6 and 4.0. What differs between versions is
//! which reasons exist and which ones an error carries:
//! - `UNEXPECTED_EOF_WHILE_READING` exists since 3.0 (1.1.1 reports an EOF without
//!   close_notify as `SSL_ERROR_SYSCALL` with errno 0);
//! - since 3.2 a failed record is reported twice: the real reason, then
//!   `RECORD_LAYER_FAILURE` pushed by the caller of the record layer. The
//!   classifier skips such wrapper reasons ([`is_wrapper`]);
//! - the same reason can come with another alert: 3.2's TLS 1.3 record layer
//!   checks the record type before the version, so a header with a bad version
//!   there is `WRONG_VERSION_NUMBER` with decode_error, where 3.0's checks raise
//!   protocol_version ([`alert_for`] takes the TLS version).

use std::ffi::c_int;

/// `ERR_LIB_SSL` from `err.h`.
pub const ERR_LIB_SSL: c_int = 20;

/// `SSL_AD_REASON_OFFSET`: a received fatal alert is reported as 1000 + its code.
pub const ALERT_OFFSET: c_int = 1000;

/// `ERR_RFLAG_COMMON` (OpenSSL 3): reasons shared by every library
/// (`ERR_R_INTERNAL_ERROR`, `ERR_R_MALLOC_FAILURE`, ...).
const COMMON_FLAG: c_int = 1 << 19;

pub const BAD_CHANGE_CIPHER_SPEC: c_int = 103;
pub const BAD_DECOMPRESSION: c_int = 107;
pub const BAD_KEY_UPDATE: c_int = 122;
pub const BAD_LENGTH: c_int = 271;
pub const BAD_RECORD_TYPE: c_int = 443;
pub const BAD_WRITE_RETRY: c_int = 127;
pub const CCS_RECEIVED_EARLY: c_int = 133;
pub const COMPRESSED_LENGTH_TOO_LONG: c_int = 140;
pub const DATA_LENGTH_TOO_LONG: c_int = 146;
pub const DECRYPTION_FAILED_OR_BAD_RECORD_MAC: c_int = 281;
pub const ENCRYPTED_LENGTH_TOO_LONG: c_int = 150;
pub const EXCESSIVE_MESSAGE_SIZE: c_int = 152;
pub const DATA_BETWEEN_CCS_AND_FINISHED: c_int = 145;
pub const INVALID_ALERT: c_int = 205;
pub const INVALID_CCS_MESSAGE: c_int = 260;
pub const LENGTH_MISMATCH: c_int = 159;
pub const LENGTH_TOO_SHORT: c_int = 160;
pub const MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA: c_int = 293;
pub const NO_RENEGOTIATION: c_int = 339;
pub const NOT_ON_RECORD_BOUNDARY: c_int = 182;
pub const PACKET_LENGTH_TOO_LONG: c_int = 198;
/// Since 3.2 (not in 3.0's `sslerr.h`).
pub const RECORD_LAYER_FAILURE: c_int = 313;
pub const RECORD_TOO_SMALL: c_int = 298;
pub const SHUTDOWN_WHILE_IN_INIT: c_int = 407;
pub const TOO_MANY_WARN_ALERTS: c_int = 409;
pub const UNEXPECTED_CCS_MESSAGE: c_int = 262;
pub const UNEXPECTED_END_OF_EARLY_DATA: c_int = 178;
pub const UNEXPECTED_EOF_WHILE_READING: c_int = 294;
pub const UNEXPECTED_MESSAGE: c_int = 244;
pub const UNEXPECTED_RECORD: c_int = 245;
pub const UNKNOWN_ALERT_TYPE: c_int = 246;
pub const WRONG_VERSION_NUMBER: c_int = 267;

/// Reasons that only say "an error happened below": OpenSSL 3.2+ pushes
/// `RECORD_LAYER_FAILURE` after the record layer's own, meaningful reason.
pub fn is_wrapper(reason: c_int) -> bool {
    reason == RECORD_LAYER_FAILURE
}

/// The alert OpenSSL raises with each reason on the read path of an established
/// connection (its `SSLfatal(s, alert, reason)` and `RLAYERfatal` pairs in the
/// record layer and the post-handshake code). OpenSSL keeps the alert itself off
/// the wire once our close_notify has left, so this table is how the report can
/// still name it. `tls13`: the connection negotiated TLS 1.3.
pub fn alert_for(reason: c_int, tls13: bool) -> Option<u8> {
    // OpenSSL 3.2+, TLS 1.3: tls13_validate_record_header checks the type first
    // (BAD_RECORD_TYPE, unexpected_message), then the version with decode_error.
    if cfg!(ossl320) && tls13 && reason == WRONG_VERSION_NUMBER {
        return Some(50);
    }
    let alert = match reason {
        // Garbage: the record header's version bytes are wrong.
        WRONG_VERSION_NUMBER => 70,                // protocol_version
        DECRYPTION_FAILED_OR_BAD_RECORD_MAC => 20, // bad_record_mac
        PACKET_LENGTH_TOO_LONG
        | ENCRYPTED_LENGTH_TOO_LONG
        | COMPRESSED_LENGTH_TOO_LONG
        | DATA_LENGTH_TOO_LONG => 22, // record_overflow
        BAD_DECOMPRESSION => 30,                   // decompression_failure
        LENGTH_TOO_SHORT | LENGTH_MISMATCH | BAD_KEY_UPDATE => 50, // decode_error
        BAD_RECORD_TYPE
        | BAD_LENGTH
        | RECORD_TOO_SMALL
        | MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA
        | CCS_RECEIVED_EARLY
        | INVALID_CCS_MESSAGE
        | UNEXPECTED_CCS_MESSAGE
        | UNEXPECTED_END_OF_EARLY_DATA
        | UNEXPECTED_RECORD
        | UNEXPECTED_MESSAGE
        | NOT_ON_RECORD_BOUNDARY
        | BAD_CHANGE_CIPHER_SPEC
        | DATA_BETWEEN_CCS_AND_FINISHED
        | INVALID_ALERT
        | TOO_MANY_WARN_ALERTS => 10, // unexpected_message
        NO_RENEGOTIATION => 40,                    // handshake_failure
        UNKNOWN_ALERT_TYPE | EXCESSIVE_MESSAGE_SIZE => 47, // illegal_parameter
        r if r & COMMON_FLAG != 0 => 80,           // internal_error
        _ => return None,
    };
    Some(alert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_path_reasons_name_their_alerts() {
        for tls13 in [false, true] {
            assert_eq!(
                alert_for(DECRYPTION_FAILED_OR_BAD_RECORD_MAC, tls13),
                Some(20)
            );
            assert_eq!(alert_for(PACKET_LENGTH_TOO_LONG, tls13), Some(22));
            assert_eq!(alert_for(BAD_RECORD_TYPE, tls13), Some(10));
            assert_eq!(alert_for(RECORD_LAYER_FAILURE, tls13), None);
            assert_eq!(alert_for(259 | COMMON_FLAG, tls13), Some(80));
        }
        assert_eq!(alert_for(WRONG_VERSION_NUMBER, false), Some(70));
        let tls13 = if cfg!(ossl320) { 50 } else { 70 };
        assert_eq!(alert_for(WRONG_VERSION_NUMBER, true), Some(tls13));
        assert!(is_wrapper(RECORD_LAYER_FAILURE) && !is_wrapper(WRONG_VERSION_NUMBER));
    }
}
