"""keepalive.py PORT PATH N [gzip]: N GETs of PATH one after another on one keep-alive connection
to 127.0.0.1:PORT, each response read whole (Content-Length framing, which every bench path
has), as callgrind.sh's load. Prints the count of each status to stderr."""
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
gz = len(sys.argv) > 4
s = socket.create_connection(("127.0.0.1", port))
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + ("Accept-Encoding: gzip\r\n" if gz else "") + "\r\n"
buf = b""
codes = {}
sent = 0
def read_one():
    global buf
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d: raise SystemExit("closed")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    code = lines[0].split()[1]
    cl = 0
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        if k.strip().lower() == b"content-length": cl = int(v)
    while len(rest) < cl:
        d = s.recv(65536)
        if not d: raise SystemExit("closed")
        rest += d
    buf = rest[cl:]
    codes[code] = codes.get(code, 0) + 1
for i in range(n):
    s.sendall(req.encode()); read_one()
print(codes, file=sys.stderr)
