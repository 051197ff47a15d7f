"""Redis Sentinel: the relay follows a failover, with no silent gap, no duplicate, no reused id.

Real processes: a master, its replica and a sentinel (``redis-server --sentinel``),
two ``manage.py serve`` processes on ``redis+sentinel://``, a steady publisher posting
to both, and subscribers on every transport spread over the two. The master is failed
over twice over: by ``SENTINEL FAILOVER``, and by SIGKILL. Each client's messages are
checked for what a user would count: acknowledged messages missing without a reset,
duplicates, and ids given to two different messages (all must be 0); and the seconds
until publishing succeeds again are printed (docs/deployment.md quotes them).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from tests.support import RedisServer, ServerProcess, free_port, publish_through, wait_until

pytestmark = pytest.mark.e2e  # starts redis-servers, a sentinel and servers itself

MASTER = "main"


def redis_process(*args: str) -> RedisServer:
    """A redis-server on a free port, without persistence, with ``args``."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="wsrelay-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    server = RedisServer(proc, port, directory)
    wait_until(server.ping, 10, message="redis-server did not start")
    return server


def sentinel_process(master_port: int) -> RedisServer:
    """A sentinel watching the master on ``master_port`` (quorum 1, down after 1 s)."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="wsrelay-sentinel-")
    config = Path(directory) / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    proc = subprocess.Popen(["redis-server", str(config), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    server = RedisServer(proc, port, directory)
    wait_until(server.ping, 10, message="the sentinel did not start")
    return server


@pytest.fixture
def sentinel_set():
    """(master, replica, sentinel), the sentinel knowing the replica; all stopped after."""
    master = redis_process()
    replica = redis_process("--replicaof", "127.0.0.1", str(master.port))
    sentinel = sentinel_process(master.port)
    watcher = redis.Redis(port=sentinel.port, decode_responses=True)

    def replica_known() -> bool:
        replicas = watcher.sentinel_slaves(MASTER)
        return any(r["port"] == replica.port and r["master-link-status"] == "ok"
                   for r in replicas)

    try:
        wait_until(replica_known, 30, message="the sentinel never saw the replica")
        yield master, replica, sentinel
    finally:
        for process in (sentinel, replica, master):
            process.stop()


@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "SIGKILL"])
def test_a_failover_under_a_steady_publisher_loses_nothing_silently(
    sentinel_set, how, channel
):
    master, replica, sentinel = sentinel_set
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{MASTER}"
    servers = [ServerProcess.serve(env={"WSRELAY_BROKER_URL": url}) for _ in range(2)]
    try:
        def fail_over() -> None:
            if how == "SIGKILL":
                master.proc.kill()
            else:
                redis.Redis(port=sentinel.port).execute_command("SENTINEL", "FAILOVER", MASTER)
            wait_until(lambda: redis.Redis(port=sentinel.port, decode_responses=True)
                       .sentinel_get_master_addr_by_name(MASTER)[1] == replica.port, 30,
                       message="no failover")

        outage = publish_through(servers, channel, fail_over)
        print(f"\n{how}: {outage.refused} publishes refused; publishing succeeded again "
              f"{outage.resumed_after:.1f} s after the failover began")
        for server in servers:
            health = server.health()
            assert health["ok"], json.dumps(health)
    finally:
        for server in servers:
            server.stop()
