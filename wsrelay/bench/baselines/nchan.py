"""Nchan, nginx's pub/sub module in C, as a baseline: find it, and write the nginx config it runs.

Nchan is not a Python package: the bench uses Debian's ``nginx-light`` and
``libnginx-mod-nchan`` when ``nginx`` is on PATH with the module beside it, and
skips Nchan's rows otherwise. nginx runs like every system under test: one
worker process (whose CPU and memory are measured, not the master's), pinned
and prioritised through the process that starts it, a config and logs in a
throw-away directory, no access log, and room for the idle scenario's
connections. Its channel keeps wsrelay's history (1000 messages, 300 s), and a
new subscriber starts at the next message, as on wsrelay.

Locations: ``/pubsub/<channel>`` is a WebSocket that subscribes and publishes
(wsrelay's ``/ws/<channel>``), ``/pub/<channel>`` a publisher only (WebSocket
or HTTP POST), ``/sub/<channel>`` the long-poll and EventSource subscriber.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

INSTALL = "apt-get install nginx-light libnginx-mod-nchan"
MODULE = "ngx_nchan_module.so"

CONFIG = """\
{load_module}
daemon off;
worker_processes 1;
worker_rlimit_nofile {files};
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;

events {{
    worker_connections {files};
}}

http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    # one load generator plays every long-poll client on one keep-alive connection each
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 64m;
    nchan_message_buffer_length 1000;
    nchan_message_timeout 300s;

    server {{
        listen 127.0.0.1:{port};
        nchan_subscriber_first_message newest;

        location ~ ^/pubsub/(\\w+)$ {{
            nchan_pubsub websocket;
            nchan_channel_id $1;
        }}
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber eventsource longpoll;
            nchan_channel_id $1;
        }}
    }}
}}
"""


def _module(nginx: str) -> tuple[str | None, bool]:
    """(``load_module`` line or None if Nchan is built in, found) from ``nginx -V``."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    if re.search(r"--add-module=\S*nchan", built):
        return None, True
    found = re.search(r"--modules-path=(\S+)", built)
    path = Path(found.group(1) if found else "/usr/lib/nginx/modules") / MODULE
    return f"load_module {path};", path.exists()


def missing() -> str | None:
    """Why Nchan cannot run here (with how to install it), or None when it can."""
    nginx = shutil.which("nginx")
    if nginx is None or not _module(nginx)[1]:
        return f"not installed: {INSTALL}"
    return None


def command(port: int, directory: Path, files: int) -> list[str]:
    """Write the config into ``directory`` (a fresh temp dir) and return nginx's command line.

    ``files`` is the worker's open-file limit and its connection limit. Started as
    root, nginx runs its worker as ``nobody``: it must be able to enter ``directory``.
    """
    nginx = shutil.which("nginx")
    if nginx is None:
        raise RuntimeError(f"nchan: {INSTALL}")
    load_module, _found = _module(nginx)
    config = directory / "nginx.conf"
    config.write_text(CONFIG.format(load_module=load_module or "", files=files,
                                    directory=directory, port=port))
    directory.chmod(0o755)
    return [nginx, "-p", str(directory), "-c", str(config)]
