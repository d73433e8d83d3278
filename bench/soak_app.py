"""The WSGI app bench/soak.py serves: the bench scenarios and the faults in one.

Standard library only. One route per thing a long-running server has to
survive without keeping anything behind:

ordinary answers (200)
  /hello         13-byte body with a Content-Length (bench/apps.py's hello)
  /echo          POST: the request body sent back (4 KiB in the mix)
  /upload        POST: reads a body of any size and answers its length; the
                 mix sends 1 MiB, past inbuf_overflow, so it is spooled to a
                 temporary file on the server's side
  /stream        a generator of STREAM_CHUNKS small chunks, no Content-Length
                 (chunked)
  /big           BIG_SIZE bytes with a Content-Length, more than
                 outbuf_overflow (part of it may wait in a temporary file)
  /sleep         waits SLEEP_SECONDS without the GIL, then answers hello
  /file          this file through wsgi.file_wrapper (the server reads the
                 file itself and must close it)
  /write         the legacy write() callable of start_response, then an
                 empty iterable
  /stats         this process's Python-side figures as JSON (allocated
                 blocks, gc-tracked objects, threads), for soak.py's samples

faults
  /raise         raises before starting a response: the server answers 500
  /close-raises  a complete response from an iterable whose close() raises:
                 the response is sent intact, the error logged
  /block         sleeps BLOCK_SECONDS (or ?SECONDS), far past the soak's
                 request_timeout: the client gets 504, the Python thread is
                 counted as stuck and replaced, and when the sleep ends the
                 thread comes back. It always ends, so the soak cannot
                 exhaust the pool (tests/apps/faults.py's /block waits for a
                 release instead)
  /exit          os._exit(3) in mid-request: only requested with workers >= 2,
                 where the supervisor starts a new worker. /exit?PID exits
                 only in the worker whose pid is PID and answers 200 "not
                 me" elsewhere, so the soak can always kill the younger
                 worker and keep one that lives through the whole run

Anything else answers 404.
"""
import gc
import json
import os
import sys
import threading
import time

HELLO = b"Hello, World!"
BIG_SIZE = 4 * 1024 * 1024
BIG = b"x" * BIG_SIZE
STREAM_CHUNKS = 500
STREAM_CHUNK = b"0123456789abcdef" * 4 + b"\n"  # 65 bytes
SLEEP_SECONDS = 0.005
BLOCK_SECONDS = 10.0
# /upload reads in pieces, as an app that handles files would, rather than
# holding a whole upload in one bytes object.
READ_PIECE = 64 * 1024

with open(__file__, "rb") as _f:
    SELF = _f.read()


class Boom(Exception):
    """The app's own failure (/raise)."""


class CloseFault(Exception):
    """Raised by close() once the body has been produced (/close-raises)."""


def _plain(start_response, body, content_type="text/plain", status="200 OK"):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def hello(environ, start_response):
    return _plain(start_response, HELLO)


def echo(environ, start_response):
    return _plain(start_response, environ["wsgi.input"].read(), "application/octet-stream")


def upload(environ, start_response):
    stream, total = environ["wsgi.input"], 0
    while True:
        piece = stream.read(READ_PIECE)
        if not piece:
            break
        total += len(piece)
    return _plain(start_response, str(total).encode())


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (STREAM_CHUNK for _ in range(STREAM_CHUNKS))


def big(environ, start_response):
    return _plain(start_response, BIG, "application/octet-stream")


def sleep(environ, start_response):
    time.sleep(SLEEP_SECONDS)
    return _plain(start_response, HELLO)


def file_(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(SELF)))])
    return environ["wsgi.file_wrapper"](open(__file__, "rb"), 8192)


def write(environ, start_response):
    out = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
    out(HELLO[:5])
    out(HELLO[5:])
    return []


def stats(environ, start_response):
    body = json.dumps({
        "pid": os.getpid(),
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
        "threads": threading.active_count(),
    }).encode()
    return _plain(start_response, body, "application/json")


def raise_(environ, start_response):
    raise Boom("the app failed on purpose")


class CloseRaises:
    """A response iterable (not a list, so the server iterates it) whose
    close() fails after the body was sent."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        raise CloseFault("close() failed on purpose")


def close_raises(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(SELF)))])
    return CloseRaises([SELF[:1000], SELF[1000:]])


def block(environ, start_response):
    seconds = float(environ.get("QUERY_STRING") or BLOCK_SECONDS)
    time.sleep(seconds)  # without the GIL, as an app stuck on a socket
    return _plain(start_response, b"unblocked")


def exit_(environ, start_response):
    wanted = environ.get("QUERY_STRING")
    if wanted and int(wanted) != os.getpid():
        return _plain(start_response, b"not me %d" % os.getpid())
    os._exit(3)


ROUTES = {
    "/": hello,
    "/hello": hello,
    "/echo": echo,
    "/upload": upload,
    "/stream": stream,
    "/big": big,
    "/sleep": sleep,
    "/file": file_,
    "/write": write,
    "/stats": stats,
    "/raise": raise_,
    "/close-raises": close_raises,
    "/block": block,
    "/exit": exit_,
}


def app(environ, start_response):
    handler = ROUTES.get(environ["PATH_INFO"])
    if handler is None:
        return _plain(start_response, b"not found", status="404 Not Found")
    return handler(environ, start_response)
