"""A WSGI app with one endpoint per way an application can fail.

Standard library only. tests/faults.rs starts maitred with `faults:app`,
sends ordinary requests (`/ok`) in a loop, and meanwhile requests the
faulty endpoints:

- `/raise`: raises `faults.Boom` before starting its response.
- `/block?NAME`: blocks until `/release?NAME` is requested (forever if it
  never is), without holding the GIL, as an app waiting on a lock or a
  socket without a timeout does; `/block?NAME:SECONDS` gives up after
  SECONDS. `/entered` counts the requests that have reached `/block`.
- `/close-raises`: a complete response from an iterable whose `close()`
  raises `faults.CloseFault`; `/close-raises-file` the same from a
  `wsgi.file_wrapper` file, whose `close()` the server runs after sending
  the file itself.
- `/exit`: ends the whole process with `os._exit(3)` in mid-request.
"""
import io
import os
import threading

# The body of the close() tests: this file, which /close-raises-file also
# sends as a regular file.
with open(__file__, "rb") as _f:
    BODY = _f.read()


class Boom(Exception):
    """The app's own failure."""


class CloseFault(Exception):
    """Raised by close() after the body was produced."""


# Requests blocked under a name, and how many have entered /block.
_gates = {}
_gates_lock = threading.Lock()
_entered = 0


def _gate(name):
    with _gates_lock:
        return _gates.setdefault(name, threading.Event())


def _plain(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def ok(environ, start_response):
    return _plain(start_response, b"ok")


def pid(environ, start_response):
    return _plain(start_response, str(os.getpid()).encode())


def raise_(environ, start_response):
    raise Boom("the app failed on purpose")


def block(environ, start_response):
    """`/block?NAME` waits for `/release?NAME`; `/block?NAME:SECONDS` at
    most SECONDS."""
    global _entered
    name, _, seconds = environ.get("QUERY_STRING", "").partition(":")
    with _gates_lock:
        _entered += 1
    _gate(name).wait(float(seconds) if seconds else None)
    return _plain(start_response, b"released")


def release(environ, start_response):
    _gate(environ.get("QUERY_STRING", "")).set()
    return _plain(start_response, b"released")


def entered(environ, start_response):
    with _gates_lock:
        n = _entered
    return _plain(start_response, str(n).encode())


class CloseRaises:
    """A response iterable (not a list: the server iterates it) whose
    close() fails."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        raise CloseFault("close() failed on purpose")


def close_raises(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return CloseRaises([BODY[:1000], BODY[1000:]])


class FileCloseRaises(io.FileIO):
    """A regular file whose first close() closes it, then fails."""

    def close(self):
        was_open = not self.closed
        super().close()
        if was_open:
            raise CloseFault("the file's close() failed on purpose")


def close_raises_file(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](FileCloseRaises(__file__, "rb"))


def exit_(environ, start_response):
    os._exit(3)


ROUTES = {
    "/ok": ok,
    "/pid": pid,
    "/raise": raise_,
    "/block": block,
    "/release": release,
    "/entered": entered,
    "/close-raises": close_raises,
    "/close-raises-file": close_raises_file,
    "/exit": exit_,
}


def app(environ, start_response):
    handler = ROUTES.get(environ["PATH_INFO"])
    if handler is None:
        return _plain(start_response, b"not found", "404 Not Found")
    return handler(environ, start_response)
