/*
 * cn_test.c: the C API (include/closenotify.h) exercised from C, as a C program
 * uses it. Driven by tests/c_api.rs, which starts the peers and checks what this
 * program prints.
 *
 *   cn_test blocking|step|step-revents|closer SCENARIO PORT 1.2|1.3 [OPTIONS]
 *       step-revents: the step API told poll()'s revents
 *       closer: handed to a closenotify_closer (through a shutdown object
 *               when something is handed over), its fd polled
 *       SCENARIO: plain           shut down right after the handshake
 *                 peer-initiated  SSL_read until the peer's close_notify first
 *                 alert           forge a TLS record under the TLS layer, wait
 *                                 for the peer's answer (a fatal alert)
 *                 fill            fill the socket's send queue with raw bytes
 *                                 (the peer does not read)
 *               step APIs and the closer, a connection handed over (see `struct handover`):
 *                 unsent          SSL_write until WANT_WRITE leaves a record half
 *                                 written, print `stalled written=W unsent=U
 *                                 sha256=H`, hand the failed call's buffer and
 *                                 more to closenotify_shutdown_set_unsent
 *                 read-error      SSL_read until it fails (the peer closed or
 *                                 reset), hand the failure to
 *                                 closenotify_shutdown_set_error
 *                 alert-read-error as alert, then the same SSL_read failure
 *                 want-read       SSL_read until WANT_READ, handed over (ignored)
 *       OPTIONS:  --peer-timeout-ms N  the policy's peer timeout (default 1000)
 *                 --flush-timeout-ms N the policy's flush timeout (default 1000)
 *                 --drain-limit N      the policy's drain limit (default 65536)
 *                 --linger-timeout-ms N the policy's linger timeout (default 0)
 *                 --reset never|flush|always  the policy's reset on timeout
 *                                      (default flush)
 *                 --no-handover        prepare the handover, do not make it
 *                 --blocking-fd        step APIs: leave the socket blocking, as
 *                                      a careless caller would
 *                 --tick-ms N          step APIs: wake up at least every N ms,
 *                                      as a poll() loop shared with other
 *                                      sockets does
 *                 --step-limit-ms N    step APIs and the closer: fail if one
 *                                      step (process call) takes longer
 *                                      (default 100; a step never blocks,
 *                                      but valgrind is slow)
 *   cn_test blocking-read|step-read SCENARIO PORT 1.2|1.3 [--limit N] [--abort]
 *           [--peer-timeout-ms N] [--consume-ms N]
 *       the peer's data after our close_notify delivered instead of discarded
 *       (closenotify_shutdown_blocking_read with a sink, or
 *       closenotify_shutdown_step_read); prints delivered=N and a checksum
 *       of the bytes (sum of i * byte, mod 2^32); --abort: the sink refuses;
 *       --consume-ms: the consumer works N ms per chunk (default 0); the
 *       peer timeout defaults to 2000 ms here.
 *   cn_test stoptls PORT 1.2|1.3
 *       against tests/peers/stoptls.py: plaintext greeting and STARTTLS, TLS,
 *       a STOPTLS shutdown, then a plaintext line each way on the same fd.
 *   cn_test sigpipe PORT 1.2|1.3 [closer]
 *       SIGPIPE at its default action; the peer resets right after the
 *       handshake; the shutdown (blocking, or handed to a closer) must not
 *       kill this process.
 *
 * The network subcommands connect as a TLS client to 127.0.0.1:PORT with the
 * version pinned, shut down with closenotify, and print the report on stdout as
 * one line of key=value pairs. Exit status: 0 when every API call returned what
 * it should (whatever the outcome: the driver judges that), 2 for a usage error,
 * 3 for a failed check or setup step (the reason is on stderr).
 *
 * Everything is freed before a successful exit, so that valgrind's leak check
 * (CLOSENOTIFY_VALGRIND=1 in the driver) finds nothing of ours.
 */

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <closenotify.h>

/* Bound of every wait this program does on its own (handshake, reads, poll). */
#define WAIT_MS 5000

#include "check.h"

/* ------------------------------------------------------------------------- */
/* A TLS client connection, as a C program owns one: SSL_set_fd on a socket.   */
/* ------------------------------------------------------------------------- */


struct conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

static int parse_version(const char *s)
{
    if (strcmp(s, "1.2") == 0)
        return TLS1_2_VERSION;
    if (strcmp(s, "1.3") == 0)
        return TLS1_3_VERSION;
    return 0;
}

static void conn_open(struct conn *c, int port, int version)
{
    c->fd = connect_loopback(port, WAIT_MS);

    c->ctx = SSL_CTX_new(TLS_client_method());
    CHECK(c->ctx != NULL);
    CHECK(SSL_CTX_set_min_proto_version(c->ctx, version) == 1);
    CHECK(SSL_CTX_set_max_proto_version(c->ctx, version) == 1);
    /* The test peers use a self-signed certificate. */
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    c->ssl = SSL_new(c->ctx);
    CHECK(c->ssl != NULL);
    CHECK(SSL_set_fd(c->ssl, c->fd) == 1); /* a plain socket BIO: write() */
    sigpipe(SIG_IGN); /* a peer gone mid-handshake must not kill us here */
    if (SSL_connect(c->ssl) != 1)
        FAIL("handshake with 127.0.0.1:%d failed", port);
    CHECK(SSL_version(c->ssl) == version);
}

/* Ownership stays with the caller: after the shutdown the fd is open, still
 * the SSL's, and SSL_free (valgrind watches it) frees what the library attached
 * to the SSL. */
static void conn_close(struct conn *c)
{
    if (c->ssl == NULL) { /* handed over to a closer, which freed both */
        SSL_CTX_free(c->ctx);
        return;
    }
    CHECK(fcntl(c->fd, F_GETFD) != -1);
    CHECK(SSL_get_fd(c->ssl) == c->fd);
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    CHECK(close(c->fd) == 0);
}

/* Waits until `fd` reports one of `events` (POLLERR/POLLHUP always count). */
static short wait_fd(int fd, short events, const char *what)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
        int n = poll(&pfd, 1, WAIT_MS);
        if (n == 1)
            return pfd.revents;
        if (n == 0)
            FAIL("%s: nothing within %d ms", what, WAIT_MS);
        if (errno != EINTR)
            FAIL("poll: %s", strerror(errno));
    }
}

/* ------------------------------------------------------------------------- */
/* The two ways to shut down                                                  */
/* ------------------------------------------------------------------------- */

static void shutdown_blocking(struct conn *c, const closenotify_policy *policy,
                              closenotify_report *out)
{
    int flags = fcntl(c->fd, F_GETFL);
    CHECK(flags != -1);
    closenotify_report r = sentinel_report();
    CHECK_RC(closenotify_shutdown_blocking(c->ssl, c->fd, policy, &r),
             CLOSENOTIFY_OK);
    CHECK(!is_sentinel(&r));
    /* The socket is switched to non-blocking for the call, and back. */
    CHECK(fcntl(c->fd, F_GETFL) == flags);

    /* A second call writes the same report (kept with the SSL). */
    closenotify_report again = sentinel_report();
    CHECK_RC(closenotify_shutdown_blocking(c->ssl, c->fd, policy, &again),
             CLOSENOTIFY_OK);
    CHECK(report_eq(&r, &again));
    *out = r;
}

/*
 * The step API driven exactly as a C event loop drives it: step, wait with
 * poll() for what it asked (or only the timeout), step again, until DONE.
 * Returns the number of step calls.
 */
struct step_options {
    int revents;     /* closenotify_shutdown_step_revents instead of _step */
    int blocking_fd; /* leave the socket blocking */
    int tick_ms;     /* wake up at least this often (0: only when asked) */
    long long step_limit_ms; /* the longest one step may take */
};

/* What the application hands the shutdown before its first step: data it could
 * not finish writing, and the failure of its last SSL_read/SSL_write. */
struct handover {
    unsigned char *unsent; /* scribbled over once handed over: it is copied */
    size_t unsent_len;
    int has_error;
    int ssl_error; /* SSL_get_error() of the failed call */
    int sys_errno; /* errno right after it */
};

static long long ms_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)(now.tv_sec - start->tv_sec) * 1000 +
           (now.tv_nsec - start->tv_nsec) / 1000000;
}

static unsigned shutdown_step(struct conn *c, const closenotify_policy *policy,
                              const struct step_options *opt, const struct handover *h,
                              closenotify_report *out)
{
    /* An event loop's sockets are non-blocking; a careless caller's may not be.
     * Either way the library leaves the mode as it found it. */
    int flags = fcntl(c->fd, F_GETFL);
    CHECK(flags != -1);
    if (!opt->blocking_fd) {
        flags |= O_NONBLOCK;
        CHECK(fcntl(c->fd, F_SETFL, flags) == 0);
    }

    closenotify_shutdown *sd = NULL;
    CHECK_RC(closenotify_shutdown_new(c->ssl, c->fd, policy, &sd), CLOSENOTIFY_OK);
    CHECK(sd != NULL);

    /* Not finished (not even started): no report, and nothing written. */
    closenotify_report r = sentinel_report();
    CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_ERR_WRONG_STATE);
    CHECK(is_sentinel(&r));
    CHECK_LAST_ERROR("not finished");

    if (h != NULL && h->unsent != NULL) {
        CHECK_RC(closenotify_shutdown_set_unsent(sd, h->unsent, h->unsent_len),
                 CLOSENOTIFY_OK);
        /* The library has its own copy: ours may change or go now. */
        memset(h->unsent, 0xEE, h->unsent_len);
    }
    if (h != NULL && h->has_error)
        CHECK_RC(closenotify_shutdown_set_error(sd, h->ssl_error, h->sys_errno),
                 CLOSENOTIFY_OK);

    /* No step loop may outlive the policy's bounds by much, nor spin. */
    int budget_ms = (int)(policy->flush_timeout_ms + policy->peer_timeout_ms +
                          policy->linger_timeout_ms) + 10 * WAIT_MS;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);

    unsigned steps = 0;
    short revents = 0;
    for (;;) {
        closenotify_wait wait = 0xdead;
        int timeout_ms = -12345;
        struct timespec before;
        clock_gettime(CLOCK_MONOTONIC, &before);
        if (opt->revents)
            CHECK_RC(closenotify_shutdown_step_revents(sd, revents, &wait, &timeout_ms),
                     CLOSENOTIFY_OK);
        else
            CHECK_RC(closenotify_shutdown_step(sd, &wait, &timeout_ms), CLOSENOTIFY_OK);
        /* A step never blocks, whatever the socket's mode. */
        if (ms_since(&before) > opt->step_limit_ms)
            FAIL("a step took %lld ms (limit %lld)", ms_since(&before), opt->step_limit_ms);
        steps++;
        if (steps == 1) {
            /* Started: nothing more can be handed over, and a refused call
             * changes nothing (nor reads OpenSSL's error queue). */
            unsigned char byte = 'x';
            CHECK_RC(closenotify_shutdown_set_unsent(sd, &byte, 1),
                     CLOSENOTIFY_ERR_WRONG_STATE);
            CHECK_LAST_ERROR("before the first step");
            CHECK_RC(closenotify_shutdown_set_error(sd, SSL_ERROR_SYSCALL, ECONNRESET),
                     CLOSENOTIFY_ERR_WRONG_STATE);
            CHECK_LAST_ERROR("closenotify_shutdown_set_error: the shutdown has started");
        }
        if (wait == CLOSENOTIFY_WAIT_DONE) {
            CHECK(timeout_ms == 0);
            break;
        }
        CHECK(wait == CLOSENOTIFY_WAIT_READ || wait == CLOSENOTIFY_WAIT_WRITE ||
              wait == CLOSENOTIFY_WAIT_TIMER);
        CHECK(timeout_ms >= 0);
        /* A handful is normal; more is a busy loop (or the ticks). */
        CHECK(steps < (opt->tick_ms > 0 ? 100000u : 1000u));

        /* Still waiting: the report is refused and left untouched. */
        CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_ERR_WRONG_STATE);
        CHECK(is_sentinel(&r));

        CHECK(ms_since(&start) < budget_ms);

        struct pollfd pfd = {.fd = c->fd, .events = 0, .revents = 0};
        if (wait == CLOSENOTIFY_WAIT_READ)
            pfd.events = POLLIN;
        else if (wait == CLOSENOTIFY_WAIT_WRITE)
            pfd.events = POLLOUT;
        if (opt->tick_ms > 0 && timeout_ms > opt->tick_ms)
            timeout_ms = opt->tick_ms;
        int n = poll(&pfd, wait == CLOSENOTIFY_WAIT_TIMER ? 0 : 1, timeout_ms);
        if (n < 0 && errno != EINTR)
            FAIL("poll: %s", strerror(errno));
        revents = n > 0 ? pfd.revents : 0;
    }

    CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_OK);
    CHECK(!is_sentinel(&r));

    /* After DONE, every step answers DONE again, and the report stays. */
    closenotify_wait wait = 0xdead;
    int timeout_ms = -12345;
    CHECK_RC(closenotify_shutdown_step(sd, &wait, &timeout_ms), CLOSENOTIFY_OK);
    CHECK(wait == CLOSENOTIFY_WAIT_DONE && timeout_ms == 0);
    closenotify_report again = sentinel_report();
    CHECK_RC(closenotify_shutdown_report(sd, &again), CLOSENOTIFY_OK);
    CHECK(report_eq(&r, &again));

    closenotify_shutdown_free(sd);
    /* The library left the socket's mode as it found it. */
    CHECK(fcntl(c->fd, F_GETFL) == flags);
    *out = r;
    return steps;
}

/*
 * The closer, driven as a host's event loop drives it: hand the connection over
 * (with what the application hands over, through a shutdown object), then poll
 * the closer's fd with its timeout and process, until the report comes. The
 * closer owns the SSL and the fd from the handover on: `c` forgets them, and the
 * fd is checked closed once the report is out. Returns the number of process
 * calls.
 */
#define CLOSER_TAG UINT64_C(0x0123456789abcdef)

static unsigned shutdown_closer(struct conn *c, const closenotify_policy *policy,
                                const struct step_options *opt, const struct handover *h,
                                closenotify_report *out)
{
    closenotify_closer *closer = NULL;
    CHECK_RC(closenotify_closer_new(policy, &closer), CLOSENOTIFY_OK);
    int cfd = closenotify_closer_fd(closer);
    CHECK(cfd >= 0);
    /* Nothing pending: no deadline, no report. */
    CHECK(closenotify_closer_timeout_ms(closer) == -1);
    CHECK(closenotify_closer_pending(closer) == 0);

    if (h != NULL && (h->unsent != NULL || h->has_error)) {
        closenotify_shutdown *sd = NULL;
        CHECK_RC(closenotify_shutdown_new(c->ssl, c->fd, policy, &sd), CLOSENOTIFY_OK);
        if (h->unsent != NULL) {
            CHECK_RC(closenotify_shutdown_set_unsent(sd, h->unsent, h->unsent_len),
                     CLOSENOTIFY_OK);
            memset(h->unsent, 0xEE, h->unsent_len);
        }
        if (h->has_error)
            CHECK_RC(closenotify_shutdown_set_error(sd, h->ssl_error, h->sys_errno),
                     CLOSENOTIFY_OK);
        CHECK_RC(closenotify_closer_add_shutdown(closer, sd, CLOSER_TAG), CLOSENOTIFY_OK);
    } else {
        /* NULL: the closer's policy. */
        CHECK_RC(closenotify_closer_add(closer, c->ssl, c->fd, NULL, CLOSER_TAG),
                 CLOSENOTIFY_OK);
    }
    int fd = c->fd;
    c->ssl = NULL;
    c->fd = -1;

    int budget_ms = (int)(policy->flush_timeout_ms + policy->peer_timeout_ms +
                          policy->linger_timeout_ms) + 10 * WAIT_MS;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    unsigned calls = 0;
    closenotify_closed done[4];
    size_t n = 0;
    for (;;) {
        struct timespec before;
        clock_gettime(CLOCK_MONOTONIC, &before);
        CHECK_RC(closenotify_closer_process(closer), CLOSENOTIFY_OK);
        /* Processing never blocks. */
        if (ms_since(&before) > opt->step_limit_ms)
            FAIL("a process call took %lld ms (limit %lld)", ms_since(&before),
                 opt->step_limit_ms);
        calls++;
        CHECK_RC(closenotify_closer_reports(closer, done, 4, &n), CLOSENOTIFY_OK);
        if (n > 0)
            break;
        CHECK(closenotify_closer_pending(closer) == 1);
        CHECK(calls < 1000); /* a handful is normal; more is a busy loop */
        CHECK(ms_since(&start) < budget_ms);
        int timeout_ms = closenotify_closer_timeout_ms(closer);
        CHECK(timeout_ms >= 0); /* pending: there is a deadline */
        struct pollfd pfd = {.fd = cfd, .events = POLLIN, .revents = 0};
        if (poll(&pfd, 1, timeout_ms) < 0 && errno != EINTR)
            FAIL("poll: %s", strerror(errno));
    }
    CHECK(n == 1 && done[0].tag == CLOSER_TAG);
    /* Exactly once: nothing more, and nothing pending. */
    size_t again = 99;
    CHECK_RC(closenotify_closer_reports(closer, done + 1, 3, &again), CLOSENOTIFY_OK);
    CHECK(again == 0);
    CHECK(closenotify_closer_pending(closer) == 0);
    /* The connection is closed by the call that reported it when the closer has
     * time to spare, or else a later one, which the closer then asks for at
     * once. */
    if (closenotify_closer_timeout_ms(closer) == 0)
        CHECK_RC(closenotify_closer_process(closer), CLOSENOTIFY_OK);
    CHECK(closenotify_closer_timeout_ms(closer) == -1);
    /* The closer closed the fd: this program opened nothing since, so the
     * number is free. */
    CHECK(fcntl(fd, F_GETFD) == -1 && errno == EBADF);
    closenotify_closer_free(closer);
    *out = done[0].report;
    return calls;
}

/* ------------------------------------------------------------------------- */
/* Subcommands                                                                */
/* ------------------------------------------------------------------------- */

/* The forged record of the `alert` scenario: an application_data header
 * (type 23, legacy version 3.3, length 48) and 48 bytes that decrypt to
 * nothing valid. Written under the TLS layer, it makes the peer's OpenSSL
 * answer with a fatal bad_record_mac alert. */
static void send_forged_record(int fd)
{
    unsigned char rec[5 + 48] = {0x17, 0x03, 0x03, 0x00, 0x30};
    for (size_t i = 0; i < 48; i++)
        rec[5 + i] = (unsigned char)(i * 37u);
    ssize_t n = send(fd, rec, sizeof rec, MSG_NOSIGNAL);
    if (n != (ssize_t)sizeof rec)
        FAIL("send of the forged record: %s", n < 0 ? strerror(errno) : "short");
    /* Readable: the peer's alert (and anything it sent before) has arrived. */
    wait_fd(fd, POLLIN, "the peer's alert");
}

/* Reads (and drops) application data until the peer's close_notify. */
static void read_until_close_notify(SSL *ssl)
{
    char buf[4096];
    for (;;) {
        int n = SSL_read(ssl, buf, sizeof buf);
        if (n > 0)
            continue;
        int err = SSL_get_error(ssl, n);
        if (err == SSL_ERROR_ZERO_RETURN)
            return;
        FAIL("SSL_read before the peer's close_notify: SSL_get_error %d", err);
    }
}

/* The `fill` scenario: the peer does not read, and our send queue fills up with
 * raw bytes under the TLS layer until the kernel takes no more (OpenSSL's own
 * state is untouched). A TLS 1.3 client first processes the server's tickets, so
 * that nothing is left unread. */
static void fill_send_buffer(struct conn *c)
{
    int flags = fcntl(c->fd, F_GETFL);
    CHECK(flags != -1 && fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) == 0);
    if (SSL_version(c->ssl) == TLS1_3_VERSION) {
        /* The tickets may come in more than one segment: read until none has
         * come for 50 ms. */
        char buf[64];
        int wait_ms = WAIT_MS;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN, .revents = 0};
        while (poll(&pfd, 1, wait_ms) == 1) {
            (void)SSL_read(c->ssl, buf, sizeof buf);
            wait_ms = 50;
        }
        ERR_clear_error();
    }
    static char chunk[65536];
    for (;;) {
        while (send(c->fd, chunk, sizeof chunk, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
        }
        while (send(c->fd, chunk, 1, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
        }
        /* Stable once the socket stays unwritable a while and still takes not
         * one byte. */
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT, .revents = 0};
        if (poll(&pfd, 1, 50) == 0 && send(c->fd, chunk, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            break;
    }
    CHECK(fcntl(c->fd, F_SETFL, flags) == 0);
}

/* ----------------------- handing a connection over ----------------------- */

/* The `unsent` scenario's calls: not a multiple of a record's 16384 bytes, so
 * that the stalled call has records written, one half written and some not
 * begun. */
#define CHUNK 100003
/* More than loopback's socket buffers can ever hold. */
#define NEVER_STALLS ((uint64_t)256 << 20)

/* Byte `from + i` of the stream the `unsent` scenario writes. */
static void fill(unsigned char *buf, uint64_t from, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(((from + i) * 2654435761u) >> 13);
}

/*
 * SSL_write on the non-blocking socket, CHUNK bytes a call, until the peer
 * (which does not read yet) makes OpenSSL answer WANT_WRITE with a record half
 * in the kernel. Returns a buffer of 2 * CHUNK bytes: the whole buffer of that
 * failed call, as OpenSSL's retry rule requires, then one chunk more. Prints
 * `stalled written=W unsent=U sha256=H`: the bytes of the calls that
 * succeeded, the size of the buffer, and the SHA-256 of all W + U bytes, which
 * the peer must receive in order.
 */
static unsigned char *write_until_stalled(struct conn *c)
{
    int flags = fcntl(c->fd, F_GETFL);
    CHECK(flags != -1 && fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) == 0);
    unsigned char *buf = malloc(2 * CHUNK);
    CHECK(buf != NULL);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    CHECK(md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1);
    uint64_t written = 0;
    for (;;) {
        fill(buf, written, CHUNK);
        ERR_clear_error();
        int n = SSL_write(c->ssl, buf, CHUNK);
        if (n <= 0) {
            int err = SSL_get_error(c->ssl, n);
            if (err != SSL_ERROR_WANT_WRITE)
                FAIL("SSL_write after %" PRIu64 " bytes: SSL_get_error %d", written, err);
            break;
        }
        /* SSL_MODE_ENABLE_PARTIAL_WRITE is off: a call writes all or fails. */
        CHECK(n == CHUNK);
        CHECK(EVP_DigestUpdate(md, buf, CHUNK) == 1);
        written += CHUNK;
        if (written > NEVER_STALLS)
            FAIL("%" PRIu64 " bytes written and SSL_write never stalled", written);
    }
    fill(buf + CHUNK, written + CHUNK, CHUNK);
    CHECK(EVP_DigestUpdate(md, buf, 2 * CHUNK) == 1);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    CHECK(EVP_DigestFinal_ex(md, digest, &dlen) == 1);
    EVP_MD_CTX_free(md);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < dlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    printf("stalled written=%" PRIu64 " unsent=%d sha256=%s\n", written, 2 * CHUNK, hex);
    fflush(stdout);
    return buf;
}

/*
 * One SSL_read that must not return data. Stores SSL_get_error's answer and the
 * errno saved right after the call in `h`, and leaves OpenSSL's error queue as
 * the call left it, for closenotify_shutdown_set_error. Returns the answer.
 */
static int read_once(struct conn *c, struct handover *h, const char *expected)
{
    char buf[4096];
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(c->ssl, buf, sizeof buf);
    int saved = errno;
    if (n > 0)
        FAIL("SSL_read: %d bytes of application data, expected %s", n, expected);
    h->has_error = 1;
    h->ssl_error = SSL_get_error(c->ssl, n);
    h->sys_errno = saved;
    return h->ssl_error;
}

/*
 * One SSL_read on the blocking socket (SO_RCVTIMEO bounds it), which must fail:
 * TLS 1.3 tickets are processed inside it.
 */
static void read_failure(struct conn *c, struct handover *h)
{
    const char *expected = "SSL_ERROR_SYSCALL or SSL_ERROR_SSL";
    int err = read_once(c, h, expected);
    if (err != SSL_ERROR_SYSCALL && err != SSL_ERROR_SSL)
        FAIL("SSL_read: SSL_get_error %d (errno %d), expected %s", err, h->sys_errno,
             expected);
    printf("read_failed ssl_error=%d errno=%d\n", err, h->sys_errno);
}

/* SSL_read on the non-blocking socket until it answers WANT_READ (TLS 1.3
 * tickets, if any, are processed first): no failure, but what an event loop
 * holds when it decides to close. */
static void read_until_want(struct conn *c, struct handover *h)
{
    int flags = fcntl(c->fd, F_GETFL);
    CHECK(flags != -1 && fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) == 0);
    int err = read_once(c, h, "SSL_ERROR_WANT_READ");
    if (err != SSL_ERROR_WANT_READ)
        FAIL("SSL_read: SSL_get_error %d (errno %d), expected SSL_ERROR_WANT_READ", err,
             h->sys_errno);
}

struct scenario_options {
    unsigned flush_timeout_ms;
    unsigned peer_timeout_ms;
    int no_handover; /* prepare the handover, then do not make it */
    uint64_t drain_limit;
    unsigned linger_timeout_ms;
    closenotify_reset reset_on_timeout;
};

enum driver { BLOCKING, STEP, CLOSER };

static int run_scenario(enum driver driver, const struct step_options *opt, const char *scenario,
                        int port, int version, const struct scenario_options *so)
{
    closenotify_policy policy;
    closenotify_policy_init(&policy);
    policy.flush_timeout_ms = so->flush_timeout_ms;
    policy.peer_timeout_ms = so->peer_timeout_ms;
    policy.drain_limit = so->drain_limit;
    policy.linger_timeout_ms = so->linger_timeout_ms;
    policy.reset_on_timeout = so->reset_on_timeout;

    struct conn c;
    conn_open(&c, port, version);
    struct handover h;
    memset(&h, 0, sizeof h);
    unsigned char *unsent = NULL;
    if (strcmp(scenario, "peer-initiated") == 0)
        read_until_close_notify(c.ssl);
    else if (strcmp(scenario, "alert") == 0)
        send_forged_record(c.fd);
    else if (strcmp(scenario, "fill") == 0)
        fill_send_buffer(&c);
    else if (strcmp(scenario, "unsent") == 0) {
        unsent = write_until_stalled(&c);
        h.unsent = unsent;
        h.unsent_len = 2 * CHUNK;
    } else if (strcmp(scenario, "read-error") == 0)
        read_failure(&c, &h);
    else if (strcmp(scenario, "alert-read-error") == 0) {
        send_forged_record(c.fd);
        read_failure(&c, &h);
    } else if (strcmp(scenario, "want-read") == 0)
        read_until_want(&c, &h);
    else
        CHECK(strcmp(scenario, "plain") == 0);

    closenotify_report r;
    unsigned steps = 0;
    sigpipe(SIG_DFL);
    if (driver == STEP)
        steps = shutdown_step(&c, &policy, opt, so->no_handover ? NULL : &h, &r);
    else if (driver == CLOSER)
        steps = shutdown_closer(&c, &policy, opt, so->no_handover ? NULL : &h, &r);
    else
        shutdown_blocking(&c, &policy, &r);
    CHECK(r.tls_version == version);
    print_report(&r, steps);
    free(unsent);
    conn_close(&c);
    return 0;
}

/* ------------------------------- reading -------------------------------- */

/* What the peer sent after our close_notify, as received: a count and a
 * position-weighted checksum, compared by the driver with what it sent. */
struct received {
    uint64_t count;
    uint32_t sum;
    int abort; /* the sink refuses the first chunk */
    unsigned consume_ms; /* the consumer's work per chunk */
};

static void take(struct received *got, const uint8_t *data, size_t len)
{
    if (len > 0 && got->consume_ms > 0) {
        struct timespec work = {0, (long)got->consume_ms * 1000000L};
        nanosleep(&work, NULL);
    }
    for (size_t i = 0; i < len; i++) {
        got->sum += (uint32_t)(got->count + i) * data[i];
    }
    got->count += len;
}

static int sink(void *ctx, const uint8_t *data, size_t len)
{
    struct received *got = ctx;
    CHECK(len > 0);
    if (got->abort)
        return 1;
    take(got, data, len);
    return 0;
}

static int run_read(int step, const char *scenario, int port, int version, uint64_t limit,
                    int abort_sink, unsigned peer_timeout_ms, unsigned consume_ms)
{
    closenotify_policy policy;
    closenotify_policy_init(&policy);
    policy.flush_timeout_ms = 1000;
    policy.peer_timeout_ms = peer_timeout_ms;
    CHECK(strcmp(scenario, "plain") == 0);

    struct conn c;
    conn_open(&c, port, version);
    sigpipe(SIG_DFL);
    struct received got = {0, 0, abort_sink, consume_ms};
    closenotify_report r = sentinel_report();
    unsigned steps = 0;
    if (!step) {
        closenotify_result rc =
            closenotify_shutdown_blocking_read(c.ssl, c.fd, &policy, limit, sink, &got, &r);
        if (abort_sink) {
            CHECK_RC(rc, CLOSENOTIFY_ERR_SINK);
            CHECK(is_sentinel(&r));
            CHECK_LAST_ERROR("sink");
            printf("aborted\n");
            conn_close(&c);
            return 0;
        }
        CHECK_RC(rc, CLOSENOTIFY_OK);
    } else {
        int flags = fcntl(c.fd, F_GETFL);
        CHECK(flags != -1 && fcntl(c.fd, F_SETFL, flags | O_NONBLOCK) == 0);
        closenotify_shutdown *sd = NULL;
        CHECK_RC(closenotify_shutdown_new(c.ssl, c.fd, &policy, &sd), CLOSENOTIFY_OK);
        uint8_t buf[1000]; /* small: many chunks */
        short revents = 0;
        unsigned empty_steps = 0; /* steps that delivered nothing */
        for (;;) {
            closenotify_wait wait;
            int timeout_ms;
            size_t n = 12345;
            CHECK_RC(closenotify_shutdown_step_read(sd, revents, buf, sizeof buf, &n, &wait,
                                                    &timeout_ms),
                     CLOSENOTIFY_OK);
            CHECK(n <= sizeof buf);
            take(&got, buf, n);
            steps++;
            /* Every step that delivers nothing follows a wake-up: a handful,
             * never a spin (a streaming peer makes many steps that deliver). */
            empty_steps += n == 0;
            CHECK(empty_steps < 1000);
            if (wait == CLOSENOTIFY_WAIT_DONE)
                break;
            if (n > 0) {
                revents = 0; /* more may be buffered: again at once */
                continue;
            }
            struct pollfd pfd = {.fd = c.fd,
                                 .events = wait == CLOSENOTIFY_WAIT_WRITE ? POLLOUT : POLLIN,
                                 .revents = 0};
            int k = poll(&pfd, wait == CLOSENOTIFY_WAIT_TIMER ? 0 : 1, timeout_ms);
            if (k < 0 && errno != EINTR)
                FAIL("poll: %s", strerror(errno));
            revents = k > 0 ? pfd.revents : 0;
        }
        /* NULL checks of the read call. */
        closenotify_wait wait;
        int timeout_ms;
        size_t n;
        CHECK_RC(closenotify_shutdown_step_read(sd, 0, NULL, 10, &n, &wait, &timeout_ms),
                 CLOSENOTIFY_ERR_NULL_ARGUMENT);
        CHECK_RC(closenotify_shutdown_step_read(sd, 0, buf, sizeof buf, NULL, &wait,
                                                &timeout_ms),
                 CLOSENOTIFY_ERR_NULL_ARGUMENT);
        CHECK_RC(closenotify_shutdown_report(sd, &r), CLOSENOTIFY_OK);
        closenotify_shutdown_free(sd);
    }
    print_report(&r, steps);
    printf("delivered=%" PRIu64 " checksum=%" PRIu32 "\n", got.count, got.sum);
    conn_close(&c);
    return 0;
}

/* ------------------------------- STOPTLS --------------------------------- */

/* One line from the raw socket, byte by byte: what follows the newline belongs
 * to the next protocol. */
static void expect_line(int fd, const char *want)
{
    char line[256];
    size_t n = 0;
    while (n == 0 || line[n - 1] != '\n') {
        CHECK(n + 1 < sizeof line);
        ssize_t k = recv(fd, line + n, 1, 0);
        if (k != 1)
            FAIL("recv: %s after %zu bytes", k == 0 ? "EOF" : strerror(errno), n);
        n++;
    }
    line[n] = '\0';
    if (strcmp(line, want) != 0)
        FAIL("expected \"%s\", got \"%s\"", want, line);
}

static void send_all(int fd, const char *text)
{
    size_t len = strlen(text);
    CHECK(send(fd, text, len, MSG_NOSIGNAL) == (ssize_t)len);
}

/* The client side of tests/peers/stoptls.py's lifecycle. */
static int run_stoptls(int port, int version)
{
    struct conn c;
    /* Plaintext first: connect without TLS. */
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(c.fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c.fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        FAIL("connect: %s", strerror(errno));
    struct timeval tv = {.tv_sec = WAIT_MS / 1000, .tv_usec = 0};
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    expect_line(c.fd, "220 ready\r\n");
    send_all(c.fd, "STARTTLS\r\n");
    expect_line(c.fd, "220 go\r\n");

    /* TLS on the same socket. */
    c.ctx = SSL_CTX_new(TLS_client_method());
    CHECK(c.ctx != NULL);
    CHECK(SSL_CTX_set_min_proto_version(c.ctx, version) == 1);
    CHECK(SSL_CTX_set_max_proto_version(c.ctx, version) == 1);
    SSL_CTX_set_verify(c.ctx, SSL_VERIFY_NONE, NULL);
    c.ssl = SSL_new(c.ctx);
    CHECK(c.ssl != NULL);
    CHECK(SSL_set_fd(c.ssl, c.fd) == 1);
    sigpipe(SIG_IGN);
    CHECK(SSL_connect(c.ssl) == 1);
    CHECK(SSL_write(c.ssl, "ping\n", 5) == 5);
    char pong[5];
    CHECK(SSL_read(c.ssl, pong, 5) == 5 && memcmp(pong, "pong\n", 5) == 0);

    /* Leave TLS, keep the connection. */
    closenotify_policy policy;
    closenotify_policy_init(&policy);
    policy.mode = CLOSENOTIFY_MODE_STOPTLS;
    policy.flush_timeout_ms = 2000;
    policy.peer_timeout_ms = 2000;
    closenotify_report r = sentinel_report();
    sigpipe(SIG_DFL);
    CHECK_RC(closenotify_shutdown_blocking(c.ssl, c.fd, &policy, &r), CLOSENOTIFY_OK);
    print_report(&r, 0);
    CHECK(r.outcome == CLOSENOTIFY_OUTCOME_CLEAN && r.transport_reusable && !r.half_closed);

    /* Plaintext again, on the fd the library left open, byte-exact. */
    send_all(c.fd, "plain from test\n");
    expect_line(c.fd, "plain from python\n");
    printf("plaintext: ok\n");
    conn_close(&c);
    return 0;
}

/*
 * SIGPIPE: OpenSSL's socket BIO writes with write(). The peer resets
 * the connection right after the handshake; once the pending ECONNRESET is
 * consumed (as an event loop does on POLLERR), the next write() fails with
 * EPIPE and raises SIGPIPE, whose default action kills the process. The
 * shutdown writes our close_notify: it must survive and report reset/EPIPE.
 */
static int run_sigpipe(int port, int version, int closer)
{
    struct conn c;
    conn_open(&c, port, version);

    /* POLLERR / POLLHUP are reported whatever `events` says: wait for them
     * only, not for readable data (TLS 1.3 tickets may be pending). */
    for (;;) {
        short rev = wait_fd(c.fd, 0, "the peer's reset");
        if (rev & (POLLERR | POLLHUP))
            break;
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    CHECK(getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0);
    if (soerr != ECONNRESET)
        FAIL("SO_ERROR is %d (%s), expected ECONNRESET", soerr, strerror(soerr));

    closenotify_policy policy;
    closenotify_policy_init(&policy);
    policy.flush_timeout_ms = 1000;
    policy.peer_timeout_ms = 1000;
    closenotify_report r = sentinel_report();
    sigpipe(SIG_DFL); /* whatever the parent process left us */
    unsigned calls = 0;
    if (closer) {
        /* Handed to a closer, which writes close_notify on the reset socket. */
        struct step_options opt = {0, 0, 0, 1000};
        calls = shutdown_closer(&c, &policy, &opt, NULL, &r);
    } else {
        CHECK_RC(closenotify_shutdown_blocking(c.ssl, c.fd, &policy, &r), CLOSENOTIFY_OK);
    }
    print_report(&r, calls); /* still alive: no SIGPIPE */
    conn_close(&c);
    return 0;
}

/* ------------------------------------------------------------------------- */

static int usage(void)
{
    fprintf(stderr,
            "usage: cn_test blocking|step|step-revents|closer plain|peer-initiated|alert|fill "
            "PORT "
            "1.2|1.3 [--peer-timeout-ms N] [--flush-timeout-ms N]\n"
            "            [--blocking-fd] [--tick-ms N] [--step-limit-ms N]\n"
            "       cn_test step|step-revents|closer unsent|read-error|alert-read-error|want-read "
            "PORT 1.2|1.3 [--no-handover]\n"
            "            [same options]\n"
            "       cn_test blocking-read|step-read plain PORT 1.2|1.3 [--limit N] "
            "[--abort] [--peer-timeout-ms N] [--consume-ms N]\n"
            "       cn_test stoptls PORT 1.2|1.3\n"
            "       cn_test sigpipe PORT 1.2|1.3 [closer]\n"
            );
    return 2;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > max || s[0] == '-')
        return 0;
    *out = v;
    return 1;
}

/* Scenarios of the shutdown subcommands; `handover`: only the step API can take
 * the handover they prepare. */
static const struct {
    const char *name;
    int handover;
} SCENARIOS[] = {
    {"plain", 0},     {"peer-initiated", 0}, {"alert", 0},
    {"fill", 0},      {"unsent", 1},         {"read-error", 1},
    {"alert-read-error", 1}, {"want-read", 1},
};

int main(int argc, char **argv)
{
    unsigned long port, peer_timeout = 1000, flush_timeout = 1000;
    if (argc == 4 && strcmp(argv[1], "stoptls") == 0) {
        int version = parse_version(argv[3]);
        if (!parse_uint(argv[2], 65535, &port) || version == 0)
            return usage();
        return run_stoptls((int)port, version);
    }
    if (argc >= 5 &&
        (strcmp(argv[1], "blocking-read") == 0 || strcmp(argv[1], "step-read") == 0)) {
        int version = parse_version(argv[4]);
        unsigned long limit = 1UL << 30, consume_ms = 0;
        int abort_sink = 0;
        peer_timeout = 2000;
        if (!parse_uint(argv[3], 65535, &port) || version == 0)
            return usage();
        for (int i = 5; i < argc; i++) {
            if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc &&
                parse_uint(argv[i + 1], 0xffffffffUL, &limit))
                i++;
            else if (strcmp(argv[i], "--abort") == 0 && strcmp(argv[1], "blocking-read") == 0)
                abort_sink = 1;
            else if (strcmp(argv[i], "--peer-timeout-ms") == 0 && i + 1 < argc &&
                     parse_uint(argv[i + 1], 0xffffffffUL, &peer_timeout))
                i++;
            else if (strcmp(argv[i], "--consume-ms") == 0 && i + 1 < argc &&
                     parse_uint(argv[i + 1], 999, &consume_ms))
                i++;
            else
                return usage();
        }
        return run_read(strcmp(argv[1], "step-read") == 0, argv[2], (int)port, version,
                        limit, abort_sink, (unsigned)peer_timeout, (unsigned)consume_ms);
    }
    if ((argc == 4 || (argc == 5 && strcmp(argv[4], "closer") == 0)) &&
        strcmp(argv[1], "sigpipe") == 0) {
        int version = parse_version(argv[3]);
        if (!parse_uint(argv[2], 65535, &port) || version == 0)
            return usage();
        return run_sigpipe((int)port, version, argc == 5);
    }
    if (argc >= 5 && (strcmp(argv[1], "blocking") == 0 || strcmp(argv[1], "step") == 0 ||
                      strcmp(argv[1], "step-revents") == 0 || strcmp(argv[1], "closer") == 0)) {
        enum driver driver = strcmp(argv[1], "blocking") == 0 ? BLOCKING
                             : strcmp(argv[1], "closer") == 0 ? CLOSER
                                                              : STEP;
        int step = driver != BLOCKING;
        struct step_options opt = {strcmp(argv[1], "step-revents") == 0, 0, 0, 100};
        struct scenario_options so = {0, 0, 0, 65536, 0, CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT};
        int version = parse_version(argv[4]);
        if (!parse_uint(argv[3], 65535, &port) || version == 0)
            return usage();
        for (int i = 5; i < argc; i++) {
            unsigned long v;
            if (strcmp(argv[i], "--peer-timeout-ms") == 0 && i + 1 < argc &&
                parse_uint(argv[i + 1], 0xffffffffUL, &peer_timeout))
                i++;
            else if (strcmp(argv[i], "--flush-timeout-ms") == 0 && i + 1 < argc &&
                     parse_uint(argv[i + 1], 0xffffffffUL, &flush_timeout))
                i++;
            else if (strcmp(argv[i], "--drain-limit") == 0 && i + 1 < argc &&
                     parse_uint(argv[i + 1], 0xffffffffUL, &v)) {
                so.drain_limit = v;
                i++;
            } else if (strcmp(argv[i], "--linger-timeout-ms") == 0 && i + 1 < argc &&
                       parse_uint(argv[i + 1], 3600000, &v)) {
                so.linger_timeout_ms = (unsigned)v;
                i++;
            } else if (strcmp(argv[i], "--reset") == 0 && i + 1 < argc &&
                       (strcmp(argv[i + 1], "never") == 0 || strcmp(argv[i + 1], "flush") == 0 ||
                        strcmp(argv[i + 1], "always") == 0)) {
                so.reset_on_timeout = strcmp(argv[i + 1], "never") == 0    ? CLOSENOTIFY_RESET_NEVER
                                      : strcmp(argv[i + 1], "flush") == 0 ? CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT
                                                                           : CLOSENOTIFY_RESET_ALWAYS;
                i++;
            } else if (strcmp(argv[i], "--no-handover") == 0 && step)
                so.no_handover = 1;
            else if (strcmp(argv[i], "--blocking-fd") == 0 && driver == STEP)
                opt.blocking_fd = 1;
            else if (strcmp(argv[i], "--tick-ms") == 0 && driver == STEP && i + 1 < argc &&
                     parse_uint(argv[i + 1], 60000, &v) && v > 0) {
                opt.tick_ms = (int)v;
                i++;
            } else if (strcmp(argv[i], "--step-limit-ms") == 0 && step && i + 1 < argc &&
                       parse_uint(argv[i + 1], 600000, &v) && v > 0) {
                opt.step_limit_ms = (long long)v;
                i++;
            } else
                return usage();
        }
        int known = 0;
        for (size_t k = 0; k < sizeof SCENARIOS / sizeof *SCENARIOS; k++)
            if (strcmp(argv[2], SCENARIOS[k].name) == 0)
                known = step || !SCENARIOS[k].handover;
        if (!known)
            return usage();
        so.flush_timeout_ms = (unsigned)flush_timeout;
        so.peer_timeout_ms = (unsigned)peer_timeout;
        return run_scenario(driver, &opt, argv[2], (int)port, version, &so);
    }
    return usage();
}

