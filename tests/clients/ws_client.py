"""A WebSocket client session with the real `websockets` library.

Usage: ws_client.py URL [-H Name:Value]... [--clients N] [--ready] ACTION...
ACTION, run in order: --send MSG | --recv N | --close CODE
With no --close, it waits for the server to close. Prints one JSON object:
{"status": 101 or the refusing status, "body": refusal body, "received":
[...], "close": [code, reason] or null}.

--clients N runs N such sessions at once in this one process (one
interpreter start, however many clients) and prints a JSON list of their
objects. --ready prints a line `ready` once the interpreter and its imports
are up, before connecting: a test times corepin from there, not the
interpreter's start on a loaded machine.
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
    clients, ready = None, False
    while args:
        a = args.pop(0)
        if a == "-H":
            k, v = args.pop(0).split(":", 1)
            headers.append((k, v.strip()))
        elif a == "--clients":
            clients = int(args.pop(0))
        elif a == "--ready":
            ready = True
        else:
            actions.append((a, args.pop(0)))
    if ready:
        print("ready", flush=True)
    if clients is None:
        print(json.dumps(await session(url, headers, actions)))
    else:
        outs = await asyncio.gather(*(session(url, headers, actions) for _ in range(clients)))
        print(json.dumps(outs))


async def session(url, headers, actions):
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
    return out


asyncio.run(main())
