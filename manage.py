"""wsrelay's command line: ``python manage.py serve``, ``python manage.py publish``."""

from gevent import monkey

monkey.patch_all()  # before anything imports socket, ssl or threading

from wsrelay.cli import cli  # noqa: E402

if __name__ == "__main__":
    cli()
