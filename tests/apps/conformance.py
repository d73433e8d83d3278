"""The WSGI app behind the HTTP conformance corpus (tests/conformance/).

Standard library only, and servable by maitred, waitress-serve and gunicorn
alike (`conformance:app`), so bench/differential.py can send the same corpus
to all three.

Every request except `/__calls` counts as one call of the app, reads the
whole `wsgi.input`, and is answered 200 with a one-line body that echoes the
method, the path and the number of body bytes read, so pipelined responses
and bodies can be told apart. A HEAD is answered with `Content-Length: 0` and
no body, so a server that wrongly sends a body on HEAD cannot desynchronise
the reader.

`/__calls` reports the count without counting itself: `/__calls` is the
total, `/__calls?port=N` the calls made by requests that came from client
port N (`REMOTE_PORT`). The corpus runners send vectors on several
connections at once, so they read the count for their own connection's port,
before and after.
"""
import threading

_lock = threading.Lock()
_total = 0
_by_port = {}


def _calls(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    port = None
    for part in query.split("&"):
        if part.startswith("port="):
            port = part[len("port="):]
    with _lock:
        count = _total if port is None else _by_port.get(port, 0)
    body = str(count).encode("ascii")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    global _total
    path = environ.get("PATH_INFO", "")
    if path == "/__calls":
        return _calls(environ, start_response)
    port = str(environ.get("REMOTE_PORT", ""))
    with _lock:
        _total += 1
        _by_port[port] = _by_port.get(port, 0) + 1
    received = environ["wsgi.input"].read()
    method = environ.get("REQUEST_METHOD", "")
    body = f"{method} {path} {len(received)}\n".encode("latin-1")
    if method == "HEAD":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
