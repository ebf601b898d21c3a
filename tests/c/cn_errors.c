/*
 * cn_errors.c: every result code of the C API (include/closenotify.h), from C,
 * with no network peer: NULL pointers, invalid policies and arguments, an SSL*
 * on the wrong fd or BIO, calls in the wrong state, the name functions, the last
 * error buffer. Driven by tests/c_api.rs and scripts/c-install-check.sh.
 *
 *   cn_errors
 *
 * Exit status: 0 when every call returned what it should, 3 for a failed check
 * (the reason is on stderr). Everything is freed before a successful exit.
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <closenotify.h>

#include "check.h"

/* -------------------------------- errors --------------------------------- */

static void check_names(void)
{
    static const char *const outcomes[] = {
        "clean",    "sent_only",      "quiet",     "truncated",  "reset",
        "peer_alert", "protocol_error", "timed_out", "drain_limit"};
    CHECK(CLOSENOTIFY_OUTCOME_CLEAN == 0 && CLOSENOTIFY_OUTCOME_DRAIN_LIMIT == 8);
    for (unsigned i = 0; i < sizeof outcomes / sizeof *outcomes; i++)
        CHECK_STR(closenotify_outcome_name(i), outcomes[i]);
    CHECK_STR(closenotify_outcome_name(9), "unknown");
    CHECK_STR(closenotify_outcome_name(0xffffffffu), "unknown");
    CHECK_STR(closenotify_outcome_name(CLOSENOTIFY_OUTCOME_PEER_ALERT), "peer_alert");
    CHECK_STR(closenotify_outcome_name(CLOSENOTIFY_OUTCOME_TIMED_OUT), "timed_out");

    CHECK_STR(closenotify_stage_name(CLOSENOTIFY_STAGE_FLUSH), "flush");
    CHECK_STR(closenotify_stage_name(CLOSENOTIFY_STAGE_HALF_CLOSE), "half_close");
    CHECK_STR(closenotify_stage_name(CLOSENOTIFY_STAGE_AWAIT_PEER), "await_peer");
    CHECK_STR(closenotify_stage_name(CLOSENOTIFY_STAGE_LINGER), "linger");
    CHECK_STR(closenotify_stage_name(4), "unknown");

    CHECK_STR(closenotify_result_name(CLOSENOTIFY_OK), "ok");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_NULL_ARGUMENT), "null_argument");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_INVALID_ARGUMENT),
              "invalid_argument");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_WRONG_STATE), "wrong_state");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_PANIC), "panic");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_SINK), "sink");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_SYSTEM), "system");
    CHECK_STR(closenotify_result_name(7), "unknown");
    CHECK(CLOSENOTIFY_OK == 0);

    /* The RFC 8446 / 5246 alert registry, written out independently of the
     * library's table. */
    static const struct {
        int code;
        const char *name;
    } alerts[] = {
        {-1, "none"},
        {0, "close_notify"},
        {10, "unexpected_message"},
        {20, "bad_record_mac"},
        {21, "decryption_failed_RESERVED"},
        {22, "record_overflow"},
        {30, "decompression_failure"},
        {40, "handshake_failure"},
        {41, "no_certificate_RESERVED"},
        {42, "bad_certificate"},
        {43, "unsupported_certificate"},
        {44, "certificate_revoked"},
        {45, "certificate_expired"},
        {46, "certificate_unknown"},
        {47, "illegal_parameter"},
        {48, "unknown_ca"},
        {49, "access_denied"},
        {50, "decode_error"},
        {51, "decrypt_error"},
        {60, "export_restriction_RESERVED"},
        {70, "protocol_version"},
        {71, "insufficient_security"},
        {80, "internal_error"},
        {86, "inappropriate_fallback"},
        {90, "user_canceled"},
        {100, "no_renegotiation"},
        {109, "missing_extension"},
        {110, "unsupported_extension"},
        {111, "certificate_unobtainable_RESERVED"},
        {112, "unrecognized_name"},
        {113, "bad_certificate_status_response"},
        {114, "bad_certificate_hash_value_RESERVED"},
        {115, "unknown_psk_identity"},
        {116, "certificate_required"},
        {120, "no_application_protocol"},
        /* Codes no RFC defines, and values outside a byte. */
        {1, "unknown"},
        {3, "unknown"},
        {255, "unknown"},
        {256, "unknown"},
        {4096, "unknown"},
        {-2, "unknown"},
    };
    for (unsigned i = 0; i < sizeof alerts / sizeof *alerts; i++)
        if (strcmp(closenotify_alert_name(alerts[i].code), alerts[i].name) != 0)
            FAIL("closenotify_alert_name(%d) is \"%s\", expected \"%s\"",
                 alerts[i].code, closenotify_alert_name(alerts[i].code),
                 alerts[i].name);
}

/* The header's version is the library's, and the macros agree. */
static void check_version(void)
{
    char joined[64];
    snprintf(joined, sizeof joined, "%d.%d.%d", CLOSENOTIFY_VERSION_MAJOR,
             CLOSENOTIFY_VERSION_MINOR, CLOSENOTIFY_VERSION_PATCH);
    CHECK_STR(joined, CLOSENOTIFY_VERSION);
    CHECK_STR(closenotify_version(), CLOSENOTIFY_VERSION);
}

static void check_policy_init(void)
{
    closenotify_policy_init(NULL); /* ignored */
    closenotify_policy p;
    memset(&p, 0xA5, sizeof p);
    closenotify_policy_init(&p);
    CHECK(p.struct_size == sizeof p);
    for (unsigned i = 0; i < CLOSENOTIFY_POLICY_RESERVED; i++)
        CHECK(p.reserved[i] == 0);
    CHECK(p.mode == CLOSENOTIFY_MODE_BIDIRECTIONAL);
    CHECK(p.flush_timeout_ms == 3000);
    CHECK(p.peer_timeout_ms == 3000);
    CHECK(p.linger_timeout_ms == 0);
    CHECK(p.drain_limit == 65536);
    CHECK(p.half_close == 1);
    CHECK(p.reset_on_timeout == CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT);
    CHECK(p.keep_session_on_truncation == 0);
}

static void check_last_error_buffer(void)
{
    /* The previous call failed with this message (see run_errors). */
    const char *want = "report is NULL";
    size_t full = strlen(want);
    CHECK(closenotify_last_error(NULL, 0) == full);
    char small[7];
    memset(small, 'x', sizeof small);
    CHECK(closenotify_last_error(small, sizeof small) == full);
    CHECK(strcmp(small, "report") == 0); /* truncated, NUL-terminated */
    char one = 'x';
    CHECK(closenotify_last_error(&one, 1) == full);
    CHECK(one == '\0');
}

/* Both constructors refuse `fd` / `policy` with `code`, write nothing, and
 * leave a message mentioning `needle`. */
static void expect_refused(SSL *ssl, int fd, const closenotify_policy *policy,
                           closenotify_result code, const char *needle, int line)
{
    closenotify_report r = sentinel_report();
    closenotify_result got = closenotify_shutdown_blocking(ssl, fd, policy, &r);
    if (got != code) {
        char msg[256];
        last_error(msg, sizeof msg);
        fprintf(stderr, "cn_test: line %d: closenotify_shutdown_blocking: %s, expected %s (%s)\n",
                line, closenotify_result_name(got), closenotify_result_name(code), msg);
        exit(3);
    }
    CHECK(is_sentinel(&r));
    check_last_error(needle, line);

    closenotify_shutdown *sentinel = (closenotify_shutdown *)&r;
    closenotify_shutdown *sd = sentinel;
    got = closenotify_shutdown_new(ssl, fd, policy, &sd);
    if (got != code) {
        char msg[256];
        last_error(msg, sizeof msg);
        fprintf(stderr, "cn_test: line %d: closenotify_shutdown_new: %s, expected %s (%s)\n",
                line, closenotify_result_name(got), closenotify_result_name(code), msg);
        if (got == CLOSENOTIFY_OK)
            closenotify_shutdown_free(sd);
        exit(3);
    }
    CHECK(sd == sentinel);
    check_last_error(needle, line);
}
#define EXPECT_REFUSED(ssl, fd, policy, code, needle)                          \
    expect_refused((ssl), (fd), (policy), (code), (needle), __LINE__)

/*
 * closenotify_shutdown_set_unsent and _set_error: every result code, on a new
 * SSL on `fd` whose handshake never ran (its own SSL: a finished shutdown is
 * kept with the SSL, and the caller's SSL must not see this one's).
 */
static void check_handover(SSL_CTX *ctx, int fd, const closenotify_policy *policy)
{
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl != NULL);
    CHECK(SSL_set_fd(ssl, fd) == 1);
    unsigned char bytes[3] = {'a', 'b', 'c'};

    /* CLOSENOTIFY_ERR_NULL_ARGUMENT */
    CHECK_RC(closenotify_shutdown_set_unsent(NULL, bytes, sizeof bytes),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("shutdown is NULL");
    CHECK_RC(closenotify_shutdown_set_error(NULL, SSL_ERROR_SYSCALL, 0),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("shutdown is NULL");
    closenotify_shutdown *sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, fd, policy, &sd), CLOSENOTIFY_OK);

    /* One SSL*, one shutdown: a second object (or a blocking shutdown) while the
     * first lives is refused, and the first's state is untouched; once it is
     * freed, a new one is fine. */
    closenotify_shutdown *second = NULL;
    int flags = fcntl(fd, F_GETFL);
    CHECK_RC(closenotify_shutdown_new(ssl, fd, policy, &second), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK(second == NULL);
    CHECK_LAST_ERROR("another shutdown of this SSL");
    closenotify_report busy = sentinel_report();
    CHECK_RC(closenotify_shutdown_blocking(ssl, fd, policy, &busy), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK(is_sentinel(&busy));
    CHECK(fcntl(fd, F_GETFL) == flags);
    closenotify_shutdown_free(sd);
    CHECK_RC(closenotify_shutdown_new(ssl, fd, policy, &sd), CLOSENOTIFY_OK);

    CHECK_RC(closenotify_shutdown_set_unsent(sd, NULL, 1), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("data is NULL");

    /* Unsent data: none (NULL with length 0), some, or more than memory. */
    CHECK_RC(closenotify_shutdown_set_unsent(sd, NULL, 0), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_shutdown_set_unsent(sd, bytes, sizeof bytes), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_shutdown_set_unsent(sd, bytes, SIZE_MAX),
             CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("cannot allocate");

    /* ssl_error is one of SSL_get_error's answers, sys_errno an errno. */
    CHECK_RC(closenotify_shutdown_set_error(sd, 13, 0), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("ssl_error 13 is not an SSL_ERROR_* code");
    CHECK_RC(closenotify_shutdown_set_error(sd, -1, 0), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("ssl_error -1");
    CHECK_RC(closenotify_shutdown_set_error(sd, SSL_ERROR_SYSCALL, -1),
             CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("sys_errno -1 is negative");

    /* A refused call, and the codes that are no failure, leave OpenSSL's error
     * queue alone. Something to leave: opening a missing file queues a system
     * error (ENOENT). */
    ERR_clear_error();
    CHECK(BIO_new_file("/nonexistent/closenotify-cn_test", "r") == NULL);
    unsigned long queued = ERR_peek_error();
    CHECK(queued != 0);
    CHECK_RC(closenotify_shutdown_set_error(sd, 99, 0), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    static const int no_failure[] = {
        SSL_ERROR_NONE,         SSL_ERROR_WANT_READ,    SSL_ERROR_WANT_WRITE,
        SSL_ERROR_WANT_X509_LOOKUP, SSL_ERROR_ZERO_RETURN, SSL_ERROR_WANT_CONNECT,
        SSL_ERROR_WANT_ACCEPT,  SSL_ERROR_WANT_ASYNC,   SSL_ERROR_WANT_ASYNC_JOB,
        SSL_ERROR_WANT_CLIENT_HELLO_CB,
        12 /* SSL_ERROR_WANT_RETRY_VERIFY, OpenSSL 3.0 and later */};
    for (size_t i = 0; i < sizeof no_failure / sizeof *no_failure; i++)
        CHECK_RC(closenotify_shutdown_set_error(sd, no_failure[i], EAGAIN), CLOSENOTIFY_OK);
    CHECK(ERR_peek_error() == queued);

    /* A failure is read from the queue, which is emptied: here SSL_ERROR_SSL
     * with that system error, so `reset` with ENOENT. Nothing is sent (the
     * unsent bytes included), and no OpenSSL I/O call is made. */
    CHECK_RC(closenotify_shutdown_set_error(sd, SSL_ERROR_SSL, 0), CLOSENOTIFY_OK);
    CHECK(ERR_peek_error() == 0);
    closenotify_wait wait = 0xdead;
    int timeout_ms = -1;
    CHECK_RC(closenotify_shutdown_step(sd, &wait, &timeout_ms), CLOSENOTIFY_OK);
    CHECK(wait == CLOSENOTIFY_WAIT_DONE);
    closenotify_report r = sentinel_report();
    CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_OK);
    CHECK(r.outcome == CLOSENOTIFY_OUTCOME_RESET);
    CHECK(r.os_error == ENOENT);
    CHECK(r.ssl_calls == 0 && !r.close_notify_sent);

    /* Started: refused, and nothing changes. Arguments are checked first. */
    CHECK_RC(closenotify_shutdown_set_unsent(sd, bytes, sizeof bytes),
             CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK_LAST_ERROR("closenotify_shutdown_set_unsent: the shutdown has started");
    CHECK_RC(closenotify_shutdown_set_unsent(sd, NULL, 0), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK_RC(closenotify_shutdown_set_error(sd, SSL_ERROR_WANT_READ, 0),
             CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK_LAST_ERROR("before the first step");
    CHECK_RC(closenotify_shutdown_set_unsent(sd, NULL, 1), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_RC(closenotify_shutdown_set_error(sd, 13, 0), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    closenotify_report again = sentinel_report();
    CHECK_RC(closenotify_shutdown_report(sd, &again), CLOSENOTIFY_OK);
    CHECK(report_eq(&r, &again));
    closenotify_shutdown_free(sd);

    /* Handed over, then freed without a step: the copy goes with the object
     * (valgrind's leak check). */
    SSL *other = SSL_new(ctx);
    CHECK(other != NULL);
    CHECK(SSL_set_fd(other, fd) == 1);
    sd = NULL;
    CHECK_RC(closenotify_shutdown_new(other, fd, policy, &sd), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_shutdown_set_unsent(sd, bytes, sizeof bytes), CLOSENOTIFY_OK);
    closenotify_shutdown_free(sd);
    SSL_free(other);
    SSL_free(ssl);
}

/*
 * The closer's result codes, on SSLs whose handshake never ran (a shutdown of
 * one is `quiet` at once, sending nothing) on socket pairs of their own: the
 * closer closes what it takes.
 */
static void check_closer(SSL_CTX *ctx, const closenotify_policy *good)
{
    /* ---- making one ---- */
    closenotify_closer *sentinel = (closenotify_closer *)&sentinel;
    closenotify_closer *closer = sentinel;
    CHECK_RC(closenotify_closer_new(good, NULL), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("out is NULL");
    closenotify_policy bad = *good;
    bad.peer_timeout_ms = 0;
    CHECK_RC(closenotify_closer_new(&bad, &closer), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("peer_timeout_ms");
    CHECK(closer == sentinel);
    /* The closer closes every connection: STOPTLS, which keeps it, is refused. */
    closenotify_policy stoptls = *good;
    stoptls.mode = CLOSENOTIFY_MODE_STOPTLS;
    CHECK_RC(closenotify_closer_new(&stoptls, &closer), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("use the step API for STOPTLS");
    CHECK(closer == sentinel);
    CHECK_RC(closenotify_closer_new(NULL, &closer), CLOSENOTIFY_OK); /* the defaults */
    CHECK(closer != sentinel && closer != NULL);

    /* ---- NULL closers: every call says so, or answers "nothing" ---- */
    CHECK(closenotify_closer_fd(NULL) == -1);
    CHECK(closenotify_closer_timeout_ms(NULL) == -1);
    CHECK(closenotify_closer_pending(NULL) == 0);
    CHECK_RC(closenotify_closer_process(NULL), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("closer is NULL");
    CHECK_RC(closenotify_closer_finish(NULL), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    closenotify_closed done[2];
    size_t n = 99;
    CHECK_RC(closenotify_closer_reports(NULL, done, 2, &n), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_RC(closenotify_closer_reports(closer, done, 2, NULL), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_RC(closenotify_closer_reports(closer, NULL, 2, &n), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("out or n is NULL");
    CHECK(n == 99);
    CHECK_RC(closenotify_closer_reports(closer, NULL, 0, &n), CLOSENOTIFY_OK);
    CHECK(n == 0);
    closenotify_closer_free(NULL); /* fine */

    /* Empty: a fd to watch, no deadline, nothing pending, nothing to report. */
    CHECK(closenotify_closer_fd(closer) >= 0);
    CHECK(closenotify_closer_timeout_ms(closer) == -1);
    CHECK(closenotify_closer_pending(closer) == 0);
    CHECK_RC(closenotify_closer_process(closer), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_closer_finish(closer), CLOSENOTIFY_OK);

    /* ---- refused connections stay the caller's, untouched ---- */
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl != NULL && SSL_set_fd(ssl, sp[0]) == 1);
    CHECK_RC(closenotify_closer_add(NULL, ssl, sp[0], NULL, 1), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("closer is NULL");
    CHECK_RC(closenotify_closer_add(closer, NULL, sp[0], NULL, 1),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("null");
    CHECK_RC(closenotify_closer_add(closer, ssl, -1, NULL, 1), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("negative");
    /* The SSL reads another fd than the one given. */
    CHECK_RC(closenotify_closer_add(closer, ssl, sp[1], NULL, 1),
             CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("fd");
    CHECK_RC(closenotify_closer_add(closer, ssl, sp[0], &stoptls, 1),
             CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("use the step API for STOPTLS");
    CHECK_RC(closenotify_closer_add(closer, ssl, sp[0], &bad, 1),
             CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    /* A shutdown object on this SSL is alive. */
    closenotify_shutdown *sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], good, &sd), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_closer_add(closer, ssl, sp[0], NULL, 1), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK_LAST_ERROR("another shutdown of this SSL");

    /* ---- handing a shutdown object over ---- */
    CHECK_RC(closenotify_closer_add_shutdown(NULL, sd, 1), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_RC(closenotify_closer_add_shutdown(closer, NULL, 1), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("closer or shutdown is NULL");
    closenotify_shutdown_free(sd);
    sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], &stoptls, &sd), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_closer_add_shutdown(closer, sd, 1), CLOSENOTIFY_ERR_INVALID_ARGUMENT);
    CHECK_LAST_ERROR("use the step API for STOPTLS");
    closenotify_shutdown_free(sd); /* still ours */
    sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], good, &sd), CLOSENOTIFY_OK);
    closenotify_wait wait = 0xdead;
    int timeout_ms = -1;
    CHECK_RC(closenotify_shutdown_step(sd, &wait, &timeout_ms), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_closer_add_shutdown(closer, sd, 1), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK_LAST_ERROR("before its first step");
    closenotify_shutdown_free(sd); /* still ours */
    CHECK(closenotify_closer_pending(closer) == 0);
    /* Nothing was done to the fd: still open, and the other end saw nothing. */
    CHECK(fcntl(sp[0], F_GETFD) != -1);
    struct pollfd pfd = {.fd = sp[1], .events = POLLIN, .revents = 0};
    CHECK(poll(&pfd, 1, 0) == 0);

    /* ---- CLOSENOTIFY_ERR_SYSTEM: a fd the closer watches already ---- */
    SSL *first = SSL_new(ctx);
    CHECK(first != NULL && SSL_set_fd(first, sp[0]) == 1);
    SSL_free(ssl); /* a fresh one: a finished shutdown is kept with its SSL */
    ssl = SSL_new(ctx);
    CHECK(ssl != NULL && SSL_set_fd(ssl, sp[0]) == 1);
    /* The blocking mode of the fd does not matter; the closer keeps it. */
    int flags = fcntl(sp[0], F_GETFL);
    CHECK(flags != -1 && (flags & O_NONBLOCK) == 0);
    /* A closer whose connections never finish on their own before `process`
     * runs: add the first, then the second on the same fd. */
    CHECK_RC(closenotify_closer_add(closer, first, sp[0], good, 7), CLOSENOTIFY_OK);
    /* The first ended at once (no handshake: quiet) and is closed only at the
     * next process call, so its fd is still watched. */
    CHECK_RC(closenotify_closer_add(closer, ssl, sp[0], NULL, 8), CLOSENOTIFY_ERR_SYSTEM);
    CHECK_LAST_ERROR("cannot watch fd");
    CHECK_STR(closenotify_result_name(CLOSENOTIFY_ERR_SYSTEM), "system");
    sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], good, &sd), CLOSENOTIFY_OK);
    CHECK_RC(closenotify_closer_add_shutdown(closer, sd, 9), CLOSENOTIFY_ERR_SYSTEM);
    CHECK_LAST_ERROR("cannot watch fd");
    /* Still ours, at the same address: it steps and frees as before. */
    CHECK_RC(closenotify_shutdown_step(sd, &wait, &timeout_ms), CLOSENOTIFY_OK);
    CHECK(wait == CLOSENOTIFY_WAIT_DONE);
    closenotify_shutdown_free(sd);
    SSL_free(ssl);

    /* ---- the one taken: its report, once, and its fd closed ---- */
    CHECK_RC(closenotify_closer_process(closer), CLOSENOTIFY_OK);
    n = 99;
    CHECK_RC(closenotify_closer_reports(closer, done, 2, &n), CLOSENOTIFY_OK);
    CHECK(n == 1 && done[0].tag == 7);
    CHECK(done[0].report.outcome == CLOSENOTIFY_OUTCOME_QUIET);
    CHECK(done[0].report.detail != NULL);
    CHECK_RC(closenotify_closer_reports(closer, done, 2, &n), CLOSENOTIFY_OK);
    CHECK(n == 0);
    CHECK(fcntl(sp[0], F_GETFD) == -1 && errno == EBADF);
    CHECK(closenotify_closer_pending(closer) == 0);
    closenotify_closer_free(closer);
    CHECK(close(sp[1]) == 0);
}

static int run_errors(void)
{
    sigpipe(SIG_DFL);
    /* No call has failed yet on this thread: the message is empty. */
    char msg[64] = "x";
    CHECK(closenotify_last_error(msg, sizeof msg) == 0 && msg[0] == '\0');

    check_names();
    check_version();
    check_policy_init();
    closenotify_shutdown_free(NULL); /* fine */

    /*
     * CLOSENOTIFY_ERR_PANIC cannot be provoked from C: it is what a panic (a
     * bug) inside the library becomes at the ABI boundary instead of undefined
     * behaviour. The boundary is unit-tested in Rust (src/capi.rs,
     * the_panic_boundary_turns_a_panic_into_a_result_code); here only its name
     * is checked (check_names).
     */

    /* An SSL on one end of a connected stream socket pair: valid arguments,
     * no network. The handshake never ran, so a shutdown sends nothing. */
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    CHECK(ctx != NULL);
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl != NULL);
    CHECK(SSL_set_fd(ssl, sp[0]) == 1);

    closenotify_policy good;
    closenotify_policy_init(&good);
    good.flush_timeout_ms = 500;
    good.peer_timeout_ms = 500;

    /* ---- CLOSENOTIFY_ERR_NULL_ARGUMENT, with nothing written ---- */
    EXPECT_REFUSED(NULL, sp[0], &good, CLOSENOTIFY_ERR_NULL_ARGUMENT, "null");
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], &good, NULL),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("out is NULL");
    CHECK_RC(closenotify_shutdown_blocking(ssl, sp[0], &good, NULL),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("report is NULL");
    check_last_error_buffer();

    closenotify_wait wait = 0xdead;
    int timeout_ms = -12345;
    CHECK_RC(closenotify_shutdown_step(NULL, &wait, &timeout_ms),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK(wait == 0xdead && timeout_ms == -12345);
    CHECK_LAST_ERROR("shutdown is NULL");
    closenotify_report r = sentinel_report();
    CHECK_RC(closenotify_shutdown_report(NULL, &r), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK(is_sentinel(&r));
    CHECK_LAST_ERROR("shutdown is NULL");

    /* ---- CLOSENOTIFY_ERR_INVALID_ARGUMENT: the fd ---- */
    EXPECT_REFUSED(ssl, -1, &good, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "negative");
    int devnull = open("/dev/null", O_RDWR);
    CHECK(devnull >= 0);
    EXPECT_REFUSED(ssl, devnull, &good, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "not a stream socket");
    CHECK(close(devnull) == 0);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(udp >= 0);
    EXPECT_REFUSED(ssl, udp, &good, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "not a SOCK_STREAM socket");
    CHECK(close(udp) == 0);

    /* ---- CLOSENOTIFY_ERR_INVALID_ARGUMENT: the policy ---- */
    closenotify_policy bad = good;
    bad.mode = 7;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "unknown mode 7");
    bad = good;
    bad.reset_on_timeout = 9;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "unknown reset_on_timeout 9");
    bad = good;
    bad.flush_timeout_ms = 0;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "flush_timeout");
    bad = good;
    bad.peer_timeout_ms = 0;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "peer_timeout");
    bad = good;
    bad.flush_timeout_ms = 3600001;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "flush_timeout");
    bad = good;
    bad.peer_timeout_ms = 3600001;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "peer_timeout");
    bad = good;
    bad.linger_timeout_ms = 3600001;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "linger_timeout");
    /* A policy that closenotify_policy_init did not make, and one built for a
     * newer library (a reserved word set). */
    bad = good;
    bad.struct_size = 0;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "closenotify_policy_init");
    bad = good;
    bad.reserved[CLOSENOTIFY_POLICY_RESERVED - 1] = 1;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "newer");
    /* STOPTLS has no close to linger before. */
    bad = good;
    bad.mode = CLOSENOTIFY_MODE_STOPTLS;
    bad.linger_timeout_ms = 100;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "CLOSENOTIFY_MODE_STOPTLS");

    /* Messages name the knobs as C names them. */
    bad = good;
    bad.flush_timeout_ms = 0;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "flush_timeout_ms must be at least 1 ms (or use CLOSENOTIFY_MODE_QUIET");
    bad.peer_timeout_ms = 0;
    bad.flush_timeout_ms = 500;
    EXPECT_REFUSED(ssl, sp[0], &bad, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "or use CLOSENOTIFY_MODE_SEND_ONLY");
    {
        /* The whole message, as the header's example quotes it. */
        char full[256];
        closenotify_last_error(full, sizeof full);
        CHECK_STR(full, "invalid policy: peer_timeout_ms must be at least 1 ms (or use CLOSENOTIFY_MODE_SEND_ONLY not to wait for the peer)");
    }
    /* A mode that does not use a timeout accepts 0 for it. */
    bad = good;
    bad.mode = CLOSENOTIFY_MODE_QUIET;
    bad.flush_timeout_ms = 0;
    bad.peer_timeout_ms = 0;
    closenotify_shutdown *quiet = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], &bad, &quiet), CLOSENOTIFY_OK);
    closenotify_shutdown_free(quiet);
    bad = good;
    bad.mode = CLOSENOTIFY_MODE_SEND_ONLY;
    bad.peer_timeout_ms = 0;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], &bad, &quiet), CLOSENOTIFY_OK);
    closenotify_shutdown_free(quiet);

    /* ---- CLOSENOTIFY_ERR_INVALID_ARGUMENT: an SSL that is not on the fd ---- */
    /* A socket BIO on sp[0], and the other end of the pair given as its fd:
     * refused, and neither socket touched (checked at the end). */
    EXPECT_REFUSED(ssl, sp[1], &good, CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                   "not fd");
    /* Memory BIOs: nothing to poll, nothing to half-close. */
    SSL *mem = SSL_new(ctx);
    CHECK(mem != NULL);
    BIO *rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(BIO_s_mem());
    CHECK(rbio != NULL && wbio != NULL);
    SSL_set_bio(mem, rbio, wbio);
    EXPECT_REFUSED(mem, sp[0], &good, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "memory BIO");
    /* No BIO at all. */
    SSL *bare = SSL_new(ctx);
    CHECK(bare != NULL);
    EXPECT_REFUSED(bare, sp[0], &good, CLOSENOTIFY_ERR_INVALID_ARGUMENT, "SSL_set_fd");
    SSL_free(bare);
    SSL_free(mem);

    /* The bounds themselves are valid (3600000 ms is the documented maximum). */
    bad = good;
    bad.peer_timeout_ms = 3600000;
    bad.linger_timeout_ms = 3600000;
    closenotify_shutdown *sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], &bad, &sd), CLOSENOTIFY_OK);
    closenotify_shutdown_free(sd); /* never stepped: nothing was sent */

    check_handover(ctx, sp[0], &good);

    /* ---- the step API: NULL outputs, CLOSENOTIFY_ERR_WRONG_STATE ---- */
    sd = NULL;
    CHECK_RC(closenotify_shutdown_new(ssl, sp[0], NULL /* defaults */, &sd),
             CLOSENOTIFY_OK);
    CHECK(sd != NULL);
    CHECK_RC(closenotify_shutdown_step(sd, NULL, &timeout_ms),
             CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK(timeout_ms == -12345);
    CHECK_LAST_ERROR("NULL");
    CHECK_RC(closenotify_shutdown_step(sd, &wait, NULL), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK(wait == 0xdead);
    CHECK_RC(closenotify_shutdown_report(sd, NULL), CLOSENOTIFY_ERR_NULL_ARGUMENT);
    CHECK_LAST_ERROR("report is NULL");
    /* Before DONE (here: before the first step), no report. */
    CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK(is_sentinel(&r));
    CHECK_LAST_ERROR("not finished");
    /* The handshake never ran: nothing to send, done at once. */
    CHECK_RC(closenotify_shutdown_step(sd, &wait, &timeout_ms), CLOSENOTIFY_OK);
    CHECK(wait == CLOSENOTIFY_WAIT_DONE && timeout_ms == 0);
    CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_OK);
    CHECK(r.outcome == CLOSENOTIFY_OUTCOME_QUIET);
    CHECK(!r.close_notify_sent && !r.close_notify_received);
    CHECK(r.tls_version == 0);
    closenotify_shutdown_free(sd);

    /* ---- ownership: after a shutdown, the SSL and the fd are still ours ---- */
    int flags = fcntl(sp[0], F_GETFL);
    CHECK(flags != -1);
    r = sentinel_report();
    CHECK_RC(closenotify_shutdown_blocking(ssl, sp[0], &good, &r), CLOSENOTIFY_OK);
    CHECK(r.outcome == CLOSENOTIFY_OUTCOME_QUIET);
    CHECK(fcntl(sp[0], F_GETFD) != -1);
    CHECK(fcntl(sp[0], F_GETFL) == flags);
    CHECK(SSL_get_fd(ssl) == sp[0]);
    /* Neither end saw EOF or data: nothing closed, half-closed or wrote to
     * either socket, the refused calls included. */
    struct pollfd pfd = {.fd = sp[1], .events = POLLIN, .revents = 0};
    CHECK(poll(&pfd, 1, 0) == 0);
    pfd.fd = sp[0];
    CHECK(poll(&pfd, 1, 0) == 0);

    SSL_free(ssl); /* ours to free; valgrind checks nothing else was */
    check_closer(ctx, &good);
    SSL_CTX_free(ctx);
    CHECK(close(sp[0]) == 0);
    CHECK(close(sp[1]) == 0);
    printf("errors: ok\n");
    /* The OpenSSL this program and the library run with. */
    printf("openssl: %s\n", OpenSSL_version(OPENSSL_VERSION));
    return 0;
}


int main(int argc, char **argv)
{
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: cn_errors\n");
        return 2;
    }
    return run_errors();
}
