#!/usr/bin/env python3
"""Clients for bench/flood.sh: a flood of hostile ClientHellos at a fixed rate, and legitimate
clients that resume their sessions, each from its own loopback address.

  flood.py flood --connect HOST:PORT[,HOST:PORT] --rate N --duration S --kind tls13|tls12
                 [--repeat] [--identities N] [--bind ADDR]
      Each hello offers made-up ids (TLS 1.3: N random 32-byte PSK identities; TLS 1.2: a random
      32-byte session id), or with --repeat the same hello every time. The client waits for the
      server's first answer (so the server did all its work), then resets the connection.
  flood.py legit --connect HOST:PORT[,HOST:PORT] --tls 1.3|1.2 --duration S [--bind ADDR]
      Each connection offers the session of the one before, on the next server in turn, and
      closes cleanly (close_notify).
Both print one JSON line.
"""
import argparse
import json
import os
import socket
import ssl
import struct
import threading
import time


def u8(b):
    return struct.pack("!B", len(b)) + b


def u16(b):
    return struct.pack("!H", len(b)) + b


def u24(b):
    return struct.pack("!I", len(b))[1:] + b


def ext(kind, body):
    return struct.pack("!H", kind) + u16(body)


def client_hello(kind, identities, session_id):
    """A ClientHello that rustls accepts and answers: TLS 1.3 with PSK identities, or TLS 1.2
    with a session id to resume."""
    suites13 = [0x1301, 0x1302, 0x1303]
    suites12 = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8]
    suites = suites13 + suites12 if kind == "tls13" else suites12
    exts = [
        ext(0x0000, u16(b"\x00" + u16(b"localhost"))),
        ext(0x000A, u16(struct.pack("!HH", 0x001D, 0x0017))),
        ext(0x000B, u8(b"\x00")),
        ext(0x000D, u16(struct.pack("!HHHHH", 0x0403, 0x0804, 0x0401, 0x0807, 0x0503))),
        ext(0x0017, b""),
    ]
    if kind == "tls13":
        exts += [
            ext(0x002B, u8(struct.pack("!H", 0x0304))),
            ext(0x002D, u8(b"\x01")),
            ext(0x0033, u16(struct.pack("!H", 0x001D) + u16(os.urandom(32)))),
        ]
        ids = b"".join(u16(i) + struct.pack("!I", 12345) for i in identities)
        binders = b"".join(u8(os.urandom(32)) for _ in identities)
        exts.append(ext(0x0029, u16(ids) + u16(binders)))  # pre_shared_key: last
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + u8(session_id)
        + u16(b"".join(struct.pack("!H", s) for s in suites))
        + u8(b"\x00")
        + u16(b"".join(exts))
    )
    hs = b"\x01" + u24(body)
    return b"\x16\x03\x01" + u16(hs)


def targets(spec):
    out = []
    for t in spec.split(","):
        host, port = t.rsplit(":", 1)
        out.append((host, int(port)))
    return out


def flood(args):
    addrs = targets(args.connect)
    fixed = None
    if args.repeat:
        fixed = client_hello(args.kind, [b"R" * 32] * args.identities, b"S" * 32)
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "answered": 0, "errors": 0}
    start = time.monotonic()
    interval = 1.0 / args.rate
    total = int(args.rate * args.duration)

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= total:
                    return
                state["next"] += 1
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            hello = fixed or client_hello(
                args.kind,
                [os.urandom(32) for _ in range(args.identities)],
                os.urandom(32),
            )
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if args.bind:
                    s.bind((args.bind, 0))
                s.settimeout(5)
                s.connect(addrs[i % len(addrs)])
                s.sendall(hello)
                answered = len(s.recv(1)) > 0
                with lock:
                    state["sent"] += 1
                    state["answered"] += answered
            except OSError:
                with lock:
                    state["errors"] += 1
            finally:
                s.close()  # SO_LINGER 0: a reset, no TIME_WAIT

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    print(json.dumps({
        "kind": args.kind, "repeat": args.repeat, "sent": state["sent"],
        "answered": state["answered"], "errors": state["errors"],
        "rate": round(state["sent"] / elapsed, 1), "elapsed": round(elapsed, 2),
    }))


def legit(args):
    addrs = targets(args.connect)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    version = ssl.TLSVersion.TLSv1_3 if args.tls == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = version
    lock = threading.Lock()
    state = {"attempts": 0, "resumed": 0, "handshakes": 0, "errors": 0}
    stop = time.monotonic() + args.duration

    def worker(n):
        session = None
        i = n
        while time.monotonic() < stop:
            i += 1
            try:
                raw = socket.create_connection(
                    addrs[i % len(addrs)], timeout=5,
                    source_address=(args.bind, 0) if args.bind else None)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                while s.recv(4096):
                    pass
                with lock:
                    state["handshakes"] += 1
                    if session is not None:
                        state["attempts"] += 1
                        state["resumed"] += s.session_reused
                session = s.session
                try:
                    s.unwrap()
                except (OSError, ssl.SSLError):
                    pass
                s.close()
            except (OSError, ssl.SSLError):
                with lock:
                    state["errors"] += 1
                session = None
            time.sleep(args.pause)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    share = state["resumed"] / state["attempts"] if state["attempts"] else 0.0
    print(json.dumps({"tls": args.tls, **state, "resumed_share": round(share, 4)}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--connect", required=True)
    f.add_argument("--rate", type=float, default=2000)
    f.add_argument("--duration", type=float, default=5)
    f.add_argument("--kind", choices=["tls13", "tls12"], default="tls13")
    f.add_argument("--repeat", action="store_true")
    f.add_argument("--identities", type=int, default=4)
    f.add_argument("--threads", type=int, default=16)
    f.add_argument("--bind")
    g = sub.add_parser("legit")
    g.add_argument("--connect", required=True)
    g.add_argument("--tls", choices=["1.3", "1.2"], default="1.3")
    g.add_argument("--duration", type=float, default=5)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--pause", type=float, default=0.01)
    g.add_argument("--bind")
    args = p.parse_args()
    flood(args) if args.cmd == "flood" else legit(args)


if __name__ == "__main__":
    main()
