#!/usr/bin/env python3
"""Open and hold idle mutual-TLS connections to a proxy, for bench/run.sh.

Opens COUNT connections to 127.0.0.1:PORT with the client certificate and,
unless --no-request is given, sends one keep-alive GET on each and reads its
answer (so the proxy has set up the connection's HTTP state, as for a client
that pauses between requests), then prints `held COUNT` and waits for a line on
standard input.
The caller measures the proxy's memory meanwhile. On that line it checks how
many connections the proxy has kept open, prints `alive N` and closes them all.

The connections come from several loopback source addresses (127.0.0.1,
127.0.0.2, ...), so that a per-source-address connection limit (idgate allows
512 per address by default) does not refuse them.

Everything is bounded: each socket operation times out after 10 s, and the
wait for the caller's line after `--hold-timeout` seconds.
"""

import argparse
import select
import socket
import ssl
import sys
import time


def read_response(conn):
    """Read one HTTP/1.1 response framed by Content-Length; return its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the end of the body")
        body += chunk
    return status


def still_open(conn):
    """True unless the peer has closed the connection."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    if not poller.poll(0):
        return True
    conn.setblocking(False)
    try:
        return conn.recv(1) != b""
    except ssl.SSLWantReadError:
        return True  # only TLS records without application data (e.g. tickets)
    except (OSError, ssl.SSLError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--path", default="/mem/idle")
    ap.add_argument("--no-request", action="store_true", help="only the TLS handshake on each connection")
    ap.add_argument("--sources", type=int, default=8, help="loopback source addresses to spread over")
    ap.add_argument("--hold-timeout", type=float, default=120.0)
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\n\r\n").encode()

    conns = []
    started = time.monotonic()
    try:
        for i in range(args.count):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.settimeout(10)
            # Without it the request waits, by Nagle, for the server's ACK of the
            # client's last handshake flight, which a server that sends no session
            # ticket delays by 40 ms: 2,000 connections would take minutes.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.bind((f"127.0.0.{1 + i % args.sources}", 0))
            raw.connect(("127.0.0.1", args.port))
            conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            conns.append(conn)
            if args.no_request:
                continue
            conn.sendall(request)
            status = read_response(conn)
            if status != 200:
                raise RuntimeError(f"connection {i}: HTTP {status}")
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error after {len(conns)} connections: {e}", flush=True)
        return 1
    print(f"held {len(conns)} in {time.monotonic() - started:.1f}s", flush=True)

    ready, _, _ = select.select([sys.stdin], [], [], args.hold_timeout)
    if ready:
        sys.stdin.readline()
    alive = sum(1 for c in conns if still_open(c))
    print(f"alive {alive}", flush=True)
    for c in conns:
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
