#!/usr/bin/env python3
"""Where a keep-alive request's time goes, read from a packet capture of loopback.

Usage: bench/turnaround.py CAPTURE.pcap PROXY_PORT [UPSTREAM_PORT]

CAPTURE is a classic pcap file of the loopback interface taken while oha drives a proxy
(tcpdump -i lo -s 80 -w CAPTURE.pcap 'tcp and (port PROXY_PORT or port UPSTREAM_PORT)').
Only segments that carry data are read. For every client connection (its port) the
capture holds, in turn, a request segment towards the proxy and an answer segment back;
the script reports, as percentiles in microseconds:

- proxy:    from a request's segment to the answer's segment on the same connection: the
            time on the proxy's side, queueing for its event loop included;
- client:   from an answer's segment to the next request's on the same connection: the
            time on the client's side (oha reading the answer, sending the next request);
- upstream: from a request segment towards the upstream to the answer segment back on
            the same upstream connection.

A request or answer is taken to fit one segment (the bench's do: 191 and 664-712 bytes);
the script says how many segments each direction held, so that this can be checked.
tcpdump takes CPU of its own: compare proxies captured the same way, not with the
figures of an uncaptured run.
"""

import collections
import struct
import sys

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
ETHERTYPE_IPV4 = 0x0800


def segments(path):
    """(time in seconds, source port, destination port, payload bytes) of each IPv4 TCP
    segment with data, in capture order."""
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic, = struct.unpack("<I", header[:4])
        if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            sys.exit(f"{path}: not a little-endian classic pcap file (pcapng is not read)")
        scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
        linktype, = struct.unpack("<I", header[20:24])
        if linktype != 1:
            sys.exit(f"{path}: link type {linktype}, expected Ethernet (tcpdump -i lo)")
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            sec, frac, caplen, _ = struct.unpack("<IIII", record)
            frame = f.read(caplen)
            if len(frame) < 14 + 20 + 20:
                continue
            if struct.unpack(">H", frame[12:14])[0] != ETHERTYPE_IPV4:
                continue
            ip = frame[14:]
            if ip[9] != 6:  # TCP
                continue
            ihl = (ip[0] & 0x0F) * 4
            total, = struct.unpack(">H", ip[2:4])
            tcp = ip[ihl:]
            if len(tcp) < 20:
                continue
            sport, dport = struct.unpack(">HH", tcp[:4])
            thl = (tcp[12] >> 4) * 4
            payload = total - ihl - thl
            if payload > 0:
                yield sec + frac * scale, sport, dport, payload


def percentiles(values, marks=(50, 90, 95, 99, 99.9)):
    if not values:
        return "none"
    values = sorted(values)
    n = len(values)
    cells = [f"p{m}={values[min(n - 1, int(n * m / 100))] * 1e6:.0f}" for m in marks]
    return " ".join(cells) + f" (n={n})"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[2])
    path, proxy = sys.argv[1], int(sys.argv[2])
    upstream = int(sys.argv[3]) if len(sys.argv) == 4 else None
    waiting = {}  # client port -> ("request" | "answer", time)
    sent_up = {}  # proxy's upstream port -> time of its request
    proxy_side, client_side, upstream_side = [], [], []
    count = collections.Counter()
    for t, sport, dport, _ in segments(path):
        if dport == proxy:
            count["request segments"] += 1
            last = waiting.get(sport)
            if last and last[0] == "answer":
                client_side.append(t - last[1])
            if not last or last[0] == "answer":
                waiting[sport] = ("request", t)
        elif sport == proxy:
            count["answer segments"] += 1
            last = waiting.get(dport)
            if last and last[0] == "request":
                proxy_side.append(t - last[1])
                waiting[dport] = ("answer", t)
        elif upstream is not None and dport == upstream:
            sent_up[sport] = t
        elif upstream is not None and sport == upstream and dport in sent_up:
            upstream_side.append(t - sent_up.pop(dport))
    print("proxy   ", percentiles(proxy_side))
    print("client  ", percentiles(client_side))
    if upstream is not None:
        print("upstream", percentiles(upstream_side))
    print(", ".join(f"{k}: {v}" for k, v in sorted(count.items())))


if __name__ == "__main__":
    main()
