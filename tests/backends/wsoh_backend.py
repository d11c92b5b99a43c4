"""A WebSocket-over-HTTP backend built on gripcontrol's WebSocketContext.

Prints its port, then serves POSTs of application/websocket-events:
accepts OPEN (unless the `Auth-Key` header is missing or wrong: 403 with a
JSON body, as an API gateway would), subscribes the connection to
`room` (or ?channel=), sets meta `user`, echoes TEXT/BINARY, closes on
"close me", and logs every request as a JSON line to the file named by
argv[1] (events, Connection-Id, Meta-*, Auth-Key, Grip-Sig). With
`--hold FILE`, a request carrying CLOSE, DISCONNECT or the message "hold"
is answered only once FILE exists: a slow backend, released by the test.
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from gripcontrol import WebSocketContext, decode_websocket_events, encode_websocket_events
from gripcontrol.websocketevent import WebSocketEvent

LOG = sys.argv[1]
HOLD = sys.argv[3] if sys.argv[2:3] == ["--hold"] else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        events = decode_websocket_events(body)
        meta = {k[5:].lower(): v for k, v in self.headers.items() if k.lower().startswith("meta-")}
        with open(LOG, "a") as f:
            f.write(json.dumps({
                "events": [e.type for e in events],
                "contents": [(e.content or b"").decode("latin-1") for e in events],
                "connection_id": self.headers.get("Connection-Id"),
                "path": self.path,
                "origin": self.headers.get("Origin"),
                "meta": meta,
                "auth_key": self.headers.get("Auth-Key"),
                "grip_sig": self.headers.get("Grip-Sig"),
                "content_type": self.headers.get("Content-Type"),
            }) + "\n")
        if self.headers.get("Auth-Key") != "supersecret":
            self.reply(403, [("Content-Type", "application/json")],
                       b'{"message":"Invalid authentication credentials"}')
            return
        if HOLD and any(e.type in ("CLOSE", "DISCONNECT") or e.content == b"hold" for e in events):
            deadline = time.time() + 60
            while not os.path.exists(HOLD) and time.time() < deadline:
                time.sleep(0.02)
        ctx = WebSocketContext(self.headers.get("Connection-Id"), meta, events)
        headers = [("Content-Type", "application/websocket-events")]
        out = []
        if ctx.is_opening():
            ctx.accept()
            channel = parse_qs(urlparse(self.path).query).get("channel", ["room"])[0]
            ctx.subscribe(channel)
            headers.append(("Sec-WebSocket-Extensions", "grip"))
            headers.append(("Set-Meta-User", "alice"))
            ka = parse_qs(urlparse(self.path).query).get("ka")
            if ka:
                headers.append(("Keep-Alive-Interval", ka[0]))
            out.append(WebSocketEvent("OPEN"))
        while ctx.can_recv():
            try:
                msg = ctx.recv()
            except IOError:
                break  # DISCONNECT
            if msg is None:
                ctx.close()
                break
            if msg == "close me":
                ctx.close(4002)
                break
            if isinstance(msg, bytes):
                ctx.send_binary(msg)
            else:
                ctx.send("echo: " + msg)
        out.extend(ctx.out_events)
        if ctx.closed:
            code = ctx.out_close_code or 1000
            out.append(WebSocketEvent("CLOSE", code.to_bytes(2, "big")))
        self.reply(200, headers, encode_websocket_events(out))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
