#!/usr/bin/env python3
"""Servers built on Python's standard library, probed by tests/probe.rs. Each
serves many connections (one thread each) on 127.0.0.1 and a port the kernel
picks, and prints that port as its first line on stdout.

  https  http.server's ThreadingHTTPServer on an ssl-wrapped socket, as the
         standard library's documentation sets one up. `GET /` answers a short
         page, `GET /big` --big-bytes. Python's SSLSocket.close() sends no
         close_notify (neither does socketserver's shutdown_request, a TCP
         shutdown): every close of this server is a FIN without close_notify.
         The handler's `timeout` (--idle seconds) ends an idle connection.
         The request is read through a buffered reader that takes one TLS
         record at a time: what a client sends after its request stays unread
         when the server closes, and the kernel then sends an RST.

  smtp   A small SMTP server of our own with STARTTLS (RFC 3207): the `220`
         greeting, EHLO (its reply lists STARTTLS), STARTTLS, then in TLS:
         EHLO, NOOP, QUIT. It ends TLS with SSLSocket.unwrap(): close_notify,
         then it waits up to --unwrap seconds for the client's close_notify
         before it closes. It closes like that after QUIT ("221"), after
         --idle seconds without a command ("421"), and when the client's
         close_notify or EOF arrives. unwrap() stops at application data
         that follows the client's QUIT: the server then closes with that
         input unread (an RST).

  imap, ftp  The same server with the plaintext phase of IMAP (`* OK`
         greeting, `a1 STARTTLS`, `a1 OK`) or FTP (a two-line `220`
         greeting, `AUTH TLS`, `234`).

Errors of a connection go to stderr; the server keeps serving.
"""

import argparse
import socket
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(msg):
    print(f"probe_server.py: {msg}", file=sys.stderr, flush=True)


def context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    return ctx


def https(args):
    page = b"hello from Python's http.server\n"
    big = b"x" * args.big_bytes

    class Handler(BaseHTTPRequestHandler):
        timeout = args.idle
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = big if self.path == "/big" else page
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context(args).wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# The plaintext phase of each dialect: the greeting, the command that starts
# TLS, the answer to it.
DIALECTS = {
    "smtp": (b"220 probe_server.py ESMTP\r\n", b"STARTTLS", b"220 go ahead\r\n"),
    "imap": (
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS] probe_server.py\r\n",
        b"A1 STARTTLS",
        b"a1 OK begin TLS now\r\n",
    ),
    "ftp": (b"220-probe_server.py\r\n220 ready\r\n", b"AUTH TLS", b"234 go ahead\r\n"),
}


class Smtp(socketserver.StreamRequestHandler):
    def handle(self):
        args = self.server.args
        raw = self.request
        # Each reply leaves at once: no small write is held back (Nagle) when
        # the server closes, so what an RST destroys does not depend on timing.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(args.idle)
        greeting, command, go_ahead = DIALECTS[args.mode]
        raw.sendall(greeting)
        while True:
            line = self.read_line(raw)
            if line is None:
                return
            if line.upper().startswith(b"EHLO"):
                raw.sendall(b"250-probe_server.py\r\n250 STARTTLS\r\n")
            elif line.upper() == command:
                raw.sendall(go_ahead)
                break
            else:
                raw.sendall(b"530 STARTTLS first\r\n")
        tls = self.server.ctx.wrap_socket(raw, server_side=True)
        reader = tls.makefile("rb")
        try:
            while True:
                try:
                    line = reader.readline(1024)
                except TimeoutError:
                    tls.sendall(b"421 idle for too long\r\n")
                    break
                if not line:  # the client's close_notify (or EOF: SSLEOFError)
                    break
                words = line.strip().upper().split()  # IMAP's: a tag first
                if b"QUIT" in words or b"LOGOUT" in words:
                    tls.sendall(b"221 bye\r\n")
                    break
                if words[:1] in ([b"EHLO"], [b"NOOP"]):
                    tls.sendall(b"250 ok\r\n")
                else:
                    tls.sendall(b"502 not here\r\n")
            tls.settimeout(args.unwrap)
            tls.unwrap()
        except (OSError, ssl.SSLError) as e:
            log(f"connection ended: {e!r}")
        finally:
            reader.close()
            tls.close()

    def read_line(self, raw):
        line = b""
        while not line.endswith(b"\n"):
            try:
                byte = raw.recv(1)
            except OSError:
                return None
            if not byte:
                return None
            line += byte
        return line.strip()


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


def smtp(args):
    server = SmtpServer(("127.0.0.1", 0), Smtp)
    server.args = args
    server.ctx = context(args)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["https", "smtp", "imap", "ftp"])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--idle", type=float, default=1.0)
    p.add_argument("--unwrap", type=float, default=1.0)
    p.add_argument("--big-bytes", type=int, default=256 * 1024)
    args = p.parse_args()
    {"https": https}.get(args.mode, smtp)(args)


if __name__ == "__main__":
    threading.excepthook = lambda a: log(f"thread failed: {a.exc_value!r}")
    main()
