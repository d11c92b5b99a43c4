"""Many WebSocket clients at once, with the real `websockets` library.

Usage: ws_many.py URL N [-H Name:Value]...
Opens N connections, prints "open" once all are open, then waits for one
message on each and prints "received"; then waits for every connection to
be closed by the server and prints one JSON object: {"closes": [[code,
reason] or null, ...], "messages": [first message of each]}. A client never
closes on its own (close_timeout=None): a server that sends its close frame
but keeps the connection open leaves that client waiting, and after 20 s
it is reported as null.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def main():
    args = sys.argv[1:]
    url, n = args.pop(0), int(args.pop(0))
    headers = []
    while args:
        if args.pop(0) == "-H":
            k, v = args.pop(0).split(":", 1)
            headers.append((k, v.strip()))
    conns = [
        await connect(url, additional_headers=headers, compression=None,
                      open_timeout=10, close_timeout=None, ping_interval=None)
        for _ in range(n)
    ]
    print("open", flush=True)
    messages = await asyncio.gather(*(asyncio.wait_for(c.recv(), 20) for c in conns))
    print("received", flush=True)

    async def closed(c):
        try:
            while True:
                await c.recv()
        except ConnectionClosed:
            return [c.close_code, c.close_reason]

    async def within(c):
        try:
            return await asyncio.wait_for(closed(c), 20)
        except asyncio.TimeoutError:
            return None

    closes = await asyncio.gather(*(within(c) for c in conns))
    print(json.dumps({"closes": closes, "messages": list(messages)}), flush=True)


asyncio.run(main())
