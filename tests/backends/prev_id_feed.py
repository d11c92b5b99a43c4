"""A GRIP backend that streams a feed by the prev-id scheme (as the
reconnect-storm benchmark's backend, and Pushpin's docs, describe it).

Usage: prev_id_feed.py
Prints its port. It keeps the feed's items (ids 1, 2, ...) in a list:
  GET /s        holds a stream on channel "feed" with prev-id the last id
                (0 when empty) and a next link to /next;
  GET /next     answers from Grip-Last ("feed; last-id=X") with the items
                after X and a new prev-id (the last id), and the same hold;
                while armed (POST /arm) it waits for POST /release first;
  POST /add     appends the next item (its id in the answer's body);
  GET /plain    holds a stream on "feed" without prev-id (a watcher);
  GET /nexts    the Grip-Last of each /next request so far, one a line.
Items are "ID\\n" each; the test publishes them to corepin itself.
"""
import http.server
import socketserver
import sys
import threading

lock = threading.Lock()
items = []
lasts = []
gate = threading.Event()
gate.set()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body, headers=()):
        self.send_response(200)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def hold(self, after):
        with lock:
            new = [i for i in items if i > after]
            last = items[-1] if items else 0
        body = "".join("%d\n" % i for i in new).encode()
        self.answer(
            body,
            [
                ("Grip-Hold", "stream"),
                ("Grip-Channel", "feed; prev-id=%d" % last),
                ("Grip-Link", "</next>; rel=next; timeout=120"),
            ],
        )

    def do_GET(self):
        if self.path == "/s":
            with lock:
                last = items[-1] if items else 0
            self.hold(last)
        elif self.path == "/next":
            grip_last = self.headers.get("Grip-Last", "")
            with lock:
                lasts.append(grip_last)
            gate.wait()
            after = 0
            for part in grip_last.split(";")[1:]:
                k, _, v = part.strip().partition("=")
                if k == "last-id":
                    after = int(v)
            self.hold(after)
        elif self.path == "/plain":
            self.answer(b"", [("Grip-Hold", "stream"), ("Grip-Channel", "feed")])
        elif self.path == "/nexts":
            with lock:
                body = "".join(l + "\n" for l in lasts).encode()
            self.answer(body)
        else:
            self.send_error(404)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        if self.path == "/add":
            with lock:
                items.append(len(items) + 1)
                body = b"%d" % items[-1]
            self.answer(body)
        elif self.path == "/arm":
            gate.clear()
            self.answer(b"")
        elif self.path == "/release":
            gate.set()
            self.answer(b"")
        else:
            self.send_error(404)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
