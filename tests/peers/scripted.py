#!/usr/bin/env python3
"""A TLS server that is not OpenSSL: tlslite-ng (pure Python), driven at the
record level, used as an independent peer by tests/independent_peer.rs.

It accepts one connection on 127.0.0.1, completes the handshake in the TLS
version of --tls with the certificate and key given (PEM), then runs the STEPS
given on the command line, in order, then reads the socket until the test's
TCP EOF without sending anything more, and keeps the connection open until its
stdin closes (a peer that stays silent: it never closes first). Every record it
writes is built here, so it can send what OpenSSL peers never do: a
close_notify split over two records, an alert with trailing bytes, warnings, a
HelloRequest, records after its own close_notify.

Steps:

  wait              read records until the test's close_notify (each record
                    read is printed as `got TYPE HEX`); fails on EOF first
  read              read one record (printed the same way)
  alert:LEVEL:DESC  one alert record (LEVEL 1 warning, 2 fatal)
  record:TYPE:HEX   one record of content type TYPE with the payload HEX
                    (`record:21:01` is the first half of a close_notify)
  data:N            one application-data record of N bytes `d`
  hello-request     a HelloRequest (TLS 1.2: the server asks to renegotiate)
  key-update:R      a TLS 1.3 KeyUpdate (R: 0 update_not_requested, 1
                    update_requested); the records after it use the new key
  fin               end the TCP stream now (shutdown(SHUT_WR)): an EOF
                    without close_notify
  cork              hold every record written from now on ...
  flush             ... and send them in one write() (one TCP segment)
  sleep:MS          sleep

The first line on stdout is the listening port. Then one line per event
(`handshake TLS 1.2`, `sent ...`, `got ...`); the last line says how the
transport ended and how many bytes came after the steps: `end=eof bytes=N`,
`end=reset bytes=N` or `end=timeout bytes=N`. Errors go to stderr and make
the exit status non-zero, so that the test can tell a peer bug from a
library bug.
"""

import argparse
import os
import socket
import sys
import time

from tlslite.api import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
from tlslite.constants import ContentType, KeyUpdateMessageType
from tlslite.errors import TLSAbruptCloseError
from tlslite.messages import Message

VERSIONS = {"1.2": (3, 3), "1.3": (3, 4)}
NAMES = {
    ContentType.change_cipher_spec: "change_cipher_spec",
    ContentType.alert: "alert",
    ContentType.handshake: "handshake",
    ContentType.application_data: "application_data",
}

# How long the peer waits for anything: never hang a CI run if the test dies.
IO_TIMEOUT = 10


def log(msg):
    print(f"scripted.py[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def say(line):
    print(line, flush=True)


def run(gen):
    """Runs one of tlslite's generator-style calls to completion."""
    for _ in gen:
        pass


def send_record(conn, content_type, payload):
    """One record, exactly as given: through the connection's record layer
    (encrypted with its current keys), not fragmented or merged by tlslite."""
    run(conn._sendMsgThroughSocket(Message(content_type, bytearray(payload))))
    say(f"sent {NAMES.get(content_type, content_type)} {bytes(payload).hex()}")


def read_record(conn):
    """Reads one (decrypted) record, prints it, and returns its type and payload."""
    result = None
    try:
        for result in conn._getNextRecord():
            if result not in (0, 1):
                break
    except TLSAbruptCloseError:
        raise SystemExit("EOF where a record was expected")
    header, parser = result
    payload = bytes(parser.bytes)
    say(f"got {NAMES.get(header.type, header.type)} {payload.hex()}")
    return header.type, payload


def wait_close_notify(conn):
    """Reads records until the test's close_notify."""
    while read_record(conn) != (ContentType.alert, b"\x01\x00"):
        pass


def wait_eof(conn, tcp):
    """Reads the raw socket until the test's EOF, sending nothing; the bytes
    tlslite had already buffered count too."""
    got = len(conn.sock._read_buffer)
    tcp.settimeout(IO_TIMEOUT)
    try:
        while True:
            chunk = tcp.recv(65536)
            if not chunk:
                return "eof", got
            got += len(chunk)
    except ConnectionResetError:
        return "reset", got
    except socket.timeout:
        return "timeout", got


def step(conn, spec):
    name, _, arg = spec.partition(":")
    if name == "wait":
        wait_close_notify(conn)
    elif name == "read":
        read_record(conn)
    elif name == "alert":
        level, desc = (int(x) for x in arg.split(":"))
        send_record(conn, ContentType.alert, bytes([level, desc]))
    elif name == "record":
        content_type, payload = arg.split(":")
        send_record(conn, int(content_type), bytes.fromhex(payload))
    elif name == "data":
        send_record(conn, ContentType.application_data, b"d" * int(arg))
    elif name == "hello-request":
        # HandshakeType.hello_request (0), an empty body.
        send_record(conn, ContentType.handshake, b"\x00\x00\x00\x00")
    elif name == "key-update":
        kind = (
            KeyUpdateMessageType.update_requested
            if arg == "1"
            else KeyUpdateMessageType.update_not_requested
        )
        run(conn.send_keyupdate_request(kind))
        say(f"sent key_update requested={arg}")
    elif name == "fin":
        conn.sock.flush()
        conn.sock.socket.shutdown(socket.SHUT_WR)
        say("sent fin")
    elif name == "cork":
        conn.sock.buffer_writes = True
    elif name == "flush":
        conn.sock.flush()
        conn.sock.buffer_writes = False
    elif name == "sleep":
        time.sleep(int(arg) / 1000)
    else:
        raise SystemExit(f"unknown step {spec!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--tls", choices=sorted(VERSIONS), required=True)
    ap.add_argument("steps", nargs="*")
    args = ap.parse_args()

    with open(args.cert) as f:
        chain = X509CertChain()
        chain.parsePemList(f.read())
    with open(args.key) as f:
        key = parsePEMKey(f.read(), private=True)
    settings = HandshakeSettings()
    settings.minVersion = VERSIONS[args.tls]
    settings.maxVersion = VERSIONS[args.tls]
    # No session tickets: after the handshake the wire carries only the steps.
    settings.ticket_count = 0

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    say(listener.getsockname()[1])

    tcp, _ = listener.accept()
    listener.close()
    tcp.settimeout(IO_TIMEOUT)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = TLSConnection(tcp)
    conn.handshakeServer(certChain=chain, privateKey=key, settings=settings)
    say(f"handshake {conn.getVersionName()}")

    for spec in args.steps:
        step(conn, spec)
    if conn.sock.buffer_writes:
        step(conn, "flush")

    end, got = wait_eof(conn, tcp)
    say(f"end={end} bytes={got}")
    # Silent, but open: the test decides when the connection is gone.
    sys.stdin.read()
    log(f"done: {end} after {got} bytes")
    tcp.close()


if __name__ == "__main__":
    main()
