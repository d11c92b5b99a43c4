#!/usr/bin/env python3
"""Runs tests/pushpin/routes.cases through a real Pushpin and writes what it
did to tests/pushpin/routes.table, the expectations tests/pushpin_routes.rs
holds corepin's route parsing and selection to.

Needs Debian's `pushpin` (1.36 here) and `zurl`: apt-get install -y pushpin.
Run it from anywhere: python3 tests/pushpin/record_routes.py
Each case gets its own Pushpin (its own routes file) and every target
127.0.0.1:N in it gets a local backend that answers with its N, the path and
Host it was sent, and the X-* headers it received. Pushpin's warnings about
the lines it skipped are recorded too.
"""

import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "routes.cases")
TABLE = os.path.join(HERE, "routes.table")
TARGET = re.compile(r"127\.0\.0\.1:([1-9]\d?)\b")


def parse_cases(path):
    cases = []
    for raw in open(path, encoding="utf-8").read().split("\n"):
        if raw.startswith("#") or not raw.strip():
            continue
        if raw.startswith("case "):
            cases.append({"name": raw[5:].strip(), "routes": [], "requests": []})
        elif raw == "route" or raw.startswith("route "):
            cases[-1]["routes"].append(raw[6:])
        elif raw.startswith("request "):
            parts = raw.split(" ")
            kind, host, path = parts[1], parts[2], parts[3]
            headers = [tuple(h.split(":", 1)) for h in parts[4:]]
            cases[-1]["requests"].append((kind, host, path, headers))
        else:
            sys.exit("routes.cases: cannot read: " + raw)
    return cases


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


class Backend(socketserver.BaseRequestHandler):
    """Answers any request (or WebSocket handshake) with its own name."""

    def handle(self):
        head, _ = read_head(self.request)
        lines = head.split("\r\n")
        if len(lines[0].split(" ")) < 2:
            return
        path = lines[0].split(" ")[1]
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), []).append(value.strip())
        seen = {
            "target": self.server.name,
            "path": path,
            "host": ",".join(fields.get("host", [])),
            "headers": {k: ",".join(v) for k, v in sorted(fields.items()) if k.startswith("x-test") or k.startswith("x-remove")},
        }
        body = json.dumps(seen, sort_keys=True).encode()
        key = fields.get("sec-websocket-key")
        if key:
            accept = base64.b64encode(hashlib.sha1((key[0] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.request.sendall(
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode()
            )
            frame = bytes([0x81, 126]) + len(body).to_bytes(2, "big") + body if len(body) > 125 else bytes([0x81, len(body)]) + body
            self.request.sendall(frame)
            time.sleep(0.2)
            return
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_backend(name):
    srv = Server(("127.0.0.1", 0), Backend)
    srv.name = name
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def port_free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()


def send(port, kind, host, path, headers):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    extra = "".join("%s: %s\r\n" % (n, v) for n, v in headers)
    if host == "-":
        req = "GET %s HTTP/1.0\r\n%s\r\n" % (path, extra)
    elif kind == "ws":
        req = (
            "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path, host, extra)
        )
    else:
        req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s\r\n" % (path, host, extra)
    s.sendall(req.encode("latin-1"))
    head, rest = read_head(s)
    status = int(head.split(" ")[1]) if head else 0
    body = rest
    if status == 101:
        while len(body) < 2:
            body += s.recv(65536)
        n = body[1] & 0x7F
        start = 2
        if n == 126:
            while len(body) < 4:
                body += s.recv(65536)
            n = int.from_bytes(body[2:4], "big")
            start = 4
        while len(body) < start + n:
            body += s.recv(65536)
        body = body[start : start + n]
    else:
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            body += chunk
    s.close()
    try:
        seen = json.loads(body.decode("utf-8", "replace").split("\r\n")[-1] if status != 101 else body)
        if isinstance(seen, dict) and "target" in seen:
            return seen
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()
    return {"target": "none", "status": status, "body": text[:80]}


def main():
    for tool in ("pushpin", "zurl"):
        if not shutil.which(tool):
            sys.exit("record_routes.py: needs %s (apt-get install -y pushpin)" % tool)
    version = subprocess.run(["pushpin", "--version"], capture_output=True, text=True).stdout.strip()
    cases = parse_cases(CASES)
    work = tempfile.mkdtemp(prefix="pp-routes-")
    procs = []
    try:
        zconf = os.path.join(work, "zurl.conf")
        with open(zconf, "w") as f:
            f.write(
                "[General]\nin_spec=ipc://%s/zurl-in\nin_stream_spec=ipc://%s/zurl-in-stream\n"
                "out_spec=ipc://%s/zurl-out\ndefpolicy=allow\nallow=\ndeny=\n" % (work, work, work)
            )
        zurl = subprocess.Popen(["zurl", "--config=" + zconf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(zurl)
        names = set()
        for case in cases:
            for line in case["routes"]:
                names.update(TARGET.findall(line))
        backends = {n: start_backend(n) for n in sorted(names, key=int)}
        while True:
            offset = random.randrange(10000, 40000)
            if all(port_free(p + offset) for p in (5560, 5561, 5562, 5563)):
                break
        base = open("/etc/pushpin/pushpin.conf").read()
        out = [
            "# Pushpin's answers to tests/pushpin/routes.cases: produced by",
            "# tests/pushpin/record_routes.py against %s (Debian 12's pushpin" % version,
            "# package, with zurl), regenerate with: python3 tests/pushpin/record_routes.py",
            "# Do not edit by hand. Lines: case NAME / route LINE (tab-free text after",
            "# 'route\\t') / skipped N WARNING (Pushpin ignored the N-th route line) /",
            "# request KIND HOST PATH HEADERS => JSON (what the chosen backend saw;",
            "# target none: Pushpin answered itself, no backend).",
        ]
        for ci, case in enumerate(cases):
            d = os.path.join(work, "c%d" % ci)
            os.makedirs(os.path.join(d, "run"))
            os.makedirs(os.path.join(d, "log"))
            routes = os.path.join(d, "routes")
            with open(routes, "w") as f:
                for line in case["routes"]:
                    f.write(TARGET.sub(lambda m: "127.0.0.1:%d" % backends[m.group(1)].server_address[1], line) + "\n")
            conf = base
            conf = re.sub(r"(?m)^rundir=.*$", "rundir=%s/run" % d, conf)
            conf = re.sub(r"(?m)^logdir=.*$", "logdir=%s/log" % d, conf)
            conf = re.sub(r"(?m)^port_offset=.*$", "port_offset=%d" % offset, conf)
            conf = re.sub(r"(?m)^routesfile=.*$", "routesfile=%s" % routes, conf)
            conf = conf.replace(
                "[proxy]\n",
                "[proxy]\nzurl_out_specs=ipc://%s/zurl-in\nzurl_out_stream_specs=ipc://%s/zurl-in-stream\nzurl_in_specs=ipc://%s/zurl-out\n" % (work, work, work),
                1,
            )
            cpath = os.path.join(d, "pushpin.conf")
            with open(cpath, "w") as f:
                f.write(conf)
            port = free_port()
            log = open(os.path.join(d, "out.log"), "w")
            pp = subprocess.Popen(
                ["pushpin", "--config", cpath, "--port", "127.0.0.1:%d" % port, "--merge-output"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            procs.append(pp)
            deadline = time.time() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit("pushpin did not start for case " + case["name"])
                    time.sleep(0.1)
            time.sleep(1.0)
            results = []
            for kind, host, path, headers in case["requests"]:
                results.append(send(port, kind, host, path, headers))
            os.killpg(pp.pid, signal.SIGTERM)
            pp.wait(timeout=20)
            procs.remove(pp)
            log.close()
            skipped = []
            pat = re.compile(re.escape(routes) + r":(\d+):? (.*)$")
            for line in open(os.path.join(d, "out.log"), encoding="utf-8", errors="replace"):
                m = pat.search(line)
                if m:
                    skipped.append((int(m.group(1)), m.group(2).strip()))
            out.append("")
            out.append("case\t" + case["name"])
            for line in case["routes"]:
                out.append("route\t" + line)
            for n, why in skipped:
                out.append("skipped\t%d\t%s" % (n, why))
            for (kind, host, path, headers), seen in zip(case["requests"], results):
                hdrs = " ".join("%s:%s" % h for h in headers) or "-"
                out.append("request\t%s\t%s\t%s\t%s\t=>\t%s" % (kind, host, path, hdrs, json.dumps(seen, sort_keys=True)))
            print("%-45s %s" % (case["name"], " ".join(r["target"] for r in results)))
        with open(TABLE, "w", encoding="utf-8") as f:
            f.write("\n".join(out) + "\n")
    finally:
        zurl_proc = procs[0] if procs else None
        for p in procs:
            try:
                if p is zurl_proc:
                    p.terminate()
                else:
                    os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
