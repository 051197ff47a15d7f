"""The HTTP edge under gevent's pywsgi: wsrelay's request handler and what it checks."""
