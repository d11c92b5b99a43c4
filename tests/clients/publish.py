"""Publishes through the real gripcontrol/pubcontrol libraries (PyPI).

Usage: publish.py CONTROL_URI MODE CHANNEL CONTENT
MODE: stream | response | close | bearer:KEY (stream, with JWT auth)
"""
import sys

from gripcontrol import GripPubControl, HttpResponseFormat, HttpStreamFormat
from pubcontrol import Item

uri, mode, channel, content = sys.argv[1:5]
config = {"control_uri": uri}
if mode.startswith("bearer:"):
    config["key"] = mode.split(":", 1)[1].encode()
    config["control_iss"] = "corepin-test"
pub = GripPubControl(config)
if mode == "response":
    fmt = HttpResponseFormat(code=202, reason="Accepted", headers={"X-Lib": "python"}, body=content)
    pub.publish_http_response(channel, fmt, blocking=True)
elif mode == "close":
    pub.publish(channel, Item(HttpStreamFormat(close=True)), blocking=True)
else:
    pub.publish_http_stream(channel, content, id="py-1", blocking=True)
print("ok")
