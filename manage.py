"""wsrelay's command line in a checkout: ``python manage.py serve``, ``python manage.py publish``
(installed: the ``wsrelay`` command, or ``python -m wsrelay``)."""

from wsrelay.__main__ import main  # patches gevent in first

if __name__ == "__main__":
    main()
