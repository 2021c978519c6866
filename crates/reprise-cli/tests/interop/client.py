"""The interop suite's Python `ssl` client: a chain of sequential connections, each offering the
session the previous one left, each closed as --mode says. --connect takes one address, or
several separated by commas: connection N goes to the Nth, round-robin. It prints one line
per connection: "N client=yes|no server=yes|no|?", where client is what the ssl module reports
(session_reused) and server what the built-in responder's body says ("?" without one).

Usage: python3 client.py --connect HOST:PORT [--servername localhost] [--ca FILE]
                         [--tls 1.2|1.3] [--mode notify|fin|rst|server] [--count 6]
"""

import argparse
import re
import socket
import ssl
import struct
import sys


def one(args, addr, ctx, session):
    host, port = addr.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=args.servername, session=session)
    close = "Connection: close\r\n" if args.mode == "server" else ""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {args.servername}\r\n{close}\r\n".encode())
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            length = re.search(rb"(?i)content-length:\s*(\d+)", data[:end])
            if length and len(data) >= end + 4 + int(length.group(1)):
                break
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("client.py: connection closed before the response")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit(f"client.py: unexpected response {data[:40]!r}")
    resumed, session = sock.session_reused, sock.session
    if args.mode == "notify":
        # close_notify, then FIN. A server may close without answering with its own.
        try:
            sock.unwrap().close()
        except ssl.SSLEOFError:
            sock.close()
    elif args.mode == "fin":
        sock.close()  # FIN alone, as urllib3 closes
    elif args.mode == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    else:  # server: read to the server's close_notify, then close
        while sock.recv(4096):
            pass
        sock.close()
    server = "?"
    if b"resumed: yes" in data:
        server = "yes"
    elif b"resumed: no" in data:
        server = "no"
    return resumed, server, session


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--servername", default="localhost")
    parser.add_argument("--ca", default="")
    parser.add_argument("--tls", choices=["1.2", "1.3"], default="1.3")
    parser.add_argument("--mode", choices=["notify", "fin", "rst", "server"], default="notify")
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.ca:
        ctx.load_verify_locations(args.ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[args.tls]
    ctx.minimum_version = ctx.maximum_version = version
    session = None
    addrs = args.connect.split(",")
    for i in range(1, args.count + 1):
        resumed, server, session = one(args, addrs[(i - 1) % len(addrs)], ctx, session)
        print(f"{i} client={'yes' if resumed else 'no'} server={server}", flush=True)


if __name__ == "__main__":
    main()
