"""A plain WebSocket backend (Python `websockets`), printing its port.

Paths: /echo echoes every message; /grip answers with the `grip`
extension, subscribes the connection to channel `g` with a control message
and sends `m:welcome` (and drops messages without the prefix); /gripcid
does the same after first sending `m:cid=` and the Connection-Id corepin
sent with the handshake; /gripresume subscribes to `r` with `last-id` set
to the client's Last-Event-ID header (when it sent one) and sends
`m:subscribed`; /bye closes
at once with 4001. With CERT KEY arguments it serves wss (TLS).
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.server import serve


def add_grip(connection, request, response):
    if request.path.startswith("/grip"):
        response.headers["Sec-WebSocket-Extensions"] = "grip"
    return response


async def handler(ws):
    path = ws.request.path
    if path.startswith("/bye"):
        await ws.close(4001, "backend says bye")
        return
    if path.startswith("/gripcid"):
        await ws.send("m:cid=" + ws.request.headers.get("Connection-Id", ""))
    if path.startswith("/gripresume"):
        sub = {"type": "subscribe", "channel": "r"}
        if ws.request.headers.get("Last-Event-ID"):
            sub["last-id"] = ws.request.headers["Last-Event-ID"]
        await ws.send("c:" + json.dumps(sub))
        await ws.send("m:subscribed")
    elif path.startswith("/grip"):
        await ws.send('c:{"type":"subscribe","channel":"g"}')
        await ws.send("m:welcome")
        await ws.send("not for the client")
    async for message in ws:
        await ws.send(("m:" if path.startswith("/grip") else "") + message if isinstance(message, str) else message)


async def main():
    tls = None
    if len(sys.argv) == 3:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[1], sys.argv[2])
    async with serve(handler, "127.0.0.1", 0, process_response=add_grip, compression=None, ssl=tls) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


asyncio.run(main())
