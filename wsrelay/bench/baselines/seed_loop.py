"""Seed 002's relay, as its author wrote it, for the benchmark's baseline.

The ``MessageServer`` and the ``/message/`` route are the seed's code,
changed only where today's stack refuses it: Python 3 ``print``, the
``websocket=True`` that Werkzeug >= 2 needs to route an upgrade request, and
``ws.socket`` -> ``not ws.closed`` (gevent-websocket 0.10 has no ``socket``
attribute; ``closed`` is its spelling of the same check). Its flaws stay:
one ``send`` (one system call) per delivery in the publisher's greenlet, and
a route that spins once its socket is closed, so the bench kills it rather
than letting clients leave first. Usage: ``python -m
wsrelay.bench.baselines.seed_loop PORT``. The seed's ``/`` page is not part
of the benchmark and its template is not shipped.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from flask import Flask, abort, render_template, request  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402


# message.py
class MessageServer:
    def __init__(self):
        self.observers = []

    def add_message(self, msg):
        for ws in self.observers:
            try:
                ws.send(msg)
            except WebSocketError:
                self.observers.pop(self.observers.index(ws))
                print(ws, "is closed")
                continue


# manage.py
msgsrv = MessageServer()
app = Flask(__name__)


@app.route("/")
def index():
    return render_template("message.html")


@app.route("/message/", websocket=True)
def message():
    if request.environ.get("wsgi.websocket"):
        ws = request.environ["wsgi.websocket"]
        msgsrv.observers.append(ws)
        while True:
            if not ws.closed:
                message = ws.receive()
                if message:
                    msgsrv.add_message("%s" % message)  # noqa: UP031 - the seed's code
    else:
        abort(404)
    return "Connected!"


if __name__ == "__main__":
    http_server = WSGIServer(("127.0.0.1", int(sys.argv[1])), app, handler_class=WebSocketHandler)
    http_server.serve_forever()
