#!/usr/bin/env python3
"""The other end of a connection that starts in plaintext, goes TLS and comes back
to plaintext (STARTTLS in, STOPTLS out), built on Python's `ssl` module: an
implementation independent of the test's, used by tests/stoptls.rs.

    stoptls.py server|client --tls 1.2|1.3 --cert PEM --key PEM
               [--port N] [--close python|test|test-same-write] [--no-data]

The lifecycle, byte-exact on both sides:
  1. plaintext:  server "220 ready\\r\\n", client "STARTTLS\\r\\n", server "220 go\\r\\n"
  2. TLS handshake (this side server or client, as the role says)
  3. TLS data:   client "ping\\n", server "pong\\n" (skipped with --no-data: a TLS
                 1.3 client then receives the server's session tickets only while
                 it waits for the close_notify)
  4. the TLS close, initiated by
       python           this side: `unwrap()` sends close_notify and waits for the
                        test's
       test             the test: this side reads until its close_notify, then
                        `unwrap()` answers
       test-same-write  the test; this side answers with the close_notify and its
                        first plaintext bytes in ONE send (an SSLObject on memory
                        BIOs builds the close_notify record)
  5. plaintext:  this side sends "plain from python\\n", reads "plain from test\\n"

The server prints its port first. On success the last line is "ok" and the exit
status 0; anything unexpected is on stderr with a non-zero status.
"""

import argparse
import socket
import ssl
import sys

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
AFTER_PY = b"plain from python\n"
AFTER_TEST = b"plain from test\n"


def fail(msg):
    print(f"stoptls.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def read_line(sock):
    """One line, byte by byte: nothing past the newline may be consumed, since
    what follows belongs to the next protocol (TLS, or plaintext after it)."""
    line = b""
    while not line.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            fail(f"EOF after {line!r}")
        line += b
    return line


def expect(sock, want):
    got = read_line(sock)
    if got != want:
        fail(f"expected {want!r}, got {got!r}")


def context(args, server):
    if server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = VERSIONS[args.tls]
    return ctx


def same_write_close(raw, ctx, server):
    """TLS over memory BIOs on `raw`, handshaken: returns the SSL object, the
    pump that runs an operation to completion over `raw`, and the BIOs, with
    which the caller answers the test's close_notify with ours plus the first
    plaintext bytes in one send."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server)

    def flush():
        data = outgoing.read()
        if data:
            raw.sendall(data)

    def pump(op):
        while True:
            try:
                result = op()
                flush()
                return result
            except ssl.SSLWantReadError:
                flush()
                chunk = raw.recv(16384)
                if not chunk:
                    fail("EOF inside TLS")
                incoming.write(chunk)

    pump(obj.do_handshake)
    return obj, pump, incoming, outgoing


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--tls", choices=VERSIONS, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--close", choices=["python", "test", "test-same-write"], default="test")
    p.add_argument("--no-data", action="store_true")
    args = p.parse_args()
    server = args.role == "server"

    if server:
        listener = socket.create_server(("127.0.0.1", args.port))
        print(listener.getsockname()[1], flush=True)
        raw, _ = listener.accept()
        listener.close()
        raw.sendall(b"220 ready\r\n")
        expect(raw, b"STARTTLS\r\n")
        raw.sendall(b"220 go\r\n")
    else:
        raw = socket.create_connection(("127.0.0.1", args.port))
        expect(raw, b"220 ready\r\n")
        raw.sendall(b"STARTTLS\r\n")
        expect(raw, b"220 go\r\n")
    raw.settimeout(10)
    ctx = context(args, server)

    if args.close == "test-same-write":
        # Data over the memory-BIO object too, then the test's close_notify.
        obj, pump, incoming, outgoing = same_write_close(raw, ctx, server)
        if not args.no_data:
            if server:
                if pump(lambda: obj.read(5)) != b"ping\n":
                    fail("no ping")
                pump(lambda: obj.write(b"pong\n"))
            else:
                pump(lambda: obj.write(b"ping\n"))
                if pump(lambda: obj.read(5)) != b"pong\n":
                    fail("no pong")
        # read() answers b"" on the test's close_notify.
        while pump(lambda: obj.read(16384)):
            pass
        # unwrap() puts our close_notify into `outgoing`; send it with the
        # plaintext in the same write.
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        raw.sendall(outgoing.read() + AFTER_PY)
        if incoming.pending:
            fail(f"{incoming.pending} bytes past the test's close_notify were read by TLS")
        plain = raw
    else:
        tls = ctx.wrap_socket(raw, server_side=server)
        if not args.no_data:
            if server:
                if tls.recv(5) != b"ping\n":
                    fail("no ping")
                tls.sendall(b"pong\n")
            else:
                tls.sendall(b"ping\n")
                if tls.recv(5) != b"pong\n":
                    fail("no pong")
        if args.close == "test":
            # recv answers b"" only on the test's close_notify.
            while tls.recv(16384):
                pass
        plain = tls.unwrap()
        plain.sendall(AFTER_PY)

    expect(plain, AFTER_TEST)
    plain.close()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
