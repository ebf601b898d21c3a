//! OpenSSL functions (all in OpenSSL >= 1.1.1) that `openssl-sys` does not declare,
//! and the BIO type numbers of `bio.h`.

use std::ffi::c_int;

use openssl_sys::{BIO, BIO_METHOD, SSL, SSL_CTX, SSL_SESSION};

/// `void (*)(const SSL *ssl, int where, int ret)`: an info callback.
pub type InfoCallback = Option<unsafe extern "C" fn(ssl: *const SSL, where_: c_int, ret: c_int)>;

extern "C" {
    pub fn SSL_has_pending(s: *const SSL) -> c_int;
    pub fn SSL_SESSION_is_resumable(s: *const SSL_SESSION) -> c_int;
    pub fn SSL_get_options(s: *const SSL) -> u64;
    #[cfg(ossl300)]
    pub fn SSL_clear_options(s: *mut SSL, op: u64) -> u64;
    #[cfg(ossl300)]
    pub fn SSL_set_options(s: *mut SSL, op: u64) -> u64;
    pub fn SSL_free_buffers(s: *mut SSL) -> c_int;
    pub fn SSL_set_read_ahead(s: *mut SSL, yes: c_int);
    pub fn SSL_get_read_ahead(s: *const SSL) -> c_int;
    pub fn SSL_get_wbio(s: *const SSL) -> *mut BIO;
    pub fn SSL_get_rfd(s: *const SSL) -> c_int;
    pub fn SSL_get_wfd(s: *const SSL) -> c_int;
    pub fn SSL_set0_wbio(s: *mut SSL, wbio: *mut BIO);
    pub fn BIO_method_type(b: *const BIO) -> c_int;
    pub fn BIO_s_null() -> *const BIO_METHOD;
    pub fn BIO_up_ref(b: *mut BIO) -> c_int;
    pub fn BIO_free(b: *mut BIO) -> c_int;
    pub fn BIO_test_flags(b: *const BIO, flags: c_int) -> c_int;
    pub fn SSL_set0_rbio(s: *mut SSL, rbio: *mut BIO);
    pub fn SSL_set_info_callback(s: *mut SSL, cb: InfoCallback);
    pub fn SSL_get_info_callback(s: *const SSL) -> InfoCallback;
    pub fn SSL_CTX_get_info_callback(ctx: *mut SSL_CTX) -> InfoCallback;
    // Only the tokio adapter needs to know whether a write is stuck in OpenSSL.
    #[cfg(feature = "tokio")]
    pub fn SSL_want(s: *const SSL) -> c_int;
    /// The earliest error code in this thread's queue, 0 if it is empty.
    pub fn ERR_peek_error() -> std::ffi::c_ulong;
}

/// `SSL_want`'s answer when OpenSSL holds bytes it must still write.
#[cfg(feature = "tokio")]
pub const SSL_WRITING: c_int = 2;

/// The info callback's `where` bits for an alert read or written.
pub const SSL_CB_ALERT: c_int = 0x4000;
pub const SSL_CB_READ: c_int = 0x04;

/// `BIO_TYPE_DESCRIPTOR | BIO_TYPE_SOURCE_SINK | 5`: `BIO_s_socket`.
pub const BIO_TYPE_SOCKET: c_int = 0x0400 | 0x0100 | 5;
/// `BIO_TYPE_DESCRIPTOR | BIO_TYPE_SOURCE_SINK | 4`: `BIO_s_fd`.
pub const BIO_TYPE_FD: c_int = 0x0400 | 0x0100 | 4;
/// `BIO_TYPE_SOURCE_SINK | 1`: `BIO_s_mem`.
pub const BIO_TYPE_MEM: c_int = 0x0400 | 1;
/// `BIO_TYPE_SOURCE_SINK | 19`: half of a BIO pair.
pub const BIO_TYPE_BIO: c_int = 0x0400 | 19;
