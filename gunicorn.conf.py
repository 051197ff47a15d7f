"""gunicorn settings for wsrelay in this checkout: ``gunicorn -c gunicorn.conf.py`` serves the app.

The settings ship in the package: ``gunicorn -c python:wsrelay.gunicorn_conf`` is the same
where wsrelay is installed. Command-line flags (-b, -w, -k) and GUNICORN_CMD_ARGS override them.
"""

from wsrelay.gunicorn_conf import *  # noqa: F403
