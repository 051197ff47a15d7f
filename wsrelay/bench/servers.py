"""The processes of a bench run: each system under test, redis-server, the load generator.

Servers run on core 0 and everything else (load generator, this command) on
core 1, so the server's figures are its own; both run at a raised priority
when allowed; each process may open as many files as the hard limit allows,
for the 15,000-connection scenario. nginx (Nchan) inherits core and priority
from the process started here, its master; the figures are its worker's.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .baselines import nchan
from .procstat import children

ROOT = Path(__file__).resolve().parents[2]
SERVER_CORE, LOAD_CORE = 0, 1


def pinning() -> bool:
    """True when the machine has the two cores the bench pins to."""
    return (os.cpu_count() or 1) >= 2


def pin_to(core: int) -> None:
    if pinning():
        os.sched_setaffinity(0, {core})


#: The bench's processes run at this nice value when allowed, so that other work on a
#: shared machine takes less of their cores (latencies are what such noise spoils).
NICE = -10


def prioritise() -> None:
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)


def raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _server_preexec() -> None:
    pin_to(SERVER_CORE)
    prioritise()
    raise_file_limit()


def _loadgen_preexec() -> None:
    pin_to(LOAD_CORE)
    prioritise()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: wsrelay's per-client limits, opened wide: one load generator on one IP plays every client.
#: Everything else keeps its default (subscriber buffer 4 MiB, pings every 20 s, ...).
WSRELAY_ENV = {
    "WSRELAY_PUBLISH_RATE": "1000000",
    "WSRELAY_PUBLISH_BURST": "1000000",
    "WSRELAY_MAX_CONNECTIONS_PER_IP": "1000000",
    "WSRELAY_MAX_STREAMS": "1000000",
}
#: What a variant of wsrelay changes of those defaults.
VARIANTS = {"wsrelay-nodelay": {"WSRELAY_WRITE_DELAY": "0"}}


#: Workers of the systems that share Redis (``gunicorn -w``).
WORKERS = 2
#: Systems served by gunicorn workers: their figures are the workers'.
GUNICORN = ("wsrelay-redis", "flask-socketio-redis")


def _command(system: str, port: int, directory: Path) -> list[str]:
    if system == "nchan":
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return nchan.command(port, directory, hard)
    if system == "wsrelay-redis":
        return [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                "-w", str(WORKERS), "-b", f"127.0.0.1:{port}"]
    if system.startswith("wsrelay"):
        return [sys.executable, str(ROOT / "manage.py"), "serve", "--port", str(port),
                "--no-access-log"]
    if system == "flask-socketio-redis":
        # -c /dev/null: not the gunicorn.conf.py of the working directory, wsrelay's
        return [sys.executable, "-m", "gunicorn", "-c", os.devnull, "-w", str(WORKERS),
                "-b", f"127.0.0.1:{port}",
                "-k", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
                "wsrelay.bench.baselines.socketio_app:app"]
    if system.startswith("gevent-floor"):
        mode = "callbacks" if system.endswith("callbacks") else "greenlets"
        return [sys.executable, "-m", "wsrelay.bench.baselines.gevent_floor", str(port), mode]
    module = {"seed-loop": "seed_loop", "flask-socketio": "socketio_app"}[system]
    return [sys.executable, "-m", f"wsrelay.bench.baselines.{module}", str(port)]


def _wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not listening after {timeout} s")
        time.sleep(0.05)


def _workers(proc: subprocess.Popen, count: int, timeout: float = 30) -> list[int]:
    """The worker processes that serve, once ``count`` of them run (nginx's one worker,
    gunicorn's: their master only starts them)."""
    deadline = time.monotonic() + timeout
    while len(workers := children(proc.pid)) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{len(workers)} of {count} worker processes started")
        time.sleep(0.05)
    return workers


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL, once the figures are taken: the seed loop's route spins forever after its
    client leaves, so a polite stop is no use for it and none is needed for the others."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def server(
    system: str, env: dict[str, str] | None = None
) -> Iterator[tuple[int, int | list[int]]]:
    """Run ``system`` on a free port pinned to core 0; yield (port, pid of the process that
    serves: the server's, nginx's worker's, or the list of gunicorn's workers)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wsrelay-bench-") as directory:
        log = Path(directory) / "server.log"
        if system.startswith("wsrelay"):
            env = {**WSRELAY_ENV, **VARIANTS.get(system, {}), **(env or {})}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                _command(system, port, Path(directory)), cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                preexec_fn=_server_preexec, start_new_session=True,
            )
        try:
            _wait_listening(proc, port, log)
            if system == "nchan":
                yield port, _workers(proc, 1)[0]
            elif system in GUNICORN:
                yield port, _workers(proc, WORKERS)
            else:
                yield port, proc.pid
        finally:
            _stop(proc)


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A throw-away ``redis-server`` (no persistence) on core 0; yield (url, pid)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wsrelay-bench-redis-") as directory:
        proc = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_server_preexec, start_new_session=True,
        )
        try:
            _wait_listening(proc, port, Path(os.devnull))
            yield f"redis://127.0.0.1:{port}/0", proc.pid
        finally:
            _stop(proc)


def loadgen(spec: str, errors: IO) -> subprocess.Popen:
    """The load generator for one run, pinned to core 1, printing JSON lines."""
    return subprocess.Popen(
        [sys.executable, "-m", "wsrelay.bench.loadgen", spec], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=errors, text=True,
        preexec_fn=_loadgen_preexec, start_new_session=True,
    )
