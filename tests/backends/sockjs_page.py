"""The SockJS browser test's page server (a different origin from corepin).

Prints its port, then serves /page.html (tests/browser/sockjs.html),
/cors.html (tests/browser/cors.html),
/sockjs.min.js (sockjs-client's browser bundle from tests/clients'
node_modules) and takes POST /report, whose body it writes to the file
named by argv[1] (written beside it, then renamed, so it appears whole).
"""
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {
    "/page.html": (os.path.join(ROOT, "browser", "sockjs.html"), "text/html; charset=utf-8"),
    "/cors.html": (os.path.join(ROOT, "browser", "cors.html"), "text/html; charset=utf-8"),
    "/sockjs.min.js": (
        os.path.join(ROOT, "clients", "node_modules", "sockjs-client", "dist", "sockjs.min.js"),
        "application/javascript",
    ),
}
REPORT = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path not in FILES:
            self.reply(404, "text/plain", b"not found\n")
            return
        name, ctype = FILES[path]
        with open(name, "rb") as f:
            self.reply(200, ctype, f.read())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        tmp = REPORT + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.rename(tmp, REPORT)
        self.reply(200, "text/plain", b"ok\n")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
