"""maitred: a production WSGI server, hyper and tokio in front, CPython behind.

Installed with pip, maitred runs inside this Python: the ``maitred`` command
(or ``python -m maitred``) serves a WSGI app with this interpreter and this
environment's packages. It takes the same command line as the ``maitred``
binary and ``waitress-serve``; see ``maitred --help``.
"""
from maitred._maitred import __version__

__all__ = ["__version__"]
