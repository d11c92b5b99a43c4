"""Talks to corepin's ZeroMQ interfaces the way Pushpin's peers do: pyzmq
sockets, and the pubcontrol/gripcontrol libraries' ZeroMQ publishing.

Usage: zmq_client.py MODE ...
  push URI CHANNEL CONTENT tnet|tnet-T|json     one PUSH message
  xpub URI CHANNEL CONTENT                      XPUB: wait for corepin's SUB to
                                                subscribe to CHANNEL, publish
                                                (channel as topic), then report
                                                the unsubscription
  xpub-bind URI CHANNEL CONTENT                 the same, binding URI (for
                                                push_in_sub_connect)
  cmd URI JSON [dealer]                         one command (JSON, strings sent
                                                as bytes; "@raw:..." sends text
                                                as is); prints the answer as JSON
  stats URI                                     SUB to everything; prints each
                                                message as a JSON line
  grip-push URI CHANNEL CONTENT                 pubcontrol, zmq_push_uri
  grip-discover URI CHANNEL CONTENT             gripcontrol, control_zmq_uri
                                                (get-zmq-uris discovery); both
                                                print "ok", then wait for stdin
                                                to close
  grip-sub URI CHANNEL CONTENT                  pubcontrol, zmq_pub_uri with
                                                require_subscribers
Every wait gives up after 20 s (exit 2).
"""
import json
import sys
import time

import tnetstring
import zmq

TIMEOUT_MS = 20000


def to_bytes(v):
    """JSON values as tnetstring values: strings become bytes."""
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, list):
        return [to_bytes(x) for x in v]
    if isinstance(v, dict):
        return {k.encode(): to_bytes(x) for k, x in v.items()}
    return v


def from_bytes(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    if isinstance(v, list):
        return [from_bytes(x) for x in v]
    if isinstance(v, dict):
        return {from_bytes(k): from_bytes(x) for k, x in v.items()}
    return v


def fail(why):
    print("timeout: " + why, flush=True)
    sys.exit(2)


def main():
    mode = sys.argv[1]
    ctx = zmq.Context.instance()
    if mode == "push":
        uri, channel, content, enc = sys.argv[2:6]
        s = ctx.socket(zmq.PUSH)
        s.connect(uri)
        item = {"channel": channel, "formats": {"http-stream": {"content": content}}}
        if enc == "json":
            msg = b"J" + json.dumps(item).encode()
        else:
            data = to_bytes(item)
            data[b"formats"][b"http-stream"][b"content"] = content.encode("utf-8", "surrogateescape")
            msg = (b"T" if enc == "tnet-T" else b"") + tnetstring.dumps(data)
        s.send(msg)
        s.close(linger=TIMEOUT_MS)
        # The send only queues the message for libzmq's I/O thread, which
        # may not even have connected yet. pyzmq does not terminate the
        # global context at interpreter exit, so without term() (which
        # waits, up to the linger, until the queue is handed to the peer)
        # a busy machine lets the process exit with the message unsent.
        ctx.term()
        print("sent", flush=True)
    elif mode in ("xpub", "xpub-bind"):
        uri, channel, content = sys.argv[2:5]
        s = ctx.socket(zmq.XPUB)
        if mode == "xpub-bind":
            s.bind(uri)
        else:
            s.connect(uri)
        s.rcvtimeo = TIMEOUT_MS
        want = b"\x01" + channel.encode()
        try:
            while s.recv() != want:
                pass
        except zmq.Again:
            fail("no subscription")
        print("sub " + channel, flush=True)
        item = {b"formats": {b"http-stream": {b"content": content.encode()}}}
        s.send_multipart([channel.encode(), tnetstring.dumps(item)])
        gone = b"\x00" + channel.encode()
        try:
            while s.recv() != gone:
                pass
        except zmq.Again:
            fail("no unsubscription")
        print("unsub " + channel, flush=True)
    elif mode == "cmd":
        uri, req = sys.argv[2:4]
        dealer = len(sys.argv) > 4 and sys.argv[4] == "dealer"
        s = ctx.socket(zmq.DEALER if dealer else zmq.REQ)
        s.rcvtimeo = TIMEOUT_MS
        s.connect(uri)
        if req.startswith("@raw:"):
            payload = req[5:].encode()
        else:
            payload = tnetstring.dumps(to_bytes(json.loads(req)))
        s.send_multipart([b"", payload] if dealer else [payload])
        try:
            parts = s.recv_multipart()
        except zmq.Again:
            fail("no answer")
        answer = parts[-1]
        if dealer:
            assert parts[0] == b"", parts
        print(json.dumps(from_bytes(tnetstring.loads(answer)), sort_keys=True), flush=True)
    elif mode == "stats":
        uri = sys.argv[2]
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(uri)
        print("ready", flush=True)
        while True:
            msg = s.recv()
            kind, rest = msg.split(b" ", 1)
            if rest[:1] == b"T":
                fields = from_bytes(tnetstring.loads(rest[1:]))
                enc = "tnetstring"
            elif rest[:1] == b"J":
                fields = json.loads(rest[1:])
                enc = "json"
            else:
                raise SystemExit("unknown stats encoding: %r" % msg)
            print(json.dumps({"type": kind.decode(), "enc": enc, "fields": fields}, sort_keys=True), flush=True)
    elif mode in ("grip-push", "grip-discover"):
        from gripcontrol import GripPubControl
        from pubcontrol import PubControl

        uri, channel, content = sys.argv[2:5]
        if mode == "grip-push":
            pub = PubControl({"zmq_push_uri": uri})
            from gripcontrol import HttpStreamFormat
            from pubcontrol import Item

            pub.publish(channel, Item(HttpStreamFormat(content)), blocking=True)
        else:
            pub = GripPubControl({"control_zmq_uri": uri})
            pub.publish_http_stream(channel, content, blocking=True)
        # The library closes its PUSH socket with linger 0, which drops
        # what is not sent yet: stay alive until the test has seen the
        # delivery (it closes stdin, or kills this process).
        print("ok", flush=True)
        sys.stdin.read()
    elif mode == "grip-sub":
        from gripcontrol import HttpStreamFormat
        from pubcontrol import Item, PubControl

        uri, channel, content = sys.argv[2:5]
        events = []
        pub = PubControl(
            {"zmq_pub_uri": uri, "require_subscribers": True},
            sub_callback=lambda kind, ch: events.append((kind, ch)),
        )
        deadline = time.time() + TIMEOUT_MS / 1000
        while ("sub", channel) not in events:
            if time.time() > deadline:
                fail("no subscription")
            time.sleep(0.01)
        print("sub " + channel, flush=True)
        pub.publish(channel, Item(HttpStreamFormat(content)), blocking=True)
        while ("unsub", channel) not in events:
            if time.time() > deadline:
                fail("no unsubscription")
            time.sleep(0.01)
        print("unsub " + channel, flush=True)
        pub.close()
    else:
        raise SystemExit("unknown mode " + mode)


main()
