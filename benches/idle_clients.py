#!/usr/bin/env python3
"""Holds N idle keep-alive client connections to a proxy.

Each connection sends one GET, reads the whole response, then stays open and
silent. Prints "ready N" when all are held, then waits until stdin closes or
it is signalled. Connections spread over source addresses 127.0.0.2.. so more
than one address's ephemeral ports can be used.
Usage: idle_clients.py PORT N [PATH]
"""
import socket
import sys


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/"
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    held = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.0.{2 + i % 250}", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"connection {i} closed before answering")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += s.recv(65536)
        held.append(s)
    print(f"ready {len(held)}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
