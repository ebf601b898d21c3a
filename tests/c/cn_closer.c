/*
 * cn_closer.c: a C program that hands many finished TLS connections to a
 * closenotify_closer and serves on, as a C server hands over its closing
 * connections. Driven by tests/c_closer.rs, whose peer (Rust, real OpenSSL)
 * plays, on each connection, the behaviour named in the connection's first
 * line.
 *
 *   cn_closer PORT COUNT [--peer-timeout-ms N] [--flush-timeout-ms N]
 *
 * Connects COUNT times to 127.0.0.1:PORT (TLS 1.2 and 1.3 in turn), each time:
 * handshake (a blocking socket), send the behaviour's line, play our part of it
 * (fill the send queue for a peer that does not read, forge a record for one
 * that answers with an alert), make the socket non-blocking or leave it
 * blocking (in turn: the closer copes with both), hand the SSL* and the fd over
 * with closenotify_closer_add and a tag, then give the closer its turn without
 * waiting (poll with timeout 0) before the next connection. Then runs the host
 * loop (poll on the closer's fd with its timeout) until every report is in.
 *
 * Checked here, for every connection: its report comes exactly once, with its
 * tag; the outcome is the behaviour's; no report came past its policy (elapsed
 * within the timeouts plus slack); every fd is closed once the closer is done
 * (as many open as before the first connection).
 * Then the ends of a closer's life: closenotify_closer_finish with shutdowns
 * pending, and closenotify_closer_free with shutdowns pending (their fds
 * closed at once, nothing leaked: valgrind's leak check in the driver).
 *
 * Prints one line per behaviour, `behaviour=B count=N outcome=O
 * max_elapsed_ms=E`, then `reports=N late_ms=L process_calls=P`. Exit status:
 * 0 when every check passed, 2 for a usage error, 3 for a failed check.
 */

#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <dirent.h>
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
#include <openssl/ssl.h>

#include <closenotify.h>

#include "check.h"

/* Bound of every wait this program does on its own (handshake, the alert). */
#define WAIT_MS 5000

enum behaviour { ANSWERS, SILENT, NOT_READING, TRUNCATES, RESETS, ALERT, BEHAVIOURS };

static const char *const NAMES[BEHAVIOURS] = {"answers",   "silent", "not_reading",
                                              "truncates", "resets", "alert"};
static const unsigned OUTCOMES[BEHAVIOURS] = {
    CLOSENOTIFY_OUTCOME_CLEAN,     CLOSENOTIFY_OUTCOME_TIMED_OUT,
    CLOSENOTIFY_OUTCOME_TIMED_OUT, CLOSENOTIFY_OUTCOME_TRUNCATED,
    CLOSENOTIFY_OUTCOME_RESET,     CLOSENOTIFY_OUTCOME_PEER_ALERT};

/* The behaviour of connection `i`: the whole mix in the first rounds, then the
 * cheap ones only (filling a send queue costs tens of milliseconds). */
static enum behaviour behaviour_of(unsigned long i)
{
    static const enum behaviour cheap[] = {ANSWERS, SILENT, TRUNCATES, RESETS, ALERT};
    if (i < 5 * BEHAVIOURS)
        return (enum behaviour)(i % BEHAVIOURS);
    return cheap[i % (sizeof cheap / sizeof *cheap)];
}

struct conn {
    int fd;
    enum behaviour behaviour;
    int reported;
};

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The fds this process has open (valgrind's own included: they do not change). */
static int open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    CHECK(dir != NULL);
    int n = 0;
    while (readdir(dir) != NULL)
        n++;
    closedir(dir);
    return n;
}

static SSL_CTX *client_ctx(int version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    CHECK(ctx != NULL);
    CHECK(SSL_CTX_set_min_proto_version(ctx, version) == 1);
    CHECK(SSL_CTX_set_max_proto_version(ctx, version) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* a self-signed test peer */
    return ctx;
}

static void wait_readable(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
    if (poll(&pfd, 1, WAIT_MS) != 1)
        FAIL("fd %d: nothing arrived within %d ms", fd, WAIT_MS);
}

/* Our part of ALERT: a record whose body fails authentication, written under
 * the TLS layer; the peer answers with a fatal bad_record_mac. */
static void forge_record(int fd)
{
    unsigned char rec[5 + 48] = {0x17, 0x03, 0x03, 0x00, 0x30};
    for (size_t i = 0; i < 48; i++)
        rec[5 + i] = (unsigned char)(i * 37u);
    CHECK(send(fd, rec, sizeof rec, MSG_NOSIGNAL) == (ssize_t)sizeof rec);
    wait_readable(fd);
}

/* Our part of NOT_READING: raw bytes under the TLS layer until the kernel takes
 * not one more (a TLS 1.3 client first reads the peer's tickets). */
static void fill_send_queue(SSL *ssl, int fd)
{
    int flags = fcntl(fd, F_GETFL);
    CHECK(flags != -1 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
    if (SSL_version(ssl) == TLS1_3_VERSION) {
        char buf[64];
        int wait_ms = WAIT_MS;
        struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
        while (poll(&pfd, 1, wait_ms) == 1) {
            (void)SSL_read(ssl, buf, sizeof buf);
            wait_ms = 50;
        }
        ERR_clear_error();
    }
    static char chunk[65536];
    for (;;) {
        while (send(fd, chunk, sizeof chunk, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
        }
        while (send(fd, chunk, 1, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT, .revents = 0};
        if (poll(&pfd, 1, 50) == 0 && send(fd, chunk, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            break;
    }
    CHECK(fcntl(fd, F_SETFL, flags) == 0);
}

/* Connects, handshakes, names the behaviour and plays our part: a connection
 * ready to be closed. Returns the SSL; `*fd` is its socket. */
static SSL *open_one(SSL_CTX *ctx, int port, enum behaviour b, int *fd)
{
    *fd = connect_loopback(port, WAIT_MS);
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl != NULL);
    CHECK(SSL_set_fd(ssl, *fd) == 1);
    if (SSL_connect(ssl) != 1)
        FAIL("handshake with 127.0.0.1:%d failed", port);
    char line[32];
    int len = snprintf(line, sizeof line, "%s\n", NAMES[b]);
    CHECK(SSL_write(ssl, line, len) == len);
    if (b == NOT_READING)
        fill_send_queue(ssl, *fd);
    else if (b == ALERT)
        forge_record(*fd);
    return ssl;
}

struct run {
    closenotify_closer *closer;
    struct conn *conns;
    unsigned long count;
    unsigned long reports;
    unsigned long process_calls;
    long long started_ms;
    unsigned budget_ms[BEHAVIOURS]; /* the longest a shutdown may take */
    unsigned slack_ms;
    long long late_ms; /* the most a report came past its budget (<= 0: never) */
    uint64_t max_elapsed_ms[BEHAVIOURS];
    unsigned long counted[BEHAVIOURS];
};

/* Takes every report waiting, and checks each. */
static void take_reports(struct run *run)
{
    closenotify_closed done[64];
    size_t n;
    do {
        n = 99;
        CHECK_RC(closenotify_closer_reports(run->closer, done, 64, &n), CLOSENOTIFY_OK);
        CHECK(n <= 64);
        for (size_t i = 0; i < n; i++) {
            uint64_t tag = done[i].tag;
            const closenotify_report *r = &done[i].report;
            if (tag >= run->count)
                FAIL("a report with tag %" PRIu64 ", which was never given", tag);
            struct conn *c = &run->conns[tag];
            if (c->reported)
                FAIL("connection %" PRIu64 " reported twice", tag);
            c->reported = 1;
            run->reports++;
            if (r->outcome != OUTCOMES[c->behaviour])
                FAIL("connection %" PRIu64 " (%s): outcome %s, expected %s (detail %s)", tag,
                     NAMES[c->behaviour], closenotify_outcome_name(r->outcome),
                     closenotify_outcome_name(OUTCOMES[c->behaviour]),
                     r->detail != NULL ? r->detail : "none");
            if (c->behaviour == SILENT)
                CHECK(r->stage == CLOSENOTIFY_STAGE_AWAIT_PEER);
            if (c->behaviour == NOT_READING)
                CHECK(r->stage == CLOSENOTIFY_STAGE_FLUSH);
            if (c->behaviour == ALERT)
                CHECK(strcmp(closenotify_alert_name(r->peer_alert), "bad_record_mac") == 0);
            long long late = (long long)r->elapsed_ms - run->budget_ms[c->behaviour];
            if (late > run->late_ms)
                run->late_ms = late;
            if (late > (long long)run->slack_ms)
                FAIL("connection %" PRIu64 " (%s) took %" PRIu64 " ms, budget %u ms", tag,
                     NAMES[c->behaviour], r->elapsed_ms, run->budget_ms[c->behaviour]);
            if (r->elapsed_ms > run->max_elapsed_ms[c->behaviour])
                run->max_elapsed_ms[c->behaviour] = r->elapsed_ms;
            run->counted[c->behaviour]++;
        }
    } while (n == 64);
}

/* The host's turn for the closer: poll its fd (`timeout_ms`: 0 between two
 * connections, the closer's own while waiting), process, take the reports. */
static void turn(struct run *run, int timeout_ms)
{
    struct pollfd pfd = {.fd = closenotify_closer_fd(run->closer), .events = POLLIN,
                         .revents = 0};
    if (poll(&pfd, 1, timeout_ms) < 0 && errno != EINTR)
        FAIL("poll: %s", strerror(errno));
    CHECK_RC(closenotify_closer_process(run->closer), CLOSENOTIFY_OK);
    run->process_calls++;
    take_reports(run);
}

/* Opens `n` SILENT connections and hands them over with tags from `tag`. */
static void add_silent(closenotify_closer *closer, SSL_CTX *ctx, int port, uint64_t tag,
                       int n, int *fds)
{
    for (int i = 0; i < n; i++) {
        SSL *ssl = open_one(ctx, port, SILENT, &fds[i]);
        CHECK_RC(closenotify_closer_add(closer, ssl, fds[i], NULL, tag + (uint64_t)i),
                 CLOSENOTIFY_OK);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: cn_closer PORT COUNT [--peer-timeout-ms N] [--flush-timeout-ms N]\n");
    return 2;
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > max)
        return 0;
    *out = v;
    return 1;
}

int main(int argc, char **argv)
{
    unsigned long port, count, peer_timeout = 200, flush_timeout = 200;
    if (argc < 3 || !parse_ulong(argv[1], 65535, &port) || !parse_ulong(argv[2], 1000000, &count))
        return usage();
    for (int i = 3; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--peer-timeout-ms") == 0 &&
            parse_ulong(argv[i + 1], 3600000, &peer_timeout))
            continue;
        if (strcmp(argv[i], "--flush-timeout-ms") == 0 &&
            parse_ulong(argv[i + 1], 3600000, &flush_timeout))
            continue;
        return usage();
    }
    /* A peer gone mid-handshake must not kill this program; the closer itself
     * never raises SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);

    closenotify_policy policy;
    closenotify_policy_init(&policy);
    policy.flush_timeout_ms = (uint32_t)flush_timeout;
    policy.peer_timeout_ms = (uint32_t)peer_timeout;

    struct run run;
    memset(&run, 0, sizeof run);
    CHECK_RC(closenotify_closer_new(&policy, &run.closer), CLOSENOTIFY_OK);
    run.count = count;
    run.conns = calloc(count > 0 ? count : 1, sizeof *run.conns);
    CHECK(run.conns != NULL);
    /* What each behaviour may take: the timeouts it waits out (a peer that
     * answers or hangs up does so within the peer timeout). The slack is what a
     * loaded machine (or valgrind) adds. */
    for (int b = 0; b < BEHAVIOURS; b++)
        run.budget_ms[b] = (unsigned)peer_timeout;
    run.budget_ms[SILENT] = (unsigned)(flush_timeout + peer_timeout);
    run.budget_ms[NOT_READING] = (unsigned)flush_timeout;
    run.slack_ms = getenv("CLOSENOTIFY_VALGRIND") != NULL ? 5000 : 1000;
    run.late_ms = -1000000;

    SSL_CTX *ctx[2] = {client_ctx(TLS1_2_VERSION), client_ctx(TLS1_3_VERSION)};
    int fds_before = open_fds();
    run.started_ms = now_ms();
    for (unsigned long i = 0; i < count; i++) {
        struct conn *c = &run.conns[i];
        c->behaviour = behaviour_of(i);
        SSL *ssl = open_one(ctx[(i / 2) % 2], (int)port, c->behaviour, &c->fd);
        if (i % 2 == 1) {
            int flags = fcntl(c->fd, F_GETFL);
            CHECK(flags != -1 && fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) == 0);
        }
        /* One call; the SSL and the fd are the closer's from here on. */
        CHECK_RC(closenotify_closer_add(run.closer, ssl, c->fd, NULL, i), CLOSENOTIFY_OK);
        turn(&run, 0);
    }
    /* The host loop, until every report is in. */
    long long deadline = now_ms() + (long long)flush_timeout + (long long)peer_timeout +
                         run.slack_ms + WAIT_MS;
    while (run.reports < count || closenotify_closer_timeout_ms(run.closer) >= 0) {
        int timeout_ms = closenotify_closer_timeout_ms(run.closer);
        CHECK(timeout_ms >= 0); /* reports are missing: something is pending */
        if (now_ms() > deadline)
            FAIL("%lu of %lu reports after the last deadline", run.reports, count);
        turn(&run, timeout_ms);
    }
    CHECK(closenotify_closer_pending(run.closer) == 0);
    /* Every connection reported once, and every fd is closed: as many fds open
     * as before the first connection. */
    for (unsigned long i = 0; i < count; i++)
        CHECK(run.conns[i].reported);
    CHECK(open_fds() == fds_before);
    for (int b = 0; b < BEHAVIOURS; b++)
        if (run.counted[b] > 0)
            printf("behaviour=%s count=%lu outcome=%s max_elapsed_ms=%" PRIu64 "\n", NAMES[b],
                   run.counted[b], closenotify_outcome_name(OUTCOMES[b]), run.max_elapsed_ms[b]);
    printf("reports=%lu late_ms=%lld process_calls=%lu seconds=%.1f\n", run.reports,
           run.late_ms, run.process_calls, (double)(now_ms() - run.started_ms) / 1000.0);

    /* closenotify_closer_finish: blocks until the pending shutdowns end (each
     * within its policy), then their reports are there. */
    int fds[3];
    add_silent(run.closer, ctx[1], (int)port, 1000001, 3, fds);
    long long before = now_ms();
    CHECK(closenotify_closer_pending(run.closer) == 3);
    CHECK_RC(closenotify_closer_finish(run.closer), CLOSENOTIFY_OK);
    CHECK(now_ms() - before >= (long long)peer_timeout);
    CHECK(closenotify_closer_pending(run.closer) == 0);
    closenotify_closed done[4];
    size_t n = 0;
    CHECK_RC(closenotify_closer_reports(run.closer, done, 4, &n), CLOSENOTIFY_OK);
    CHECK(n == 3);
    for (size_t i = 0; i < n; i++) {
        CHECK(done[i].tag == 1000001 + i);
        CHECK(done[i].report.outcome == CLOSENOTIFY_OUTCOME_TIMED_OUT);
    }
    CHECK(open_fds() == fds_before);

    /* closenotify_closer_free with shutdowns pending: aborted, their SSLs freed
     * and fds closed at once (valgrind checks the frees). */
    add_silent(run.closer, ctx[0], (int)port, 2000001, 2, fds);
    CHECK(closenotify_closer_pending(run.closer) == 2);
    closenotify_closer_free(run.closer);
    /* The closer's own fd too. */
    CHECK(open_fds() == fds_before - 1);
    printf("finish: ok\nfree with pending: ok\n");

    SSL_CTX_free(ctx[0]);
    SSL_CTX_free(ctx[1]);
    free(run.conns);
    return 0;
}
