"""Send N keep-alive GET requests over C connections (one in flight per
connection) and wait for every response: a fixed amount of work, for
counting instructions (bench/instructions.sh). Usage: ka_client.py PORT N C"""
import selectors
import socket
import sys

port, n, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ka_client\r\nAccept: */*\r\n\r\n"
sel = selectors.DefaultSelector()
pending = {}
sent = done = 0
for _ in range(min(conns, n)):
    s = socket.create_connection(("127.0.0.1", port))
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
