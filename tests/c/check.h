/*
 * check.h: the checks the C test programs share (cn_test.c, cn_errors.c): fail
 * loudly with the library's last error, compare reports, print a report as one
 * line of key=value pairs for the Rust driver. Header-only (static inline).
 */
#ifndef CLOSENOTIFY_TEST_CHECK_H
#define CLOSENOTIFY_TEST_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include <closenotify.h>

/* ------------------------------------------------------------------------- */
/* Checks                                                                     */
/* ------------------------------------------------------------------------- */

static inline void last_error(char *buf, size_t len)
{
    closenotify_last_error(buf, len);
}

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "cn_test: %s:%d: ", __FILE__, __LINE__);               \
        fprintf(stderr, __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                   \
        ERR_print_errors_fp(stderr);                                           \
        exit(3);                                                               \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            FAIL("check failed: %s", #cond);                                   \
    } while (0)

/* `expr` (a closenotify call) returns `want`; on a mismatch, says what it got
 * and the library's last error message. */
#define CHECK_RC(expr, want)                                                   \
    do {                                                                       \
        closenotify_result got_ = (expr);                                      \
        if (got_ != (want)) {                                                  \
            char msg_[256];                                                    \
            last_error(msg_, sizeof msg_);                                     \
            FAIL("%s returned %s, expected %s (last error: \"%s\")", #expr,    \
                 closenotify_result_name(got_), closenotify_result_name(want), \
                 msg_);                                                        \
        }                                                                      \
    } while (0)

/* The last error message is not empty and contains `needle`. */
static inline void check_last_error(const char *needle, int line)
{
    char msg[512];
    size_t n = closenotify_last_error(msg, sizeof msg);
    if (n == 0 || msg[0] == '\0' || strstr(msg, needle) == NULL) {
        fprintf(stderr, "cn_test: line %d: last error \"%s\" does not mention \"%s\"\n",
                line, msg, needle);
        exit(3);
    }
}
#define CHECK_LAST_ERROR(needle) check_last_error((needle), __LINE__)

static inline void check_str(const char *got, const char *want, const char *what, int line)
{
    if (got == NULL || strcmp(got, want) != 0) {
        fprintf(stderr, "cn_test: line %d: %s is \"%s\", expected \"%s\"\n", line,
                what, got ? got : "(NULL)", want);
        exit(3);
    }
}
#define CHECK_STR(got, want) check_str((got), (want), #got, __LINE__)

/* ------------------------------------------------------------------------- */
/* Reports                                                                    */
/* ------------------------------------------------------------------------- */

static inline int report_eq(const closenotify_report *a, const closenotify_report *b)
{
    return a->outcome == b->outcome && a->initiator == b->initiator &&
           a->stage == b->stage && a->alert == b->alert &&
           a->os_error == b->os_error &&
           a->close_notify_sent == b->close_notify_sent &&
           a->close_notify_received == b->close_notify_received &&
           a->half_closed == b->half_closed &&
           a->session_resumable == b->session_resumable &&
           a->discarded_bytes == b->discarded_bytes &&
           a->elapsed_ms == b->elapsed_ms && a->tls_version == b->tls_version &&
           a->ssl_calls == b->ssl_calls &&
           a->transport_reusable == b->transport_reusable &&
           a->linger_bytes == b->linger_bytes && a->detail == b->detail &&
           a->delivered_bytes == b->delivered_bytes && a->peer_alert == b->peer_alert &&
           a->peer_alert_level == b->peer_alert_level;
}

static inline void print_report(const closenotify_report *r, unsigned steps)
{
    /* Reserved words are written as zero. */
    for (unsigned i = 0; i < CLOSENOTIFY_REPORT_RESERVED; i++)
        CHECK(r->reserved[i] == 0);
    /* The detail as one token: spaces as '_'. */
    char detail[128];
    size_t i = 0;
    const char *d = r->detail != NULL ? r->detail : "none";
    for (; d[i] != '\0' && i + 1 < sizeof detail; i++)
        detail[i] = d[i] == ' ' ? '_' : d[i];
    detail[i] = '\0';
    printf("outcome=%s initiator=%u stage=%s alert=%d alert_name=%s os_error=%d "
           "close_notify_sent=%d close_notify_received=%d half_closed=%d "
           "session_resumable=%d discarded_bytes=%" PRIu64 " elapsed_ms=%" PRIu64
           " ssl_calls=%u tls_version=0x%04x transport_reusable=%d linger_bytes=%" PRId64
           " delivered_bytes=%" PRIu64 " peer_alert=%d peer_alert_level=%d steps=%u"
           " detail=%s\n",
           closenotify_outcome_name(r->outcome), (unsigned)r->initiator,
           closenotify_stage_name(r->stage), r->alert,
           closenotify_alert_name(r->alert), r->os_error,
           r->close_notify_sent ? 1 : 0, r->close_notify_received ? 1 : 0,
           r->half_closed ? 1 : 0, r->session_resumable ? 1 : 0,
           r->discarded_bytes, r->elapsed_ms, (unsigned)r->ssl_calls,
           (unsigned)r->tls_version, r->transport_reusable ? 1 : 0, r->linger_bytes,
           r->delivered_bytes, r->peer_alert, r->peer_alert_level, steps, detail);
    fflush(stdout);
}

/* A report filled with a recognisable pattern, to prove a failed call wrote
 * nothing. */
static inline closenotify_report sentinel_report(void)
{
    closenotify_report r;
    memset(&r, 0xA5, sizeof r);
    return r;
}

static inline int is_sentinel(const closenotify_report *r)
{
    closenotify_report s = sentinel_report();
    return memcmp(r, &s, sizeof s) == 0;
}


#include <signal.h>

/*
 * SIGPIPE's action. Every closenotify call in this program runs with the
 * default action (the process dies on a write to a reset connection), since
 * the library must never raise it; this program's own OpenSSL I/O (handshake,
 * reads) runs with it ignored, so that a peer failing there is a clear error
 * message and not a silent death.
 */
static inline void sigpipe(void (*action)(int))
{
    if (signal(SIGPIPE, action) == SIG_ERR)
        FAIL("signal(SIGPIPE): %s", strerror(errno));
}

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

/* A blocking TCP connection to 127.0.0.1:`port`, Nagle off, every read and
 * write of this program on it bounded by `wait_ms` (the handshake, our reads
 * if the peer dies; a shutdown does not depend on them). */
static inline int connect_loopback(int port, int wait_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        FAIL("socket: %s", strerror(errno));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        FAIL("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = wait_ms / 1000, .tv_usec = (wait_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

#endif
