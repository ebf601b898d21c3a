/*
 * echo_server.c: a TLS echo server in plain C on the OpenSSL C API. One thread,
 * one poll() loop over the listening socket, the connections and a
 * closenotify_closer: a connection that is done is handed to the closer with
 * one call and forgotten; the closer's fd sits in the same poll() set, and its
 * reports come back with the connection's tag.
 *
 *   echo_server --cert FILE --key FILE [--listen ADDR:PORT]
 *               [--flush-timeout-ms N] [--peer-timeout-ms N]
 *               [--idle-timeout-ms N] [--max-conns N] [--tls12]
 *
 *   --listen ADDR:PORT    where to listen (default 127.0.0.1:4433); port 0 takes
 *                         any free port; IPv6 as [::1]:PORT
 *   --cert, --key FILE    certificate chain and private key, PEM
 *   --flush-timeout-ms N  the policy's bound for getting close_notify (and any
 *                         echo still unsent) into the kernel; 3000
 *   --peer-timeout-ms N   the policy's bound for the client's close_notify; 3000
 *   --idle-timeout-ms N   close after N ms without data from the client; a
 *                         handshake may not pause longer either (default: off;
 *                         a handshake lasts 10 s at most)
 *   --max-conns N         accept N connections, exit 0 once all N are reported
 *   --tls12               at most TLS 1.2 (default: TLS 1.2 or 1.3)
 *
 * Output, line-buffered: `listening ADDR:PORT`, then one line per connection
 * when its report comes back, as key=value pairs (here wrapped):
 *
 *   conn=3 peer=127.0.0.1:50412 outcome=clean initiator=peer stage=half_close
 *   alert=-1 alert_name=none os_error=0 close_notify_sent=1
 *   close_notify_received=1 half_closed=1 session_resumable=1 discarded_bytes=0
 *   elapsed_ms=0 ssl_calls=1 tls_version=0x0304 detail=none
 *   trigger=close_notify error=none closing_ms=0 bytes_in=11 bytes_out=11
 *
 * `outcome` to `detail` are closenotify's report (`detail` with spaces as `_`).
 * The rest is the server's: `trigger`, why it began closing (`close_notify`,
 * `idle`, or `error`: its own read or write failed); `error`, what its own I/O
 * saw (`none`, `eof`, `os:ERRNO`, `tls:REASON`, `timeout`); `closing_ms`, from
 * that decision to the report; `bytes_in`/`bytes_out`, application bytes read
 * and echoed (an echo handed over counts once the close_notify behind it went
 * out). A failed handshake never reaches closenotify: its line is `conn=N
 * peer=ADDR outcome=handshake_failed trigger=handshake error=...`
 * (`outcome=setup_failed` and `outcome=api_error` would be bugs).
 *
 * Exit status: 0 after --max-conns connections were reported, 1 for a setup
 * failure (certificate, address), 2 for a usage error.
 *
 * Build, with the library installed by cargo-c (docs/c-api.md):
 *
 *   cc -std=c11 -Wall -Wextra -Wpedantic -Werror examples/c/echo_server.c \
 *      -o echo_server $(pkg-config --cflags --libs closenotify)
 *
 * Deadlines: a connection being served has one at a time (its handshake's or
 * its idle timeout's); the closer keeps those of the connections it closes.
 * poll() waits until the earliest of all, rounded up to whole milliseconds
 * (closenotify_closer_timeout_ms is rounded up too), so it never wakes early.
 * Data that arrived counts even past a deadline.
 *
 * Handing over: the closer owns the SSL* and the fd from then on, and the
 * server keeps a small struct closing (its address is the tag) instead of the
 * connection and its 16 KB buffer. What the server could not finish goes with
 * the connection, on a shutdown object (docs/c-api.md, "Handing over a
 * connection"): a failed SSL_read or SSL_write
 * (closenotify_shutdown_set_error: nothing is sent, the report names the
 * failure), or the echo a client stopped reading (closenotify_shutdown_set_unsent:
 * sent before close_notify within the flush timeout).
 *
 * SIGPIPE: closenotify never raises it, but the echo's own SSL_write would on a
 * reset connection (OpenSSL's socket BIO uses write()), so the server ignores
 * it. Every wait is bounded, and on exit everything is freed (valgrind clean).
 */

/* getaddrinfo(), poll(), clock_gettime() and friends are POSIX, not C11. */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <closenotify.h>

/* Bound of a handshake without --idle-timeout-ms. */
#define HANDSHAKE_TIMEOUT_MS 10000
/* The policy's largest timeout. */
#define MAX_TIMEOUT_MS 3600000UL
/* The echo buffer: one TLS record's plaintext at most, so that an SSL_read
 * leaves nothing of a record buffered inside OpenSSL. */
#define ECHO_BUF 16384
/* Read/echo rounds per wake-up: a client that streams fast cannot starve the
 * others. */
#define ROUNDS 16

#define NO_DEADLINE INT64_MAX

/* pfds[0] is the listener, pfds[1] the closer, then the connections. */
#define FIXED 2

static const char *const USAGE =
    "usage: echo_server --cert FILE --key FILE [--listen ADDR:PORT]\n"
    "                   [--flush-timeout-ms N] [--peer-timeout-ms N]\n"
    "                   [--idle-timeout-ms N] [--max-conns N] [--tls12]\n";

/* ---- The monotonic clock, in ns: wall-clock jumps move no deadline ---- */

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t ms_to_ns(uint64_t ms)
{
    return (int64_t)ms * 1000000;
}

/* Whole milliseconds from `now` to `deadline`, rounded up; 0 once passed. */
static int64_t ms_until(int64_t deadline, int64_t now)
{
    if (deadline <= now)
        return 0;
    return (deadline - now + 999999) / 1000000;
}

/* ---- Connections ---- */

enum phase {
    PH_HANDSHAKE, /* SSL_accept until it succeeds */
    PH_ECHO,      /* read, write it back */
};

enum trigger { TR_NONE, TR_CLOSE_NOTIFY, TR_IDLE, TR_ERROR };
static const char *const TRIGGER[] = {"none", "close_notify", "idle", "error"};

/* What a connection's report line adds to the report: all the server keeps of
 * a connection the closer has (its address is the tag). */
struct closing {
    unsigned long id;
    char peer[INET6_ADDRSTRLEN + 8];
    enum trigger trigger;
    char error[80];
    int64_t start;
    /* Echo handed to closenotify as unsent: counted as echoed once its
     * close_notify, which follows it, is out. */
    size_t handed_over;
    uint64_t bytes_in, bytes_out;
};

struct conn {
    struct closing info;
    int fd;
    SSL *ssl;
    enum phase phase;
    short events;     /* what poll() watches: POLLIN, POLLOUT, 0 for nothing */
    short revents;    /* what the last poll() reported */
    int again;        /* work left: service it without waiting */
    int dead;         /* handed over or closed: removed after this round */
    int64_t deadline; /* the one deadline of the current phase */
    int64_t handshake_limit;
    int64_t last_read;
    /* The failed SSL call behind `error`: SSL_get_error's answer and the errno
     * right after it, for closenotify_shutdown_set_error. */
    int ssl_error, sys_errno;
    /* Echo not yet written: buf[sent..len). A write that returned WANT_WRITE is
     * retried with exactly the same pointer and length, as OpenSSL requires. */
    size_t len, sent;
    unsigned char buf[ECHO_BUF];
};

struct server {
    SSL_CTX *ctx;
    closenotify_closer *closer;
    int listener; /* -1 once --max-conns connections were accepted */
    int accept_paused;
    closenotify_policy policy;
    int64_t idle_ns, handshake_ns; /* idle_ns 0: no idle timeout */
    unsigned long max_conns, accepted;
    struct conn **conns;
    size_t nconns, cap;
    struct pollfd *pfds;
};

/* `s` with every byte outside [A-Za-z0-9._:-] as `_`: one key=value token. */
static void token(const char *s, char *out, size_t size)
{
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[i] = (isalnum(ch) || ch == '.' || ch == ':' || ch == '-') ? (char)ch : '_';
    }
    out[i] = '\0';
}

/* A failed SSL call (SSL_get_error's `err`, the errno right after it, the
 * error queue, left for closenotify to read) as one token in c->info.error. */
static void describe_error(struct conn *c, int err, int saved_errno)
{
    c->ssl_error = err;
    c->sys_errno = saved_errno;
    unsigned long e = ERR_peek_last_error();
    if (e == 0) {
        if (err == SSL_ERROR_SYSCALL && saved_errno != 0)
            snprintf(c->info.error, sizeof c->info.error, "os:%d", saved_errno);
        else if (err == SSL_ERROR_SYSCALL)
            snprintf(c->info.error, sizeof c->info.error, "eof"); /* OpenSSL 1.1.1's EOF */
        else
            snprintf(c->info.error, sizeof c->info.error, "ssl_error:%d", err);
    }
#ifdef ERR_SYSTEM_ERROR
    else if (ERR_SYSTEM_ERROR(e))
        snprintf(c->info.error, sizeof c->info.error, "os:%d", (int)(e & ERR_SYSTEM_MASK));
#endif
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
    else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
             ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        snprintf(c->info.error, sizeof c->info.error, "eof"); /* OpenSSL 3's EOF */
#endif
    else {
        const char *reason = ERR_reason_error_string(e);
        char tok[64];
        token(reason != NULL ? reason : "unknown", tok, sizeof tok);
        snprintf(c->info.error, sizeof c->info.error, "tls:%s", tok);
    }
}

/* After an SSL call returned `ret` <= 0 with `err`: WANT_READ or WANT_WRITE
 * set what poll() waits for and return 1; anything else returns 0. */
static int wants(struct conn *c, int err)
{
    if (err == SSL_ERROR_WANT_READ) {
        c->events = POLLIN;
        return 1;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        c->events = POLLOUT;
        return 1;
    }
    return 0;
}

/* What the last closenotify call refused, on stderr. */
static void say_error(const char *call)
{
    char msg[256];
    closenotify_last_error(msg, sizeof msg);
    fprintf(stderr, "echo_server: %s: %s\n", call, msg);
}

/* SSL_free and close(), for a connection the closer never had. */
static void conn_close(struct server *s, struct conn *c)
{
    SSL_free(c->ssl); /* SSL_set_fd's BIO does not close the fd */
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
    c->dead = 1;
    s->accept_paused = 0; /* a descriptor is free again */
}

static void handshake_failed(struct server *s, struct conn *c)
{
    ERR_clear_error();
    conn_close(s, c);
    printf("conn=%lu peer=%s outcome=handshake_failed trigger=handshake error=%s "
           "closing_ms=0 bytes_in=0 bytes_out=0\n",
           c->info.id, c->info.peer, c->info.error);
}

/* A call of the API refused (a bug here, not a misbehaving client; or the
 * closer could not watch the fd): the connection, still the server's, is
 * closed and reported all the same. */
static void api_failed(struct server *s, struct conn *c, const char *call,
                       closenotify_result rc)
{
    char what[96];
    snprintf(what, sizeof what, "conn %lu: %s: %s", c->info.id, call,
             closenotify_result_name(rc));
    say_error(what);
    ERR_clear_error(); /* a failure not handed over */
    conn_close(s, c);
    printf("conn=%lu peer=%s outcome=api_error trigger=%s error=%s "
           "closing_ms=0 bytes_in=%" PRIu64 " bytes_out=%" PRIu64 "\n",
           c->info.id, c->info.peer, TRIGGER[c->info.trigger], closenotify_result_name(rc),
           c->info.bytes_in, c->info.bytes_out);
}

/* ---- Closing: handed to the closer, reported when it is done ---- */

/* A report from the closer: the line of its connection. */
static void reported(const closenotify_closed *done)
{
    struct closing *k = (struct closing *)(uintptr_t)done->tag;
    const closenotify_report *r = &done->report;
    int64_t closing_ms = (now_ns() - k->start) / 1000000;
    /* The unsent echo went out before close_notify did. */
    if (r->close_notify_sent)
        k->bytes_out += k->handed_over;
    char detail[128];
    token(r->detail != NULL ? r->detail : "none", detail, sizeof detail);
    printf("conn=%lu peer=%s outcome=%s initiator=%s stage=%s alert=%d alert_name=%s "
           "os_error=%d close_notify_sent=%d close_notify_received=%d half_closed=%d "
           "session_resumable=%d discarded_bytes=%" PRIu64 " elapsed_ms=%" PRIu64
           " ssl_calls=%" PRIu32 " tls_version=0x%04x detail=%s trigger=%s error=%s "
           "closing_ms=%" PRId64 " bytes_in=%" PRIu64 " bytes_out=%" PRIu64 "\n",
           k->id, k->peer, closenotify_outcome_name(r->outcome),
           r->initiator == CLOSENOTIFY_INITIATOR_PEER ? "peer" : "local",
           closenotify_stage_name(r->stage), r->alert, closenotify_alert_name(r->alert),
           r->os_error, r->close_notify_sent ? 1 : 0, r->close_notify_received ? 1 : 0,
           r->half_closed ? 1 : 0, r->session_resumable ? 1 : 0, r->discarded_bytes,
           r->elapsed_ms, r->ssl_calls, (unsigned)r->tls_version, detail,
           TRIGGER[k->trigger], k->error, closing_ms, k->bytes_in, k->bytes_out);
    free(k);
}

/* The closer's turn: handles what its fd reported and its deadlines, then
 * prints the reports of the connections that ended. */
static int process(struct server *s)
{
    closenotify_result rc = closenotify_closer_process(s->closer);
    if (rc != CLOSENOTIFY_OK) {
        say_error("closenotify_closer_process");
        return -1;
    }
    closenotify_closed done[64];
    size_t n;
    do {
        rc = closenotify_closer_reports(s->closer, done, 64, &n);
        if (rc != CLOSENOTIFY_OK)
            return -1;
        for (size_t i = 0; i < n; i++)
            reported(&done[i]);
        if (n > 0)
            s->accept_paused = 0; /* descriptors are free again (or about to be) */
    } while (n == 64);
    return 0;
}

/* Hands the connection to the closer (see "Handing over" at the top). The
 * unsent echo is buf[sent..len): the bytes of the write that returned
 * WANT_WRITE, which OpenSSL requires to be retried as they were. */
static void begin_close(struct server *s, struct conn *c, enum trigger why)
{
    c->info.trigger = why;
    c->info.start = now_ns(); /* not the loop's `now`: others ran since */
    struct closing *k = malloc(sizeof *k);
    if (k == NULL) {
        api_failed(s, c, "malloc", CLOSENOTIFY_ERR_SYSTEM);
        return;
    }
    uint64_t tag = (uint64_t)(uintptr_t)k;
    closenotify_result rc;
    if (why == TR_ERROR || c->sent < c->len) {
        closenotify_shutdown *sd = NULL;
        rc = closenotify_shutdown_new(c->ssl, c->fd, &s->policy, &sd);
        if (rc == CLOSENOTIFY_OK && why == TR_ERROR)
            rc = closenotify_shutdown_set_error(sd, c->ssl_error, c->sys_errno);
        else if (rc == CLOSENOTIFY_OK)
            rc = closenotify_shutdown_set_unsent(sd, c->buf + c->sent, c->len - c->sent);
        if (rc == CLOSENOTIFY_OK)
            rc = closenotify_closer_add_shutdown(s->closer, sd, tag);
        if (rc != CLOSENOTIFY_OK)
            closenotify_shutdown_free(sd); /* NULL is fine; still ours on failure */
        else if (why != TR_ERROR)
            c->info.handed_over = c->len - c->sent;
    } else {
        rc = closenotify_closer_add(s->closer, c->ssl, c->fd, NULL, tag);
    }
    if (rc != CLOSENOTIFY_OK) {
        free(k);
        api_failed(s, c, "handing over", rc);
        return;
    }
    *k = c->info;
    /* The closer's now: the connection leaves the server's array. */
    c->ssl = NULL;
    c->fd = -1;
    c->dead = 1;
}

/* ---- Handshake and echo ---- */

/* The pending echo, written until done (1), blocked (0: c->events set), or
 * failed (-1: c->info.error set). */
static int write_pending(struct conn *c)
{
    while (c->sent < c->len) {
        ERR_clear_error();
        errno = 0;
        int ret = SSL_write(c->ssl, c->buf + c->sent, (int)(c->len - c->sent));
        int saved = errno;
        if (ret > 0) {
            c->sent += (size_t)ret;
            c->info.bytes_out += (uint64_t)ret;
            continue;
        }
        int err = SSL_get_error(c->ssl, ret);
        if (wants(c, err))
            return 0;
        describe_error(c, err, saved);
        return -1;
    }
    c->sent = c->len = 0;
    return 1;
}

static void echo(struct server *s, struct conn *c)
{
    int round = 0;
    for (; round < ROUNDS; round++) {
        int w = write_pending(c);
        if (w < 0) {
            begin_close(s, c, TR_ERROR);
            return;
        }
        if (w == 0)
            break; /* the client does not read fast enough: stop reading too */
        ERR_clear_error();
        errno = 0;
        int ret = SSL_read(c->ssl, c->buf, (int)sizeof c->buf);
        int saved = errno;
        if (ret > 0) {
            c->len = (size_t)ret;
            c->sent = 0;
            c->info.bytes_in += (uint64_t)ret;
            c->last_read = now_ns();
            continue;
        }
        int err = SSL_get_error(c->ssl, ret);
        if (err == SSL_ERROR_ZERO_RETURN) {
            begin_close(s, c, TR_CLOSE_NOTIFY); /* nothing left to echo */
            return;
        }
        if (wants(c, err))
            break;
        describe_error(c, err, saved);
        begin_close(s, c, TR_ERROR);
        return;
    }
    /* ROUNDS spent with data flowing: come back at once, after the others. */
    if (round == ROUNDS)
        c->again = 1;
    c->deadline = s->idle_ns > 0 ? c->last_read + s->idle_ns : NO_DEADLINE;
}

static void handshake(struct server *s, struct conn *c)
{
    ERR_clear_error();
    errno = 0;
    int ret = SSL_accept(c->ssl);
    int saved = errno;
    if (ret == 1) {
        c->phase = PH_ECHO;
        c->last_read = now_ns();
        echo(s, c);
        return;
    }
    int err = SSL_get_error(c->ssl, ret);
    if (wants(c, err)) {
        /* The client has heard from us (or has yet to speak): it gets the idle
         * timeout from now to answer, within the handshake's overall bound. */
        int64_t due = now_ns() + s->handshake_ns;
        c->deadline = due < c->handshake_limit ? due : c->handshake_limit;
        return;
    }
    describe_error(c, err, saved);
    handshake_failed(s, c);
}

/* What poll() reported, then the deadline. */
static void service(struct server *s, struct conn *c, int64_t now)
{
    if (c->dead)
        return;
    int io = c->again || c->revents != 0;
    if (!io && now < c->deadline)
        return;
    c->again = 0;
    if (io) {
        switch (c->phase) {
        case PH_HANDSHAKE:
            handshake(s, c);
            break;
        case PH_ECHO:
            echo(s, c);
            break;
        }
        /* Progress moved the deadline (or ended the connection). */
        if (c->dead || now < c->deadline)
            return;
    }
    switch (c->phase) {
    case PH_HANDSHAKE:
        snprintf(c->info.error, sizeof c->info.error, "timeout");
        handshake_failed(s, c);
        break;
    case PH_ECHO:
        begin_close(s, c, TR_IDLE);
        break;
    }
}

/* ---- Listening and accepting ---- */

static int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* "HOST:PORT", or "[HOST]:PORT" for IPv6. */
static void format_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t size)
{
    char host[INET6_ADDRSTRLEN], port[8];
    if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, size, "unknown");
        return;
    }
    snprintf(out, size, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

static int grow(struct server *s)
{
    if (s->nconns < s->cap)
        return 0;
    size_t cap = s->cap == 0 ? 16 : s->cap * 2;
    struct conn **conns = realloc(s->conns, cap * sizeof *conns);
    if (conns == NULL)
        return -1;
    s->conns = conns;
    struct pollfd *pfds = realloc(s->pfds, (cap + FIXED) * sizeof *pfds);
    if (pfds == NULL)
        return -1;
    s->pfds = pfds;
    s->cap = cap;
    return 0;
}

static void open_conn(struct server *s, int fd, const struct sockaddr *sa, socklen_t len)
{
    unsigned long id = ++s->accepted;
    if (s->max_conns > 0 && s->accepted == s->max_conns) {
        close(s->listener); /* the last one: stop listening */
        s->listener = -1;
    }
    struct conn *c = NULL;
    SSL *ssl = NULL;
    int one = 1;
    if (set_nonblocking(fd) != 0 || grow(s) != 0 || (c = calloc(1, sizeof *c)) == NULL ||
        (ssl = SSL_new(s->ctx)) == NULL || SSL_set_fd(ssl, fd) != 1) {
        char peer[INET6_ADDRSTRLEN + 8];
        format_addr(sa, len, peer, sizeof peer);
        fprintf(stderr, "echo_server: conn %lu: cannot set the connection up\n", id);
        ERR_print_errors_fp(stderr);
        SSL_free(ssl);
        free(c);
        close(fd);
        printf("conn=%lu peer=%s outcome=setup_failed\n", id, peer);
        return;
    }
    /* An echo should not wait for Nagle. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->info.id = id;
    c->fd = fd;
    c->ssl = ssl;
    format_addr(sa, len, c->info.peer, sizeof c->info.peer);
    c->phase = PH_HANDSHAKE;
    c->events = POLLIN;
    c->handshake_limit = now_ns() + ms_to_ns(HANDSHAKE_TIMEOUT_MS);
    c->deadline = c->handshake_limit;
    snprintf(c->info.error, sizeof c->info.error, "none");
    s->conns[s->nconns++] = c;
    /* The ClientHello is usually there already. */
    c->again = 1;
}

static void accept_all(struct server *s)
{
    while (s->listener >= 0 && !s->accept_paused) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept(s->listener, (struct sockaddr *)&ss, &len);
        if (fd >= 0) {
            open_conn(s, fd, (struct sockaddr *)&ss, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            /* EMFILE and friends: the listener stays readable, so stop
             * watching it until a connection closes, rather than spin. */
            perror("echo_server: accept");
            s->accept_paused = 1;
        }
        return;
    }
}

/* A non-blocking listening socket on `spec` (ADDR:PORT); -1 if it cannot
 * listen there, -2 if `spec` is not an address (a usage error). */
static int listen_on(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof host) {
        fprintf(stderr, "echo_server: --listen %s: expected ADDR:PORT\n", spec);
        return -2;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *h = host;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(h, colon + 1, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "echo_server: --listen %s: %s\n", spec, gai_strerror(gai));
        return -2;
    }
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0 ||
        set_nonblocking(fd) != 0) {
        fprintf(stderr, "echo_server: cannot listen on %s: %s\n", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* ---- The loop ---- */

/* Milliseconds until the earliest deadline (the closer's included), rounded
 * up; -1 for none. */
static int poll_timeout(const struct server *s, int64_t now)
{
    int closer_ms = closenotify_closer_timeout_ms(s->closer);
    int64_t earliest = NO_DEADLINE;
    for (size_t i = 0; i < s->nconns; i++) {
        if (s->conns[i]->again)
            return 0;
        if (s->conns[i]->deadline < earliest)
            earliest = s->conns[i]->deadline;
    }
    int64_t ms = earliest == NO_DEADLINE ? -1 : ms_until(earliest, now);
    if (closer_ms >= 0 && (ms < 0 || closer_ms < ms))
        ms = closer_ms;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

static int run(struct server *s)
{
    /* Until --max-conns connections were accepted and all are reported. */
    while (s->listener >= 0 || s->nconns > 0 || closenotify_closer_pending(s->closer) > 0) {
        int watch_listener = s->listener >= 0 && !s->accept_paused;
        s->pfds[0].fd = watch_listener ? s->listener : -1;
        s->pfds[0].events = POLLIN;
        s->pfds[0].revents = 0;
        s->pfds[1].fd = closenotify_closer_fd(s->closer);
        s->pfds[1].events = POLLIN;
        s->pfds[1].revents = 0;
        for (size_t i = 0; i < s->nconns; i++) {
            struct conn *c = s->conns[i];
            /* A negative fd is skipped by poll(). */
            s->pfds[i + FIXED].fd = c->events != 0 ? c->fd : -1;
            s->pfds[i + FIXED].events = c->events;
            s->pfds[i + FIXED].revents = 0;
        }
        int n = poll(s->pfds, (nfds_t)s->nconns + FIXED, poll_timeout(s, now_ns()));
        if (n < 0 && errno != EINTR) {
            perror("echo_server: poll");
            return 1;
        }
        int64_t now = now_ns();
        size_t count = s->nconns;
        for (size_t i = 0; i < count; i++)
            s->conns[i]->revents = n > 0 ? s->pfds[i + FIXED].revents : 0;
        int listener_ready = n > 0 && s->pfds[0].revents != 0;

        for (size_t i = 0; i < count; i++)
            service(s, s->conns[i], now);
        /* Connections handed over or closed leave the array. */
        size_t kept = 0;
        for (size_t i = 0; i < count; i++) {
            if (s->conns[i]->dead)
                free(s->conns[i]);
            else
                s->conns[kept++] = s->conns[i];
        }
        s->nconns = kept;
        /* The closer, when its fd says so or its deadline has come (after the
         * connections: one handed over just now may be done already). */
        if ((n > 0 && s->pfds[1].revents != 0) || closenotify_closer_timeout_ms(s->closer) == 0)
            if (process(s) != 0)
                return 1;
        if (listener_ready)
            accept_all(s);
    }
    return 0;
}

/* ------------------------------------------------------------------------- */

static int usage(const char *why)
{
    if (why != NULL)
        fprintf(stderr, "echo_server: %s\n", why);
    fputs(USAGE, stderr);
    return 2;
}

/* A whole decimal number in [min, max]. */
static int parse_num(const char *s, unsigned long min, unsigned long max,
                     unsigned long *out)
{
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    const char *listen_spec = "127.0.0.1:4433", *cert = NULL, *key = NULL;
    unsigned long flush_ms = 3000, peer_ms = 3000, idle_ms = 0, max_conns = 0;
    int tls12 = 0;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--tls12") == 0) {
            tls12 = 1;
            continue;
        }
        const char *val = i + 1 < argc ? argv[++i] : NULL;
        int bad = val == NULL;
        if (strcmp(opt, "--listen") == 0)
            listen_spec = val;
        else if (strcmp(opt, "--cert") == 0)
            cert = val;
        else if (strcmp(opt, "--key") == 0)
            key = val;
        else if (strcmp(opt, "--flush-timeout-ms") == 0)
            bad = bad || parse_num(val, 1, MAX_TIMEOUT_MS, &flush_ms) != 0;
        else if (strcmp(opt, "--peer-timeout-ms") == 0)
            bad = bad || parse_num(val, 1, MAX_TIMEOUT_MS, &peer_ms) != 0;
        else if (strcmp(opt, "--idle-timeout-ms") == 0)
            bad = bad || parse_num(val, 1, MAX_TIMEOUT_MS, &idle_ms) != 0;
        else if (strcmp(opt, "--max-conns") == 0)
            bad = bad || parse_num(val, 1, ULONG_MAX, &max_conns) != 0;
        else {
            fprintf(stderr, "echo_server: unknown option %s\n", opt);
            return usage(NULL);
        }
        if (bad) {
            fprintf(stderr, "echo_server: %s: %s\n", opt,
                    val == NULL ? "missing value" : "invalid value");
            return usage(NULL);
        }
    }
    if (cert == NULL || key == NULL)
        return usage("--cert and --key are required");

    /* See the header: the echo's own SSL_write must not kill the server. */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0); /* a line per event, even into a pipe */

    struct server srv;
    memset(&srv, 0, sizeof srv);
    struct server *s = &srv;
    s->listener = -1;
    int status = 1;

    /* The policy: the defaults (bidirectional, half-close, reset when the
     * flush times out) with the given timeouts. */
    closenotify_policy_init(&s->policy);
    s->policy.flush_timeout_ms = (uint32_t)flush_ms;
    s->policy.peer_timeout_ms = (uint32_t)peer_ms;
    s->idle_ns = ms_to_ns(idle_ms);
    s->handshake_ns = ms_to_ns(idle_ms > 0 && idle_ms < HANDSHAKE_TIMEOUT_MS
                                   ? idle_ms
                                   : HANDSHAKE_TIMEOUT_MS);
    s->max_conns = max_conns;
    /* The closer of this thread, with the policy for every connection. */
    closenotify_result rc = closenotify_closer_new(&s->policy, &s->closer);
    if (rc != CLOSENOTIFY_OK) {
        say_error("closenotify_closer_new");
        goto out;
    }

    s->listener = listen_on(listen_spec);
    if (s->listener == -2)
        status = usage(NULL);
    if (s->listener < 0)
        goto out;
    s->ctx = SSL_CTX_new(TLS_server_method());
    if (s->ctx == NULL || !SSL_CTX_set_min_proto_version(s->ctx, TLS1_2_VERSION) ||
        (tls12 && !SSL_CTX_set_max_proto_version(s->ctx, TLS1_2_VERSION))) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    if (SSL_CTX_use_certificate_chain_file(s->ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(s->ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(s->ctx) != 1) {
        fprintf(stderr, "echo_server: cannot use certificate %s and key %s\n", cert, key);
        ERR_print_errors_fp(stderr);
        goto out;
    }
    if (grow(s) != 0) {
        perror("echo_server: malloc");
        goto out;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char bound[INET6_ADDRSTRLEN + 8];
    if (getsockname(s->listener, (struct sockaddr *)&ss, &len) != 0) {
        perror("echo_server: getsockname");
        goto out;
    }
    format_addr((struct sockaddr *)&ss, len, bound, sizeof bound);
    printf("listening %s\n", bound);

    status = run(s);

out:
    /* Only after a failure is anything still open here. The closer's pending
     * shutdowns end under their policy (finish blocks, within it), and their
     * lines are printed; then it is freed. */
    if (s->closer != NULL && closenotify_closer_finish(s->closer) == CLOSENOTIFY_OK)
        process(s);
    closenotify_closer_free(s->closer);
    for (size_t i = 0; i < s->nconns; i++) {
        struct conn *c = s->conns[i];
        SSL_free(c->ssl);
        if (c->fd >= 0)
            close(c->fd);
        free(c);
    }
    free(s->conns);
    free(s->pfds);
    if (s->listener >= 0)
        close(s->listener);
    SSL_CTX_free(s->ctx);
    return status;
}
