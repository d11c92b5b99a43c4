"""The EventSource browser test's backend (behind corepin, so the page and
its stream share an origin).

Prints its port, then serves /page.html (tests/browser/eventsource.html);
answers GET /events with a GRIP stream hold on channel `feed` as
text/event-stream, appending the request's Last-Event-ID (or null) as
one JSON line to the file named by argv[2]; takes POST /report, whose
body it writes to the file named by argv[1] (written beside it, then
renamed, so it appears whole).
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "browser", "eventsource.html")
REPORT = sys.argv[1]
LOG = sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, fields, body):
        self.send_response(status)
        for k, v in fields:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/page.html":
            with open(PAGE, "rb") as f:
                self.reply(200, [("Content-Type", "text/html; charset=utf-8")], f.read())
        elif path == "/events":
            with open(LOG, "a") as f:
                f.write(json.dumps(self.headers.get("Last-Event-ID")) + "\n")
            # retry: the browser waits a second before reconnecting.
            self.reply(
                200,
                [
                    ("Content-Type", "text/event-stream"),
                    ("Cache-Control", "no-cache"),
                    ("Grip-Hold", "stream"),
                    ("Grip-Channel", "feed"),
                ],
                b"retry: 1000\n\n",
            )
        else:
            self.reply(404, [("Content-Type", "text/plain")], b"not found\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        tmp = REPORT + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.rename(tmp, REPORT)
        self.reply(200, [("Content-Type", "text/plain")], b"ok\n")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
