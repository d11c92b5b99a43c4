"""A backend that answers before it has read the request body.

Usage: early_answer.py MODE STATUS
Prints its port. For each connection it reads the request head, answers
STATUS (Connection: close) with the body "refused by the backend\\n" at
once, then, by MODE:
  reset  resets the connection (SO_LINGER 0): the body is never read;
  close  closes it with the body unread (the kernel answers the data
         still arriving with a reset);
  drain  shuts down its sending side and reads the body to the end.
"""
import socket
import struct
import sys
import threading

MODE, STATUS = sys.argv[1], int(sys.argv[2])
BODY = b"refused by the backend\n"
REASONS = {413: "Payload Too Large", 501: "Not Implemented"}


def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data:
            conn.close()
            return
        head += data
    reason = REASONS.get(STATUS, "Refused")
    conn.sendall(
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (STATUS, reason.encode(), len(BODY), BODY)
    )
    if MODE == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    elif MODE == "close":
        conn.close()
    else:
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        conn.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
