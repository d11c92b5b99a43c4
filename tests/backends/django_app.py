"""A Django app that holds connections through django-grip (PyPI), as a
backend written for Pushpin does. Prints its port, then serves until killed.

Usage: django_app.py [--unsigned-ok]
  --unsigned-ok  do not require a signed proxy (GRIP_PROXY_REQUIRED off)

Views:
  /stream/<user>   stream hold on "room" with filters skip-self and var-subst,
                   meta user=<user>, name=<User>
  /poll            long-poll on "patch"; timeout body {"n":0,"a":[1]}\n
  /whoami          not held: {"proxied":..,"signed":..,"features":[..]}
"""
import json
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="test-only",
    MIDDLEWARE=["django_grip.GripMiddleware"],
    # Pushpin's default signing key: a request counts as proxied only if
    # its Grip-Sig verifies with it.
    GRIP_PROXIES=[{"control_uri": "http://127.0.0.1:1", "key": "changeme"}],
    GRIP_PROXY_REQUIRED="--unsigned-ok" not in sys.argv,
)
django.setup()

from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django_grip import set_hold_longpoll, set_hold_stream  # noqa: E402
from gripcontrol import Channel  # noqa: E402


def stream(request, user):
    room = Channel("room")
    room.filters = ["skip-self", "var-subst"]
    set_hold_stream(request, room)
    request.grip.instruct.meta = {"user": user, "name": user.title()}
    return HttpResponse("welcome %s\n" % user, content_type="text/plain")


def poll(request):
    set_hold_longpoll(request, "patch", timeout=60)
    return HttpResponse('{"n":0,"a":[1]}\n', content_type="application/json")


def whoami(request):
    body = {
        "proxied": request.grip.proxied,
        "signed": request.grip.signed,
        "features": sorted(request.grip.features),
    }
    return HttpResponse(json.dumps(body), content_type="application/json")


urlpatterns = [
    path("stream/<str:user>", stream),
    path("poll", poll),
    path("whoami", whoami),
]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


from django.core.wsgi import get_wsgi_application  # noqa: E402

srv = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=Server, handler_class=Quiet)
print(srv.server_port, flush=True)
srv.serve_forever()
