"""The operator's endpoints: ``/metrics`` for Prometheus, ``/dashboard`` and its numbers.

They show channel names and traffic, so they are not public: with
WSRELAY_ADMIN_TOKEN set they need that token; without it only a client on
this host's loopback interface may read them.
"""

from __future__ import annotations

import hmac
import os
import time

from flask import Response, current_app, jsonify, render_template, request
from prometheus_client.exposition import choose_encoder

from ..errors import ApiError
from ..hosts import host_name, is_loopback_address, is_loopback_name
from ..ops.metrics import (
    SAMPLES,
    SYNC_INTERVAL,
    exposition_registry,
    multiprocess_dir,
    read_totals,
)
from .checks import client_address, here, relay, request_token
from .pages import CONTENT_SECURITY_POLICY


def _from_this_host() -> bool:
    """The client is on this host's loopback interface, and asked for it by a loopback name.

    A request that a proxy we were not told of relayed (it carries forwarding
    headers) may come from anywhere: not local. A page of another site that
    rebinds its own name to 127.0.0.1 in the developer's browser comes from
    loopback, but names its own host: not local either (DNS rebinding).
    """
    if not current_app.config["WSRELAY_PROXY_HOPS"] and (
        "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    ):
        return False
    if not is_loopback_name(host_name(request.host)):
        return False
    return is_loopback_address(client_address(here()))


def check_admin() -> None:
    """401 without the admin token when one is set; 403 from another host when none is."""
    expected = current_app.config["WSRELAY_ADMIN_TOKEN"]
    if expected:
        shown = request_token(here())
        if shown is None:
            raise ApiError(401, "token_required", "send WSRELAY_ADMIN_TOKEN as "
                           "'Authorization: Bearer <token>' or ?token=<token>",
                           headers={"WWW-Authenticate": 'Bearer realm="wsrelay admin"'})
        if not hmac.compare_digest(shown.encode(), expected.encode()):
            raise ApiError(401, "invalid_token", "this is not WSRELAY_ADMIN_TOKEN",
                           headers={"WWW-Authenticate": 'Bearer realm="wsrelay admin"'})
    elif not _from_this_host():
        raise ApiError(403, "forbidden", "without WSRELAY_ADMIN_TOKEN only clients on this "
                       "host's loopback interface may read this")


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the page's URL may hold the token
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def _sample_count() -> int:
    """``?samples=N``: how many of the last seconds to send (all SAMPLES by default)."""
    try:
        return max(0, min(int(request.args.get("samples", SAMPLES)), SAMPLES))
    except ValueError:
        raise ApiError(400, "invalid_samples", f"samples is a number from 0 to {SAMPLES}") from None


def metrics() -> Response:
    """Prometheus exposition (OpenMetrics when the scraper asks for it)."""
    check_admin()
    relay().metrics.sync()  # this process's numbers as of now; other workers' within 1 s
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return _private(Response(encoder(exposition_registry()), content_type=content_type))


def dashboard() -> Response:
    check_admin()
    return _private(Response(render_template("wsrelay/dashboard.html")))


def dashboard_stats() -> Response:
    """The dashboard's numbers (and ``manage.py stats``'s): totals over every worker, this
    worker's own, its busiest channels of the last window, its broker and hub; and the
    last ``?samples=`` seconds (default all kept: five minutes), summed over the workers
    (``samples``) and this worker's own (``process_samples``)."""
    check_admin()
    count = _sample_count()
    hub, sync = relay().hub, relay().metrics
    sync.sync()
    return _private(jsonify(
        time=time.time(),
        pid=os.getpid(),  # the worker that answered
        multiprocess=multiprocess_dir() is not None,
        totals=read_totals(exposition_registry()),
        process={**hub.stats.snapshot(), "broker_errors": hub.broker.errors},
        busiest=[{"channel": name, "messages": count} for name, count in sync.busiest],
        busiest_window=SYNC_INTERVAL,
        counts=hub.counts(),
        broker=hub.broker.status(),
        draining=hub.draining,
        samples=sync.all_samples(count),
        process_samples=list(sync.samples)[-count:] if count else [],
    ))
