/*
 * echo_client.c: a TLS echo client in plain C on the OpenSSL C API, ending its
 * connection with closenotify's step API.
 *
 *   echo_client HOST PORT MESSAGE [--tls12]
 *
 * It connects (non-blocking socket, poll()), completes the handshake, sends
 * MESSAGE, reads the echo until it has strlen(MESSAGE) bytes, writes the echo to
 * stdout, and then ends the connection correctly: our close_notify, a TCP
 * half-close, and the peer's close_notify, each bounded by a timeout, driven by
 * the same poll() loop an event-driven program already has. How the connection
 * ended goes to stderr as one line:
 *
 *   outcome=clean initiator=local stage=await_peer alert=-1(none) os_error=0
 *   discarded=0 elapsed_ms=0 resumable=1
 *
 * Exit status: 0 if the connection ended clean (or sent_only), 1 for any other
 * outcome or failure, 2 for a usage error.
 *
 * Build, with the library installed by cargo-c (`cargo cinstall`, see
 * docs/c-api.md):
 *
 *   cc -std=c11 -Wall -Wextra -Wpedantic -Werror examples/c/echo_client.c \
 *      -o echo_client $(pkg-config --cflags --libs closenotify)
 *
 * Every wait is bounded: a dead or silent server cannot hang this program.
 */

/* getaddrinfo(), poll(), clock_gettime() and friends are POSIX, not C11. */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <closenotify.h>

/* Bound of each phase before the shutdown: connect + handshake, and the echo. */
#define PHASE_TIMEOUT_MS 5000

/* ------------------------------------------------------------------------- */
/* Deadlines on the monotonic clock (wall-clock jumps must not stretch them). */
/* ------------------------------------------------------------------------- */

static struct timespec deadline_in(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec += 1;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* Milliseconds left until `deadline` (rounded up), 0 once it has passed. */
static int ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ns = (long long)(deadline->tv_sec - now.tv_sec) * 1000000000LL +
                   (deadline->tv_nsec - now.tv_nsec);
    if (ns <= 0)
        return 0;
    return (int)((ns + 999999LL) / 1000000LL);
}

/*
 * Waits until `fd` reports one of `events` or the deadline passes.
 * Returns 1 when ready (or in error: the next call on the socket will say
 * which), 0 on timeout, -1 if poll() itself failed.
 */
static int wait_fd(int fd, short events, const struct timespec *deadline)
{
    for (;;) {
        int left = ms_left(deadline);
        if (left == 0)
            return 0;
        struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
        int n = poll(&pfd, 1, left);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -1;
        /* n == 0: the deadline passed (checked above); EINTR: try again. */
    }
}

/*
 * After an OpenSSL I/O call on a non-blocking socket returned `ret` <= 0: waits
 * for what OpenSSL asked for (WANT_READ: readable, WANT_WRITE: writable).
 * Returns 1 when the call should be retried, 0 on a real error or timeout.
 */
static int ssl_wait(SSL *ssl, int ret, int fd, const struct timespec *deadline,
                    const char *what)
{
    int err = SSL_get_error(ssl, ret);
    short events;
    if (err == SSL_ERROR_WANT_READ)
        events = POLLIN;
    else if (err == SSL_ERROR_WANT_WRITE)
        events = POLLOUT;
    else {
        fprintf(stderr, "echo_client: %s failed (SSL_get_error %d)\n", what, err);
        ERR_print_errors_fp(stderr);
        return 0;
    }
    if (wait_fd(fd, events, deadline) != 1) {
        fprintf(stderr, "echo_client: %s timed out\n", what);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------- */
/* TCP: a non-blocking connect, bounded by a deadline.                        */
/* ------------------------------------------------------------------------- */

static int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Returns a connected non-blocking socket, or -1 (with a message on stderr). */
static int tcp_connect(const char *host, const char *port,
                       const struct timespec *deadline)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "echo_client: %s:%s: %s\n", host, port, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (set_nonblocking(fd) == 0) {
            int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
            if (rc == 0)
                break;
            if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 1) {
                /* Writable: the connect finished; SO_ERROR says how. */
                int soerr = 0;
                socklen_t len = sizeof soerr;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 &&
                    soerr == 0)
                    break;
                errno = soerr;
            }
        }
        fprintf(stderr, "echo_client: connect: %s\n", strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        /* Small request/response messages: do not let Nagle delay them. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* ------------------------------------------------------------------------- */
/* The shutdown: closenotify's step API in a poll() loop.                      */
/* ------------------------------------------------------------------------- */

/*
 * Ends the TLS connection on `ssl` / `fd` and writes how it ended to `report`.
 * Returns 0, or -1 if the API refused a call (a bug in this program, not a
 * misbehaving peer: that is an outcome in the report).
 *
 * An event loop does the same with epoll/kqueue/libuv: register `fd` for what
 * `wait` says, arm a timer for `timeout_ms`, and call closenotify_shutdown_step
 * again when either fires. Here the loop owns nothing else, so plain poll()
 * does.
 */
static int shutdown_connection(SSL *ssl, int fd, closenotify_report *report)
{
    /* The defaults (bidirectional, 3 s flush and peer timeouts, half-close);
     * change fields after closenotify_policy_init, never build one from
     * scratch, so that fields added later get their defaults. */
    closenotify_policy policy;
    closenotify_policy_init(&policy);

    closenotify_shutdown *sd = NULL;
    closenotify_result rc = closenotify_shutdown_new(ssl, fd, &policy, &sd);
    if (rc != CLOSENOTIFY_OK) {
        char msg[256];
        closenotify_last_error(msg, sizeof msg);
        fprintf(stderr, "echo_client: closenotify_shutdown_new: %s: %s\n",
                closenotify_result_name(rc), msg);
        return -1;
    }

    for (;;) {
        closenotify_wait wait;
        int timeout_ms;
        /* Makes progress (sends close_notify, reads the peer's...) and says
         * what to wait for next, and for how long at most. */
        rc = closenotify_shutdown_step(sd, &wait, &timeout_ms);
        if (rc != CLOSENOTIFY_OK)
            break;
        if (wait == CLOSENOTIFY_WAIT_DONE)
            break;

        struct pollfd pfd = {.fd = fd, .events = 0, .revents = 0};
        if (wait == CLOSENOTIFY_WAIT_READ)
            pfd.events = POLLIN;
        else if (wait == CLOSENOTIFY_WAIT_WRITE)
            pfd.events = POLLOUT;
        /* CLOSENOTIFY_WAIT_TIMER (only with a linger timeout): just sleep;
         * poll() with no fds does that. */
        int n = poll(&pfd, wait == CLOSENOTIFY_WAIT_TIMER ? 0 : 1, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("echo_client: poll");
            break; /* the report below is still valid once step said DONE */
        }
        /* Ready, timed out or interrupted: in every case, step again. The
         * library checks its own deadlines; an early wake-up costs nothing. */
    }

    if (rc == CLOSENOTIFY_OK)
        rc = closenotify_shutdown_report(sd, report);
    if (rc != CLOSENOTIFY_OK) {
        char msg[256];
        closenotify_last_error(msg, sizeof msg);
        fprintf(stderr, "echo_client: closenotify: %s: %s\n",
                closenotify_result_name(rc), msg);
    }
    /* Frees the shutdown object only: the SSL* and the socket stay ours. */
    closenotify_shutdown_free(sd);
    return rc == CLOSENOTIFY_OK ? 0 : -1;
}

static void print_report(const closenotify_report *r)
{
    fprintf(stderr,
            "outcome=%s initiator=%s stage=%s alert=%d(%s) os_error=%d "
            "discarded=%" PRIu64 " elapsed_ms=%" PRIu64 " resumable=%d\n",
            closenotify_outcome_name(r->outcome),
            r->initiator == CLOSENOTIFY_INITIATOR_PEER ? "peer" : "local",
            closenotify_stage_name(r->stage), r->alert,
            closenotify_alert_name(r->alert), r->os_error, r->discarded_bytes,
            r->elapsed_ms, r->session_resumable ? 1 : 0);
}

/* ------------------------------------------------------------------------- */

static int usage(void)
{
    fprintf(stderr, "usage: echo_client HOST PORT MESSAGE [--tls12]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5)
        return usage();
    int tls12 = 0;
    if (argc == 5) {
        if (strcmp(argv[4], "--tls12") != 0)
            return usage();
        tls12 = 1;
    }
    const char *host = argv[1], *port = argv[2], *message = argv[3];
    size_t len = strlen(message);

    /*
     * closenotify never raises SIGPIPE, but this program's own SSL_write can:
     * OpenSSL's socket BIO writes with write(), and a write to a reset
     * connection kills a process whose SIGPIPE has the default action.
     */
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    int fd = -1;
    char *echo = NULL;

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL ||
        !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        (tls12 && !SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION))) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    /*
     * NO CERTIFICATE VERIFICATION: the test servers use self-signed
     * certificates, so this example accepts any. A real client MUST verify:
     *   SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
     *   SSL_CTX_set_default_verify_paths(ctx);   (or _load_verify_locations)
     *   SSL_set1_host(ssl, host);                 (check the name too)
     */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

    struct timespec deadline = deadline_in(PHASE_TIMEOUT_MS);
    fd = tcp_connect(host, port, &deadline);
    if (fd < 0)
        goto out;

    ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    /* SNI, for hosts given by name (RFC 6066 forbids IP literals there). */
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1)
        SSL_set_tlsext_host_name(ssl, host);

    /* The handshake, non-blocking: retry after the readiness OpenSSL asks for. */
    for (;;) {
        int ret = SSL_connect(ssl);
        if (ret == 1)
            break;
        if (!ssl_wait(ssl, ret, fd, &deadline, "handshake"))
            goto out; /* no usable TLS connection: nothing to shut down */
    }

    /*
     * The exchange. From here on, whatever goes wrong, the connection is still
     * ended through closenotify: its report says how the peer behaved.
     */
    int exchange_ok = 0;
    echo = malloc(len + 1);
    if (echo == NULL) {
        perror("echo_client: malloc");
        goto shutdown;
    }
    deadline = deadline_in(PHASE_TIMEOUT_MS);
    size_t sent = 0, got = 0;
    while (sent < len) {
        /* SSL_write sends all of it or asks to be retried with the same
         * arguments (no SSL_MODE_ENABLE_PARTIAL_WRITE). */
        int ret = SSL_write(ssl, message + sent, (int)(len - sent));
        if (ret > 0)
            sent += (size_t)ret;
        else if (!ssl_wait(ssl, ret, fd, &deadline, "write"))
            goto shutdown;
    }
    while (got < len) {
        int ret = SSL_read(ssl, echo + got, (int)(len - got));
        if (ret > 0)
            got += (size_t)ret;
        else if (!ssl_wait(ssl, ret, fd, &deadline, "read"))
            goto shutdown; /* EOF, close_notify or an alert before the echo */
    }
    fwrite(echo, 1, got, stdout);
    fflush(stdout);
    exchange_ok = 1;

shutdown:;
    closenotify_report report;
    if (shutdown_connection(ssl, fd, &report) == 0) {
        print_report(&report);
        if (exchange_ok && (report.outcome == CLOSENOTIFY_OUTCOME_CLEAN ||
                            report.outcome == CLOSENOTIFY_OUTCOME_SENT_ONLY))
            status = 0;
    }

out:
    /*
     * Ours to free and close: closenotify never does either. If a timeout made
     * the policy arm SO_LINGER {1, 0}, this close() sends an RST, freeing the
     * kernel's state for a peer that stopped reading.
     */
    free(echo);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    return status;
}
