"""A server raises its open-files limit to the hard one and says what it can hold."""

import re
import resource
from pathlib import Path

from tests.support import ServerProcess
from wsrelay.server.open_files import RESERVED, connection_capacity, raise_open_files_limit


def test_the_soft_limit_is_raised_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] in (hard, 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connection_capacity(1024) == 1024 - RESERVED


def test_serve_raises_its_limit_and_says_how_many_connections_it_can_hold():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # as a shell's 1024 would be
    try:
        server = ServerProcess.serve()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        served_soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
        assert served_soft > 256 and served_soft == resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]
        said = re.search(r"open files limit (\d+): room for about (\d+) connections",
                         server.log())
        assert said and int(said.group(1)) == served_soft
        assert int(said.group(2)) == connection_capacity(served_soft)
    finally:
        server.stop()
