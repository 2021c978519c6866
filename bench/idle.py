#!/usr/bin/env python3
"""Idle connections for bench/compare.sh: holds COUNT established TLS connections open to one
server, so that it carries a realistic connection table while another client measures it.

  idle.py HOST PORT COUNT

Each connection completes a TLS 1.2 handshake (the first one full, the others resuming its
session, so that setting them up costs the server little), sends nothing more and reads nothing:
an HTTP client between requests. Prints "ready N" once all are established; then, on SIGUSR1 or
SIGTERM, checks each one without blocking (a connection the server closed reads as its end),
prints "open M" (M of the N still open) and exits. Certificates are not verified (the bench
certificate is throwaway).
"""
import resource
import signal
import socket
import ssl
import sys
import time


def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # before all are up: just go
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"idle.py: {count} connections need {want} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    conns = []
    session = None
    deadline = time.monotonic() + 120
    failures = 0
    while len(conns) < count:
        if time.monotonic() > deadline:
            sys.exit(f"idle.py: only {len(conns)} of {count} connections established in 120 s ({failures} failed)")
        try:
            raw = socket.create_connection((host, port), timeout=10)
            tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        except OSError:
            failures += 1
            if failures > 100:
                sys.exit(f"idle.py: {failures} connections failed; {len(conns)} established")
            time.sleep(0.01)
            continue
        if session is None:
            session = tls.session
        conns.append(tls)
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print(f"ready {len(conns)}", flush=True)
    while not stop:
        time.sleep(0.1)
    still = 0
    for tls in conns:
        tls.setblocking(False)
        try:
            still += 0 if tls.recv(1) == b"" else 1  # data: the server said something, still open
        except (ssl.SSLWantReadError, BlockingIOError):
            still += 1
        except (OSError, ssl.SSLError):
            pass
    print(f"open {still}", flush=True)


if __name__ == "__main__":
    main()
