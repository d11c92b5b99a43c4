"""A WSGI backend (the standard library's wsgiref server) that answers every
request with the JSON of its WSGI environ's request variables: HTTP_*,
PATH_INFO, QUERY_STRING, REQUEST_METHOD. It shows what a WSGI application
such as django-grip reads: wsgiref maps `Grip_Sig` and `Grip-Sig` to the
same HTTP_GRIP_SIG (joining repeated ones with a comma).

Prints its port, then serves until killed.
"""
import json
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


def app(environ, start_response):
    seen = {
        k: v
        for k, v in environ.items()
        if k.startswith("HTTP_") or k in ("PATH_INFO", "QUERY_STRING", "REQUEST_METHOD")
    }
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
sys.stdout.close()
server.serve_forever()
