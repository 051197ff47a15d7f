"""``python -m wsrelay`` and the ``wsrelay`` command: serve, publish, token, stats, bench.

gevent patches the standard library here, first, before anything imports socket, ssl or
threading (``import wsrelay`` imports nothing else, see ``wsrelay/__init__.py``).
"""

from gevent import monkey

monkey.patch_all()

from wsrelay.cli import cli  # noqa: E402


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
