"""The WSGI apps the benchmark serves from every server (standard library only).

hello   13-byte body with a Content-Length
big     64 KiB body with a Content-Length
echo    reads the request body (wrk posts 4 KiB) and sends it back
sleep   waits 5 ms without the GIL (an I/O-bound app), then answers hello
stream  100 small chunks from a generator, no Content-Length (chunked)
cpu     about a millisecond of pure-Python work per request (CPU-bound)
"""
import time

HELLO = b"Hello, World!"
BIG = b"x" * 65536
SLEEP_SECONDS = 0.005  # the sleep app's wait; compare.py derives the pool's limit from it


def _plain(start_response, body, content_type="text/plain"):
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def hello(environ, start_response):
    return _plain(start_response, HELLO)


def big(environ, start_response):
    return _plain(start_response, BIG, "application/octet-stream")


def echo(environ, start_response):
    return _plain(start_response, environ["wsgi.input"].read(), "application/octet-stream")


def sleep(environ, start_response):
    time.sleep(SLEEP_SECONDS)
    return _plain(start_response, HELLO)


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (b"line %03d\n" % i for i in range(100))


def cpu(environ, start_response):
    total = 0
    for i in range(20000):
        total += i * i % 7
    return _plain(start_response, str(total).encode())
