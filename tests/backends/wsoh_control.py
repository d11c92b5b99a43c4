"""A WebSocket-over-HTTP backend that drives GRIP control messages through
gripcontrol's WebSocketContext and websocket_control_message (PyPI).

Prints its port, then serves. On OPEN (path /ws/<user>): accepts with the
grip extension, sets meta user=<user>, subscribes to "room" with filters
skip-self and var-subst. Each TEXT message from the client is a command:
  delay N TEXT  send-delayed TEXT after N s (replacing, and first sending,
                one pending)
  flush         flush-delayed
  ka-ping       keep-alive: a ping "ka" every second (interval mode)
  name NAME     set-meta name=NAME
  psub P        subscribe to every channel under the prefix P ("prefix": true)
  punsub P      unsubscribe from that prefix
  resume C ID   subscribe to C with "last-id": ID (corepin resumes the
                client after ID from channel history)
anything else is echoed back as "echo: <text>".
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gripcontrol import (
    WebSocketContext,
    decode_websocket_events,
    encode_websocket_events,
    websocket_control_message,
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        events = decode_websocket_events(body)
        meta = {k[5:].lower(): v for k, v in self.headers.items() if k.lower().startswith("meta-")}
        ctx = WebSocketContext(self.headers.get("Connection-Id"), meta, events)
        extra = []
        if ctx.is_opening():
            ctx.accept()
            user = self.path.rsplit("/", 1)[-1]
            ctx.send_control(websocket_control_message("set-meta", {"name": "user", "value": user}))
            ctx.send_control(websocket_control_message("set-meta", {"name": "name", "value": user.title()}))
            ctx.send_control(websocket_control_message(
                "subscribe", {"channel": "room", "filters": ["skip-self", "var-subst"]}))
            extra.append(("Sec-WebSocket-Extensions", "grip"))
        while ctx.can_recv():
            m = ctx.recv()
            if m is None:
                ctx.close()
                break
            if m.startswith("delay "):
                _, n, text = m.split(" ", 2)
                ctx.send_control(websocket_control_message(
                    "send-delayed", {"content": text, "timeout": int(n)}))
            elif m == "flush":
                ctx.send_control(websocket_control_message("flush-delayed"))
            elif m == "ka-ping":
                ctx.send_control(websocket_control_message(
                    "keep-alive", {"content": "ka", "message-type": "ping", "timeout": 1, "mode": "interval"}))
            elif m.startswith("psub "):
                ctx.send_control(websocket_control_message(
                    "subscribe", {"channel": m[5:], "prefix": True}))
            elif m.startswith("punsub "):
                ctx.send_control(websocket_control_message(
                    "unsubscribe", {"channel": m[7:], "prefix": True}))
            elif m.startswith("resume "):
                _, channel, last = m.split(" ", 2)
                ctx.send_control(websocket_control_message(
                    "subscribe", {"channel": channel, "last-id": last}))
            elif m.startswith("name "):
                ctx.send_control(websocket_control_message("set-meta", {"name": "name", "value": m[5:]}))
            else:
                ctx.send("echo: " + m)
        out = encode_websocket_events(ctx.out_events)
        self.send_response(200)
        self.send_header("Content-Type", "application/websocket-events")
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(srv.server_port, flush=True)
srv.serve_forever()
