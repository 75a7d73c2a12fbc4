#!/usr/bin/env python3
"""Hostile and careless clients for the soak (scripts/soak.sh), stdlib only, bounded in time
and in connections: slowloris heads (408 expected), stalled bodies (408), stalled readers
(cut by the send timeout) and requests aborted mid-head, mid-body and mid-response.

usage: clients.py HOST PORT SECONDS THREADS_PER_KIND
Prints one JSON line: per kind, connections made and how each ended.
"""
import json
import socket
import sys
import threading
import time

HOST, PORT, SECONDS, PER_KIND = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
DEADLINE = time.monotonic() + SECONDS
STATS = {}
LOCK = threading.Lock()


def note(kind, outcome):
    with LOCK:
        STATS.setdefault(kind, {}).setdefault(outcome, 0)
        STATS[kind][outcome] += 1


def connect(rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(1.0)
    s.connect((HOST, PORT))
    return s


def status_of(data):
    if data.startswith(b"HTTP/1.1 "):
        return "status_" + data[9:12].decode("ascii", "replace")
    return "closed" if not data else "other"


def trickle(s, payload, every):
    """Send payload a byte at a time; what the server sent when it cut us off."""
    got = b""
    for b in payload:
        if time.monotonic() > DEADLINE:
            return "soak_over"
        try:
            s.sendall(bytes([b]))
        except OSError:
            return status_of(got)
        end = time.monotonic() + every
        while time.monotonic() < end:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return status_of(got)
            if not chunk:
                return status_of(got)
            got += chunk
    return "completed"


def slowloris():
    s = connect()
    head = b"GET /pass/small.txt HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 10000
    note("slowloris", trickle(s, head, 0.5))
    s.close()


def slow_body():
    """Ten bytes of a body, then a pause longer than the body timeout: 408 expected."""
    s = connect()
    s.sendall(b"POST /upload/slow HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000\r\n\r\n")
    note("slow_body", stall(s, b"x" * 10, 8.0))
    s.close()


def stall(s, first, pause):
    """Send `first`, then wait up to `pause` seconds for what the server says."""
    got = b""
    try:
        s.sendall(first)
    except OSError:
        return "closed"
    end = min(time.monotonic() + pause, DEADLINE)
    while time.monotonic() < end:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    if time.monotonic() >= DEADLINE and not got:
        return "soak_over"
    return status_of(got)


def slow_reader():
    """Read 16 KB of a 16 MB response, stop reading for longer than the send timeout, then
    read on: "cut" when the body ends early (the server gave up on us)."""
    s = connect(rcvbuf=4096)
    s.sendall(b"GET /pass/big.bin HTTP/1.1\r\nHost: soak\r\n\r\n")
    got = 0
    stalled = False
    outcome = "soak_over"
    while time.monotonic() < DEADLINE:
        if got >= 16 * 1024 and not stalled:
            time.sleep(8)
            stalled = True
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            outcome = "reset"
            break
        if not chunk:
            outcome = "cut" if got < 16 * 1024 * 1024 else "complete"
            break
        got += len(chunk)
    note("slow_reader", outcome)
    s.close()


def aborter(i):
    s = connect()
    kind = i % 3
    try:
        if kind == 0:  # read the head of a large response, then hang up
            s.sendall(b"GET /pass/big.bin HTTP/1.1\r\nHost: soak\r\n\r\n")
            s.recv(2048)
        elif kind == 1:  # half a body, then hang up
            s.sendall(b"POST /upload/abort HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n")
            s.sendall(b"y" * 5000)
        else:  # half a head, then hang up
            s.sendall(b"GET /cached/kpis.json HTTP/1.1\r\nHost: so")
        note("aborted", "kind_%d" % kind)
    except OSError:
        note("aborted", "error")
    s.close()


def loop(fn, *args):
    while time.monotonic() < DEADLINE:
        try:
            fn(*args)
        except OSError:
            note(fn.__name__, "connect_error")
            time.sleep(0.5)


def loop_aborts():
    i = 0
    while time.monotonic() < DEADLINE:
        try:
            aborter(i)
        except OSError:
            note("aborted", "connect_error")
        i += 1
        time.sleep(0.05)


threads = []
for _ in range(PER_KIND):
    for fn in (slowloris, slow_body, slow_reader):
        threads.append(threading.Thread(target=loop, args=(fn,), daemon=True))
    threads.append(threading.Thread(target=loop_aborts, daemon=True))
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=max(0.0, DEADLINE - time.monotonic()) + 30)
print(json.dumps(STATS, sort_keys=True))
