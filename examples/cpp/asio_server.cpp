/*
 * asio_server.cpp: a TLS echo-one-line server on standalone Asio
 * (asio::ssl::stream<asio::ip::tcp::socket>, one io_context, one thread) that
 * ends its connections with a closenotify closer instead of async_shutdown:
 * once the echo is written, the connection is handed over with one call and
 * forgotten; the closer runs on the same io_context (its fd watched by an
 * asio::posix::stream_descriptor, its deadlines by an asio::steady_timer), and
 * its reports come back with the connection's number.
 *
 *   asio_server --cert FILE --key FILE [--listen-port P] [--listen-addr A]
 *               [--peer-timeout-ms N] [--max-conns N]
 *
 *   --cert, --key FILE    certificate chain and private key, PEM
 *   --listen-port P       where to listen (default 4433; 0: any free port)
 *   --listen-addr A       the address to bind (default 127.0.0.1)
 *   --peer-timeout-ms N   the shutdown policy's bound for the client's
 *                         close_notify (default 3000)
 *   --max-conns N         exit 0 once N connections have ended (default:
 *                         serve until killed)
 *
 * Output, line-buffered on stdout: first `listening PORT`, the port actually
 * bound; then one line per connection when it has ended. For a connection the
 * closer took, its report:
 *
 *   conn=N outcome=NAME elapsed_ms=E
 *
 * (NAME from closenotify_outcome_name: clean, timed_out, reset, truncated...;
 * E: the library's elapsed time, from the handover to the end). A connection
 * that never reached the closer (failed handshake or read, or one the server
 * would not hand over) prints `conn=N outcome=not_handed_over stage=STAGE
 * error=WHAT`, and is closed without close_notify.
 *
 * Exit status: 0 after --max-conns connections, 1 for a setup failure
 * (certificate, address), 2 for a usage error.
 *
 * Build (Debian: apt-get install libasio-dev), with the library installed by
 * cargo-c (see docs/c-api.md):
 *
 *   c++ -std=c++17 -Wall -Wextra -Werror examples/cpp/asio_server.cpp \
 *       -o asio_server $(pkg-config --cflags --libs closenotify) -lpthread
 *
 * Handing an asio::ssl::stream over: what has to be right
 *
 * 1. The SSL* has two owners for a while. asio::ssl::stream frees its SSL*
 *    in its destructor (SSL_free), and the closer frees it when the shutdown
 *    ends. An SSL is reference counted: SSL_up_ref (OpenSSL 1.1.0 and later)
 *    takes a second reference before the handover, so each owner drops its
 *    own, in whichever order, and the last one frees it. Without it, the
 *    session's destructor (right after the handover here) frees the SSL
 *    under the closer.
 * 2. The SSL must read and write on the socket. asio::ssl::stream drives it
 *    through a BIO pair of its own; SSL_set_fd(ssl, fd) puts a socket BIO on
 *    the fd in its place (the pair's inner half is freed; the stream frees
 *    the outer half in its destructor). Bytes still in the pair would be lost
 *    (TLS records the peer sent past what we read: the next record would fail
 *    its MAC), so hand over only when no operation is pending and the pair is
 *    empty: see hand_over().
 * 3. The fd has two owners too, and an fd has no reference count: the socket
 *    closes it in its destructor. After a successful add, socket.release()
 *    (basic_socket::release: in Asio's documentation since 1.12 at least,
 *    and in 1.22) takes it out of the io_context's epoll and leaves it open
 *    for the closer. On a failed add nothing changed hands: drop the extra
 *    reference and let the stream close the socket as usual.
 * 4. The closer's fd is an epoll instance that belongs to the closer. A
 *    stream_descriptor closes the fd it holds, so it gets a dup() of it.
 *    Asio's reactor is edge-triggered, but each async_wait re-arms the fd
 *    (EPOLL_CTL_MOD), which reports it again if it is still readable.
 */

#define ASIO_STANDALONE 1

#include <asio.hpp>
#include <asio/ssl.hpp>

#include <closenotify.h>

#include <openssl/err.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

using asio::ip::tcp;
using ssl_stream = asio::ssl::stream<tcp::socket>;

namespace {

/* The longest line the server echoes. */
constexpr std::size_t max_line = 16 * 1024;

/* An Asio error as one word: "category:value". */
std::string error_text(const asio::error_code &ec) {
    return std::string(ec.category().name()) + ":" + std::to_string(ec.value());
}

/* The message of closenotify's last failed call on this thread. */
std::string last_error() {
    char buf[512];
    closenotify_last_error(buf, sizeof buf);
    return buf;
}

/*
 * A closenotify closer on an io_context: connections handed over here are shut
 * down on the io_context's thread, and each report goes to `on_closed`.
 * on_closed runs inside process(): it must not call back into the closer (add,
 * finish); post that to the io_context instead.
 */
class Closer {
  public:
    using on_closed_fn = std::function<void(const closenotify_closed &)>;

    Closer(asio::io_context &io, const closenotify_policy &policy, on_closed_fn on_closed)
        : closer_(make_closer(policy)), fd_(io), timer_(io), on_closed_(std::move(on_closed)) {
        /* The descriptor object closes what it holds: give it a duplicate of
         * the closer's epoll fd (the same epoll instance), never the fd
         * itself. */
        int dup = ::fcntl(closenotify_closer_fd(closer_), F_DUPFD_CLOEXEC, 0);
        asio::error_code ec(dup < 0 ? errno : 0, asio::system_category());
        if (!ec)
            fd_.assign(dup, ec);
        if (ec) {
            if (dup >= 0)
                ::close(dup);
            closenotify_closer_free(closer_);
            throw asio::system_error(ec, "watching the closer's fd");
        }
    }

    Closer(const Closer &) = delete;
    Closer &operator=(const Closer &) = delete;

    ~Closer() {
        /* Connections still pending are aborted (see finish()). The handlers
         * cancelled here are never run: the io_context has stopped. */
        asio::error_code ignored;
        fd_.close(ignored);
        timer_.cancel();
        closenotify_closer_free(closer_);
    }

    /*
     * Hands the connection over: true if the closer took it (it then owns the
     * SSL* and the fd, and `stream` may be destroyed at once); false if not,
     * with `why`: nothing changed hands, and `stream` still owns both (its
     * socket closes the fd without close_notify when it is destroyed).
     *
     * Call it from a completion handler, with no operation pending on the
     * stream.
     */
    bool hand_over(ssl_stream &stream, std::uint64_t tag, std::string &why) {
        SSL *ssl = stream.native_handle();
        tcp::socket &socket = stream.next_layer();
        int fd = socket.native_handle();

        /* asio::ssl::stream talks to the SSL through a BIO pair: ciphertext
         * asio read from the socket that the SSL has not consumed yet
         * (PENDING on the SSL's read side), or that the SSL wrote and asio
         * has not sent (WPENDING on its write side). SSL_set_fd drops the
         * pair: bytes in it would be lost. Asio may also hold received bytes
         * in its own input buffer, which no call shows: hand over where the
         * protocol says the peer is waiting for us (here: after our echo). */
        if (BIO_ctrl_pending(SSL_get_rbio(ssl)) != 0 || BIO_ctrl_wpending(SSL_get_wbio(ssl)) != 0) {
            why = "bytes_in_the_bio_pair";
            return false;
        }

        /* The closer's reference; the stream keeps its own, which its
         * destructor drops. */
        if (SSL_up_ref(ssl) != 1) {
            ERR_clear_error();
            why = "SSL_up_ref";
            return false;
        }
        /* A socket BIO on the fd in place of asio's BIO pair (what the closer
         * requires: anything else is CLOSENOTIFY_ERR_INVALID_ARGUMENT). From
         * here on the stream cannot run asio operations any more. */
        if (SSL_set_fd(ssl, fd) != 1) {
            ERR_clear_error();
            SSL_free(ssl); /* the extra reference */
            why = "SSL_set_fd";
            return false;
        }

        closenotify_result r = closenotify_closer_add(closer_, ssl, fd, nullptr, tag);
        if (r != CLOSENOTIFY_OK) {
            /* Nothing changed hands: drop the extra reference; the stream
             * still owns the SSL* and its socket the fd. */
            SSL_free(ssl);
            why = std::string(closenotify_result_name(r));
            std::fprintf(stderr, "conn=%" PRIu64 " closenotify_closer_add: %s: %s\n", tag,
                         why.c_str(), last_error().c_str());
            return false;
        }

        /* The closer owns the fd now: the socket must not close it. release()
         * removes it from the io_context's epoll and gives it up without
         * closing it; it fails only on a closed socket, which this one is
         * not (the closer just took its fd). Had it failed, two owners would
         * close the fd: better to stop here. */
        asio::error_code ec;
        socket.release(ec);
        if (ec) {
            std::fprintf(stderr, "conn=%" PRIu64 " socket.release: %s\n", tag,
                         ec.message().c_str());
            std::abort();
        }

        /* The shutdown has started: its first deadline, or its report if it
         * ended at once, must reach the loop. */
        arm();
        return true;
    }

    /* For a program that exits: lets every pending shutdown end under its
     * policy (blocking), then hands out the last reports. */
    void finish() {
        if (closenotify_closer_finish(closer_) != CLOSENOTIFY_OK)
            std::fprintf(stderr, "closenotify_closer_finish: %s\n", last_error().c_str());
        take_reports();
    }

  private:
    static closenotify_closer *make_closer(const closenotify_policy &policy) {
        closenotify_closer *closer = nullptr;
        if (closenotify_closer_new(&policy, &closer) != CLOSENOTIFY_OK)
            throw std::runtime_error("closenotify_closer_new: " + last_error());
        return closer;
    }

    /* After every add and every process: wait for the closer's fd (one wait
     * at a time) and for its next deadline. */
    void arm() {
        if (!fd_waiting_) {
            fd_waiting_ = true;
            fd_.async_wait(asio::posix::descriptor_base::wait_read,
                           [this](const asio::error_code &ec) {
                               if (ec == asio::error::operation_aborted)
                                   return; /* closing: `this` may be gone */
                               fd_waiting_ = false;
                               if (ec) /* out of io.run(): main reports it */
                                   throw asio::system_error(ec, "waiting on the closer's fd");
                               process();
                           });
        }
        int ms = closenotify_closer_timeout_ms(closer_);
        if (ms < 0) {
            timer_.cancel(); /* nothing pending */
            return;
        }
        /* Re-arming cancels the wait in progress (its handler sees
         * operation_aborted). A handler already due still runs: one more
         * process() call, which is harmless. */
        timer_.expires_after(std::chrono::milliseconds(ms));
        timer_.async_wait([this](const asio::error_code &ec) {
            if (!ec)
                process();
        });
    }

    void process() {
        /* Never blocks. On an error nothing is lost: the next call tries
         * again. */
        if (closenotify_closer_process(closer_) != CLOSENOTIFY_OK)
            std::fprintf(stderr, "closenotify_closer_process: %s\n", last_error().c_str());
        take_reports();
        arm();
    }

    void take_reports() {
        closenotify_closed done[64];
        std::size_t n = 0;
        do {
            closenotify_closer_reports(closer_, done, 64, &n);
            for (std::size_t i = 0; i < n; i++)
                on_closed_(done[i]);
        } while (n == 64);
    }

    closenotify_closer *closer_;
    asio::posix::stream_descriptor fd_;
    asio::steady_timer timer_;
    bool fd_waiting_ = false;
    on_closed_fn on_closed_;
};

/* Prints a connection's last line; counts it towards --max-conns. */
class Tally {
  public:
    Tally(asio::io_context &io, std::uint64_t max_conns) : io_(io), max_(max_conns) {}

    void reported(const closenotify_closed &c) {
        std::printf("conn=%" PRIu64 " outcome=%s elapsed_ms=%" PRIu64 "\n", c.tag,
                    closenotify_outcome_name(c.report.outcome), c.report.elapsed_ms);
        ended();
    }

    void not_handed_over(std::uint64_t conn, const char *stage, const std::string &error) {
        std::printf("conn=%" PRIu64 " outcome=not_handed_over stage=%s error=%s\n", conn, stage,
                    error.c_str());
        ended();
    }

  private:
    void ended() {
        std::fflush(stdout);
        if (max_ != 0 && ++ended_ == max_) {
            /* Called from inside the closer's process(): stop from a handler
             * of its own. io.run() returns; main finishes the closer. */
            asio::post(io_, [this] { io_.stop(); });
        }
    }

    asio::io_context &io_;
    std::uint64_t max_;
    std::uint64_t ended_ = 0;
};

/* One connection: handshake, one line, its echo, then the handover. */
class Session : public std::enable_shared_from_this<Session> {
  public:
    Session(tcp::socket socket, asio::ssl::context &tls, std::uint64_t id, Closer &closer,
            Tally &tally)
        : stream_(std::move(socket), tls), id_(id), closer_(closer), tally_(tally) {}

    void start() {
        auto self = shared_from_this();
        stream_.async_handshake(asio::ssl::stream_base::server,
                                [self](const asio::error_code &ec) {
                                    if (ec)
                                        return self->fail("handshake", error_text(ec));
                                    self->read();
                                });
    }

  private:
    void read() {
        auto self = shared_from_this();
        asio::async_read_until(stream_, asio::dynamic_buffer(line_, max_line), '\n',
                               [self](const asio::error_code &ec, std::size_t n) {
                                   if (ec)
                                       return self->fail("read", error_text(ec));
                                   self->write(n);
                               });
    }

    /* The line up to its newline (anything after it is dropped). */
    void write(std::size_t n) {
        auto self = shared_from_this();
        asio::async_write(stream_, asio::buffer(line_.data(), n),
                          [self](const asio::error_code &ec, std::size_t) {
                              if (ec)
                                  return self->fail("write", error_text(ec));
                              self->done();
                          });
    }

    /* Instead of async_shutdown: fire and forget. The closer takes the SSL*
     * and the fd; this session ends when the handler returns, and its stream
     * drops its reference to the SSL. */
    void done() {
        std::string why;
        if (!closer_.hand_over(stream_, id_, why))
            fail("hand_over", why);
    }

    /* The stream closes the socket (no close_notify) when the session ends. */
    void fail(const char *stage, const std::string &error) {
        tally_.not_handed_over(id_, stage, error);
    }

    ssl_stream stream_;
    std::string line_;
    std::uint64_t id_;
    Closer &closer_;
    Tally &tally_;
};

class Server {
  public:
    Server(asio::io_context &io, asio::ssl::context &tls, Closer &closer, Tally &tally)
        : acceptor_(io), tls_(tls), closer_(closer), tally_(tally) {}

    /* Returns the port bound. */
    unsigned short listen(const tcp::endpoint &at) {
        acceptor_.open(at.protocol());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        acceptor_.bind(at);
        acceptor_.listen();
        return acceptor_.local_endpoint().port();
    }

    void accept() {
        acceptor_.async_accept([this](const asio::error_code &ec, tcp::socket socket) {
            if (ec == asio::error::operation_aborted)
                return;
            if (ec) {
                std::fprintf(stderr, "accept: %s\n", ec.message().c_str());
            } else {
                asio::error_code ignored;
                socket.set_option(tcp::no_delay(true), ignored);
                std::make_shared<Session>(std::move(socket), tls_, ++conns_, closer_, tally_)
                    ->start();
            }
            accept();
        });
    }

  private:
    tcp::acceptor acceptor_;
    asio::ssl::context &tls_;
    Closer &closer_;
    Tally &tally_;
    std::uint64_t conns_ = 0;
};

struct Options {
    const char *cert = nullptr;
    const char *key = nullptr;
    const char *addr = "127.0.0.1";
    unsigned long port = 4433;
    unsigned long peer_timeout_ms = 3000;
    unsigned long max_conns = 0;
};

[[noreturn]] void usage(const char *why) {
    std::fprintf(stderr,
                 "asio_server: %s\n"
                 "usage: asio_server --cert FILE --key FILE [--listen-port P] [--listen-addr A]\n"
                 "                   [--peer-timeout-ms N] [--max-conns N]\n",
                 why);
    std::exit(2);
}

unsigned long number(const char *arg, unsigned long lo, unsigned long hi) {
    char *end = nullptr;
    errno = 0;
    unsigned long v = std::strtoul(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || arg[0] == '-' || v < lo || v > hi)
        usage("bad number");
    return v;
}

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc)
            usage("missing value");
        const char *val = argv[++i];
        if (std::strcmp(opt, "--cert") == 0)
            o.cert = val;
        else if (std::strcmp(opt, "--key") == 0)
            o.key = val;
        else if (std::strcmp(opt, "--listen-addr") == 0)
            o.addr = val;
        else if (std::strcmp(opt, "--listen-port") == 0)
            o.port = number(val, 0, 65535);
        else if (std::strcmp(opt, "--peer-timeout-ms") == 0)
            o.peer_timeout_ms = number(val, 1, 3600000);
        else if (std::strcmp(opt, "--max-conns") == 0)
            o.max_conns = number(val, 1, 1000000000);
        else
            usage("unknown option");
    }
    if (o.cert == nullptr || o.key == nullptr)
        usage("--cert and --key are required");
    return o;
}

} // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);

    asio::error_code ec;
    asio::ip::address addr = asio::ip::make_address(o.addr, ec);
    if (ec)
        usage("bad address");

    closenotify_policy policy;
    closenotify_policy_init(&policy);
    policy.peer_timeout_ms = static_cast<std::uint32_t>(o.peer_timeout_ms);

    try {
        /* Destroyed in reverse order: the I/O objects (server, closer) before
         * the io_context, which then destroys the handlers it still holds
         * (sessions in progress: their sockets close). */
        asio::io_context io(1);
        asio::ssl::context tls(asio::ssl::context::tls_server);
        try {
            tls.use_certificate_chain_file(o.cert);
            tls.use_private_key_file(o.key, asio::ssl::context::pem);
        } catch (const std::exception &e) {
            std::fprintf(stderr, "asio_server: cannot use certificate/key: %s\n", e.what());
            return 1;
        }

        Tally tally(io, o.max_conns);
        Closer closer(io, policy, [&](const closenotify_closed &c) { tally.reported(c); });
        Server server(io, tls, closer, tally);
        unsigned short port;
        try {
            port = server.listen(tcp::endpoint(addr, static_cast<unsigned short>(o.port)));
        } catch (const std::exception &e) {
            std::fprintf(stderr, "asio_server: cannot listen on %s:%lu: %s\n", o.addr, o.port,
                         e.what());
            return 1;
        }
        std::printf("listening %u\n", static_cast<unsigned>(port));
        std::fflush(stdout);

        server.accept();
        io.run();

        /* --max-conns reached. Connections handed over since (more clients
         * than that) end under their policy before the exit; their reports
         * are printed too. */
        closer.finish();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "asio_server: %s\n", e.what());
        return 1;
    }
    return 0;
}
