#!/usr/bin/env python3
"""A TLS server built on Python's `ssl` module, used as an external peer by
tests/external_peers.rs and tests/c_api.rs. It accepts one connection, completes
the handshake and then behaves as MODE says once the test's close_notify arrives:

  answer    answer with our close_notify (unwrap), then wait for EOF    -> clean
  silent    never read, never answer; sleep until killed                 -> timed_out
  truncate  close the TCP socket without close_notify                    -> truncated
  reset     SO_LINGER {1, 0}, then close: the kernel sends an RST        -> reset
  data      send --data-bytes of application data, then answer           -> clean
  stream    send application data as fast as the socket takes it for
            --stream-seconds, then answer (the test's timeout ends it first:
            its close is not an error here)                           -> timed_out

or, from the end of the handshake on:

  initiate  send close_notify first (unwrap: waits for the test's answer), then
            wait for EOF                                                 -> clean, peer
  alert     read until OpenSSL rejects a record (the test forges one): it has
            then sent a fatal alert; sleep until killed                  -> peer_alert
  reset-now SO_LINGER {1, 0}, then close: an RST right after the handshake
  truncate-now  close the TCP socket without close_notify right after the
            handshake
  echo      echo every byte until the test's close_notify, then answer   -> clean
  sink      read nothing until a line arrives on stdin (the test has filled
            the socket buffers), then read to the test's close_notify or EOF;
            print `received=N sha256=H end=close_notify|eof|reset`, and answer
            a close_notify                                               -> clean

The first line on stdout is the listening port. Errors go to stderr and make the
exit status non-zero, so that the test can tell a peer bug from a library bug.
"""

import argparse
import hashlib
import os
import socket
import ssl
import sys
import time

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def log(msg):
    print(f"peer.py[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def read_until_close_notify(conn):
    """Reads until the test's close_notify: `recv` answers b'' only when the peer's
    close_notify arrived (a bare TCP EOF raises SSLEOFError instead)."""
    got = 0
    while True:
        chunk = conn.recv(16384)
        if not chunk:
            return got
        got += len(chunk)


def wait_eof(raw):
    """Reads the raw TCP socket until EOF, so that our close() sends a FIN."""
    raw.settimeout(10)
    while raw.recv(4096):
        pass


def reset(conn):
    """struct linger {int l_onoff = 1; int l_linger = 0;}: close() sends an RST."""
    linger = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    conn.close()


def sink(conn):
    """Waits for the go on stdin, then reads everything; the count and SHA-256
    of the bytes, and how the stream ended, go to stdout."""
    if not sys.stdin.readline():
        raise SystemExit("stdin closed before the go")
    digest = hashlib.sha256()
    got = 0
    try:
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                end = "close_notify"
                break
            digest.update(chunk)
            got += len(chunk)
    except ssl.SSLEOFError:
        end = "eof"
    except ConnectionResetError:
        end = "reset"
    print(f"received={got} sha256={digest.hexdigest()} end={end}", flush=True)
    log(f"received {got} bytes, then {end}")
    if end == "close_notify":
        raw = conn.unwrap()
        log("close_notify sent")
        wait_eof(raw)
        raw.close()
    log("done")


def sleep_forever():
    while True:
        time.sleep(3600)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "mode",
        choices=[
            "answer",
            "silent",
            "truncate",
            "reset",
            "data",
            "stream",
            "initiate",
            "alert",
            "reset-now",
            "truncate-now",
            "echo",
            "sink",
        ],
    )
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--tls", choices=sorted(VERSIONS), required=True)
    ap.add_argument("--data-bytes", type=int, default=5000)
    ap.add_argument("--stream-seconds", type=float, default=3.0)
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[args.tls]
    ctx.maximum_version = VERSIONS[args.tls]
    ctx.load_cert_chain(args.cert, args.key)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(listener.getsockname()[1], flush=True)

    tcp, _ = listener.accept()
    listener.close()
    tcp.settimeout(10)  # never hang a CI run if the test dies
    # sink tells close_notify from a bare EOF: recv() raises SSLEOFError for the
    # latter instead of returning b'' (which the default suppress_ragged_eofs
    # makes it answer for both).
    conn = ctx.wrap_socket(
        tcp, server_side=True, suppress_ragged_eofs=args.mode != "sink"
    )  # handshake happens here
    log(f"handshake done: {conn.version()}")

    if args.mode == "silent":
        # Does not even read: the test's close_notify stays in the socket buffer.
        sleep_forever()
    elif args.mode == "reset-now":
        reset(conn)
        log("reset sent")
        return
    elif args.mode == "truncate-now":
        # Python never sends close_notify implicitly: close() is a bare TCP FIN.
        conn.close()
        log("closed without close_notify")
        return
    elif args.mode == "sink":
        sink(conn)
        return
    elif args.mode == "initiate":
        # unwrap() calls SSL_shutdown until the test's close_notify answers ours.
        raw = conn.unwrap()
        log("close_notify sent and answered")
        wait_eof(raw)
        raw.close()
        log("done")
        return
    elif args.mode == "alert":
        try:
            while conn.recv(16384):
                pass
        except ssl.SSLError as e:
            # OpenSSL raised this after sending its fatal alert to the test.
            log(f"record rejected, fatal alert sent: {e}")
            sleep_forever()
        raise SystemExit("close_notify or EOF instead of a forged record")
    elif args.mode == "echo":
        echoed = 0
        while True:
            chunk = conn.recv(16384)
            if not chunk:  # the test's close_notify
                break
            conn.sendall(chunk)
            echoed += len(chunk)
        log(f"echoed {echoed} bytes, close_notify received")
        raw = conn.unwrap()
        log("close_notify sent")
        wait_eof(raw)
        raw.close()
        log("done")
        return

    got = read_until_close_notify(conn)
    if got:
        raise SystemExit(f"unexpected {got} bytes of application data before close_notify")
    log("close_notify received")

    if args.mode == "stream":
        chunk = b"s" * 16384
        sent = 0
        until = time.monotonic() + args.stream_seconds
        try:
            while time.monotonic() < until:
                conn.sendall(chunk)
                sent += len(chunk)
            conn.unwrap()
        except (OSError, ssl.SSLError) as e:
            log(f"streamed {sent} bytes, then the test closed: {e}")
            return
        log(f"streamed {sent} bytes for {args.stream_seconds} s, then close_notify")
        return
    if args.mode == "truncate":
        # Python never sends close_notify implicitly: close() is a bare TCP FIN.
        conn.close()
    elif args.mode == "reset":
        reset(conn)
    else:
        if args.mode == "data":
            # Legal: TLS lets a side keep writing after the other's close_notify.
            conn.sendall(b"d" * args.data_bytes)
        raw = conn.unwrap()  # SSL_shutdown: our close_notify
        log("close_notify sent")
        wait_eof(raw)
        raw.close()
    log("done")


if __name__ == "__main__":
    main()
