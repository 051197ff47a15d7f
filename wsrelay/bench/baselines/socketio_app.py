"""Flask-SocketIO 5 on gevent, for the benchmark's baseline: one room, emit to the room.

Every client joins the room when it connects; an event ``publish`` is
emitted to the room as ``message`` (the sender included, as wsrelay and the
seed loop do). ``max_http_buffer_size`` is raised so the 1 MiB inbound
scenario is accepted. Usage: ``python -m wsrelay.bench.baselines.socketio_app PORT``;
or, for several processes sharing Redis, ``SOCKETIO_MESSAGE_QUEUE=redis://...`` and
``gunicorn -w 2 -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker
wsrelay.bench.baselines.socketio_app:app`` (Flask-SocketIO's documented deployment).
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO, emit, join_room  # noqa: E402

ROOM = "bench"

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", max_http_buffer_size=4 << 20,
                    message_queue=os.environ.get("SOCKETIO_MESSAGE_QUEUE"))


@socketio.on("connect")
def connect() -> None:
    join_room(ROOM)


@socketio.on("publish")
def publish(data: str) -> None:
    emit("message", data, to=ROOM)


if __name__ == "__main__":
    socketio.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_output=False)
