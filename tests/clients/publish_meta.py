"""Publishes through gripcontrol/pubcontrol (PyPI) with what subscription
filters read: item meta and content-filters; and a body-patch, which
gripcontrol has no format field for (a pubcontrol Format of our own, sent by
the library as any other).

Usage: publish_meta.py CONTROL_URI MODE CHANNEL CONTENT [ARG]
MODE: stream-from (ARG: the sender) | stream-skip (ARG: skip_users) |
      stream-content-filters (ARG: comma list) | patch (CONTENT: the patch JSON)
"""
import json
import sys

from gripcontrol import GripPubControl, HttpStreamFormat
from pubcontrol import Format, Item

uri, mode, channel, content = sys.argv[1:5]
arg = sys.argv[5] if len(sys.argv) > 5 else ""
pub = GripPubControl({"control_uri": uri})


class BodyPatch(Format):
    def __init__(self, ops):
        self.ops = ops

    def name(self):
        return "http-response"

    def export(self):
        return {"body-patch": self.ops}


if mode == "stream-from":
    item = Item(HttpStreamFormat(content), meta={"sender": arg})
elif mode == "stream-skip":
    item = Item(HttpStreamFormat(content), meta={"skip_users": arg})
elif mode == "stream-content-filters":
    names = [n for n in arg.split(",") if n]
    item = Item(HttpStreamFormat(content, content_filters=names))
elif mode == "patch":
    item = Item(BodyPatch(json.loads(content)))
else:
    sys.exit("unknown mode " + mode)
pub.publish(channel, item, blocking=True)
print("ok")
