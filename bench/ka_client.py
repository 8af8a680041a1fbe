"""Send N keep-alive GET requests over C connections (one in flight per
connection) and wait for every response: a fixed amount of work, for
counting instructions (bench/instructions.sh). Usage: ka_client.py PORT N C [close] [tls]
With `close`, every request goes on a new connection and says
`Connection: close` (C at a time); with `tls`, the connections are TLS 1.3
(certificate not checked), each with a full handshake."""
import concurrent.futures
import selectors
import socket
import ssl
import sys

port, n, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
close, tls = "close" in sys.argv[4:], "tls" in sys.argv[4:]
req = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ka_client\r\nAccept: */*\r\n\r\n"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_3


def connect():
    s = socket.create_connection(("127.0.0.1", port))
    return ctx.wrap_socket(s, server_hostname="localhost") if tls else s


def one_closed(_):
    """One request on a new connection, read until the server closes it."""
    s = connect()
    s.sendall(req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    if not got.startswith(b"HTTP/1.1 200"):
        sys.exit(f"ka_client: unexpected answer {got[:80]!r}")
    return 1


if close:
    with concurrent.futures.ThreadPoolExecutor(conns) as pool:
        print(sum(pool.map(one_closed, range(n))))
    sys.exit(0)
sel = selectors.DefaultSelector()
pending = {}
sent = done = 0
for _ in range(min(conns, n)):
    s = connect()
    s.sendall(req)
    sent += 1
    pending[s] = b""
    sel.register(s, selectors.EVENT_READ)
while done < n:
    for key, _ in sel.select(timeout=30):
        s = key.fileobj
        data = s.recv(65536)
        if not data:
            sys.exit("ka_client: connection closed early")
        buf = pending[s] + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            pending[s] = buf
            continue
        head = buf[:end].lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        if len(buf) < end + 4 + length:
            pending[s] = buf
            continue
        pending[s] = buf[end + 4 + length:]
        done += 1
        if sent < n:
            s.sendall(req)
            sent += 1
print(done)
