"""``python manage.py bench``: wsrelay against seed 002's loop, Flask-SocketIO 5 and Nchan.

The command (:mod:`wsrelay.cli.bench`) starts each system under test as its own
process pinned to core 0 (``servers.py``), drives it from a load generator
pinned to core 1 (``loadgen.py``: asyncio on uvloop, picows WebSocket
clients), reads the server's CPU time and memory from /proc
(``procstat.py``; for Nchan, ``baselines/nchan.py``, from nginx's one worker),
and prints, saves and plots the figures (``report.py``). The scenarios and
their sizes are in ``scenarios.py``.
"""
