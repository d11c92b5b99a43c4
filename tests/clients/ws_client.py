"""A WebSocket client session with the real `websockets` library.

Usage: ws_client.py URL [-H Name:Value]... ACTION...
ACTION, run in order: --send MSG | --recv N | --close CODE
With no --close, it waits for the server to close. Prints one JSON object:
{"status": 101 or the refusing status, "body": refusal body, "received":
[...], "close": [code, reason] or null}.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def main():
    args = sys.argv[1:]
    url = args.pop(0)
    headers, actions = [], []
    while args:
        a = args.pop(0)
        if a == "-H":
            k, v = args.pop(0).split(":", 1)
            headers.append((k, v.strip()))
        else:
            actions.append((a, args.pop(0)))
    out = {"status": 101, "body": None, "received": [], "close": None}
    try:
        async with connect(url, additional_headers=headers, compression=None, open_timeout=10) as ws:
            closed_by_us = False
            try:
                for kind, value in actions:
                    if kind == "--send":
                        await ws.send(value)
                    elif kind == "--recv":
                        for _ in range(int(value)):
                            m = await asyncio.wait_for(ws.recv(), 10)
                            out["received"].append(m if isinstance(m, str) else "bin:" + m.hex())
                    elif kind == "--close":
                        await ws.close(int(value), "client done")
                        closed_by_us = True
                if not closed_by_us:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed:
                pass
            except asyncio.TimeoutError:
                out["timeout"] = True
            if ws.close_code is not None:
                out["close"] = [ws.close_code, ws.close_reason]
    except InvalidStatus as e:
        out["status"] = e.response.status_code
        out["body"] = e.response.body.decode("utf-8", "replace")
    print(json.dumps(out))


asyncio.run(main())
