#!/usr/bin/env python3
"""A TCP relay that holds every chunk for a fixed delay in each direction: round-trip delay in
user space, for a kernel without netem.

    delay-relay.py LISTEN_PORT TARGET_HOST:TARGET_PORT DELAY_MS

Listens on 127.0.0.1:LISTEN_PORT; each connection is relayed to the target, every chunk read
from one side written to the other DELAY_MS later, in order (a chunk's delay does not add to
the next one's: the relay holds a queue per direction, each entry with its due time). A
half-close is passed on after the same delay. Used by bench/early.sh: 10 ms each way, 20 ms of
round trip.
"""
import asyncio
import sys


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def read_side():
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def write_side():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read_side(), write_side())
    except (ConnectionError, OSError):
        pass


async def handle(client_r, client_w, target, delay):
    host, port = target
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(
        pipe(client_r, server_w, delay), pipe(server_r, client_w, delay)
    )
    for w in (client_w, server_w):
        w.close()


async def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    listen = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    delay = float(sys.argv[3]) / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, (host, int(port)), delay), "127.0.0.1", listen
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
