"""An HTTPS backend (Python's http.server behind the ssl module), printing
its port. Usage: tls_http.py CERT KEY

Paths: /hold answers with GRIP instructions, holding the client as a
stream on channel `tls` (body `stream open\n`); /link holds a stream on
`tls` whose next link is the relative /next; /next answers
`next over tls\n` and closes the stream (a GRIP hold on `tls` ending with
keep-alive off); /conns answers `connections=N`, the TLS connections
accepted so far (handshakes done; each connection is one handler, however
many requests it carries); anything else answers 200 with `tls backend PATH
proto=X-Forwarded-Proto` and the request body after it. Keep-alive, so a
pooled connection is reused.
"""
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


CONNECTIONS = 0
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        global CONNECTIONS
        with LOCK:
            CONNECTIONS += 1
        super().setup()

    def log_message(self, *args):
        pass

    def answer(self, body, headers=()):
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.handle_any(b"")

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.handle_any(self.rfile.read(n))

    def handle_any(self, body):
        path = self.path
        if path.startswith("/hold"):
            self.answer("stream open\n", [("Grip-Hold", "stream"), ("Grip-Channel", "tls")])
        elif path.startswith("/link"):
            self.answer(
                "linked\n",
                [("Grip-Hold", "stream"), ("Grip-Channel", "tls"), ("Grip-Link", "</next>; rel=next; timeout=1")],
            )
        elif path.startswith("/next"):
            self.answer("next over tls\n")
        elif path.startswith("/conns"):
            with LOCK:
                n = CONNECTIONS
            self.answer(f"connections={n}")
        else:
            proto = self.headers.get("X-Forwarded-Proto")
            self.answer(f"tls backend {path} proto={proto}" + body.decode())


def main():
    cert, key = sys.argv[1], sys.argv[2]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


main()
