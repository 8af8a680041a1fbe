#!/usr/bin/env python3
"""Memory per idle connection, Portico vs nginx (127.0.0.1 only, bounded).

Opens N keep-alive client connections to a proxy, sends one request on each
(so each holds an upstream keep-alive too), leaves them idle, and reports the
proxy's RSS growth per connection. With --ws, the connections are WebSocket
upgrades to a tiny in-process WebSocket server instead, left idle after the 101.
With --tls, the keep-alive connections are HTTPS (certificate not checked).

usage: idle.py --port P --pids PID[,PID] [--conns N] [--ws | --tls]
"""
import argparse, asyncio, base64, hashlib, os, ssl, time

def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total

async def ws_server(port):
    """Accepts WebSocket handshakes and then keeps the sockets open, silent."""
    async def handle(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
        acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        await w.drain()
        try:
            await r.read()  # until the client goes away
        except asyncio.CancelledError:
            pass  # the server is closing: ending quietly spares asyncio's callback a traceback per socket
    return await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)

async def open_one(port, ws, tls, held, sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        if ws:
            w.write(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            ok = head.startswith(b"HTTP/1.1 101")
        else:
            w.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
            if length:
                await r.readexactly(length[0])
            ok = head.startswith(b"HTTP/1.1 200")
        held.append((r, w))
        return ok

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--ws", action="store_true")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ws-port", type=int, default=0, help="start the WebSocket server on this port")
    a = ap.parse_args()
    pids = [int(p) for p in a.pids.split(",")]
    srv = await ws_server(a.ws_port) if a.ws_port else None
    tls = None
    if a.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    before = rss_kib(pids)
    held, sem = [], asyncio.Semaphore(200)
    t = time.time()
    oks = await asyncio.wait_for(asyncio.gather(*(open_one(a.port, a.ws, tls, held, sem) for _ in range(a.conns)), return_exceptions=True), 120)
    good = sum(1 for o in oks if o is True)
    await asyncio.sleep(2)
    after = rss_kib(pids)
    print(f"conns={a.conns} ok={good} rss_before_kib={before} rss_after_kib={after} "
          f"kib_per_conn={(after - before) / max(good, 1):.2f} open_secs={time.time() - t:.1f}")
    for r, w in held:
        w.close()
    if srv:
        srv.close()

asyncio.run(main())
