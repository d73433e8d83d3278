"""WSGI endpoints that each exercise one behaviour of the server.

Standard library only. The integration tests in tests/*.rs start maitred with
`behaviours:app` and request these paths. Every response that describes the
request does so as JSON, so tests assert on exact values.
"""
import ctypes
import io
import json
import os
import sys
import threading
import time

# close() calls and other events, observed through /events (per process).
_events = []
_events_lock = threading.Lock()


def record(event):
    with _events_lock:
        _events.append(event)


def _json(start_response, obj, status="200 OK", extra=()):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra])
    return [body]


def _plain(start_response, text, status="200 OK"):
    body = text.encode("latin-1") if isinstance(text, str) else text
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Closing:
    """An iterable whose close() is recorded under a name."""

    def __init__(self, name, chunks, fail_after=None, delay=0.0):
        self.name = name
        self.chunks = chunks
        self.fail_after = fail_after
        self.delay = delay

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("failed mid-stream")
            if self.delay:
                time.sleep(self.delay)
            yield chunk

    def close(self):
        record("closed:" + self.name)


def environ_view(environ):
    out = {}
    for key, value in environ.items():
        if isinstance(value, (str, int, bool)) or value is None:
            out[key] = value
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = type(value).__name__
    return out


def app(environ, start_response):
    path = environ["PATH_INFO"]
    handler = ROUTES.get(path)
    if handler is None:
        # Unknown paths describe the request, so prefix tests can read it.
        return _json(start_response, environ_view(environ))
    return handler(environ, start_response)


def environ_route(environ, start_response):
    return _json(start_response, environ_view(environ))


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


def input_api(environ, start_response):
    """Exercises every wsgi.input method on the same body, in a fixed order."""
    stream = environ["wsgi.input"]
    out = {}
    out["read3"] = stream.read(3).decode("latin-1")
    out["readline"] = stream.readline().decode("latin-1")
    out["readline_limit"] = stream.readline(2).decode("latin-1")
    out["readlines_hint"] = [l.decode("latin-1") for l in stream.readlines(1)]
    out["iter"] = [l.decode("latin-1") for l in stream]
    out["read_rest"] = stream.read().decode("latin-1")
    out["read_past_end"] = stream.read(10).decode("latin-1")
    out["type"] = type(stream).__name__
    out["content_length"] = environ.get("CONTENT_LENGTH")
    return _json(start_response, out)


def input_size(environ, start_response):
    stream = environ["wsgi.input"]
    data = stream.read()
    stream.seek(0)
    first_line = stream.readline()
    return _json(start_response, {
        "len": len(data),
        "type": type(stream).__name__,
        "first_line_len": len(first_line),
        "content_length": environ.get("CONTENT_LENGTH"),
    })


def lazy(environ, start_response):
    def gen():
        start_response("201 Created", [("X-Lazy", "yes"), ("Content-Type", "text/plain")])
        yield b"lazy "
        yield b"body"
    return gen()


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"abc")
    write(b"")
    return [b"def"]


_kept_responders = []


def keep_responder(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    _kept_responders.append((start_response, write))
    return [b"kept"]


def after_kept_responder(environ, start_response):
    # The kept pair belongs to a finished request: it must not be this
    # request's, and writing through it must not reach this response.
    kept_start, kept_write = _kept_responders[-1]
    try:
        kept_write(b"LEAK")
        kept = "wrote"
    except Exception as e:
        kept = type(e).__name__
    same = kept_start is start_response
    body = json.dumps({"same": same, "kept_write": kept}).encode()
    write = start_response("200 OK", [("Content-Type", "application/json")])
    same_write = any(write is w for _, w in _kept_responders)
    return [body[:-1] + b', "same_write": ' + json.dumps(same_write).encode() + b"}"]


def write_then_generator(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    write(b"abc")

    def rest():
        yield b"def"
        yield b"ghi"
    return rest()


def error_before(environ, start_response):
    raise ValueError("boom before start_response \u20ac")


def error_after_start(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise ValueError("boom after start_response")


def error_mid_stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing("mid-stream", [b"first chunk\n", b"never"], fail_after=1)


def exc_info_replace(environ, start_response):
    start_response("200 OK", [("X-First", "1")])
    try:
        raise KeyError("handled")
    except KeyError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("X-Second", "1")], sys.exc_info())
    return [b"replaced"]


def exc_info_after_sent(environ, start_response):
    def gen():
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"sent"
        try:
            raise KeyError("late")
        except KeyError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        yield b"never"
    return gen()


def second_call(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"x"]


def bad_header_crlf(environ, start_response):
    start_response("200 OK", [("X-Bad", "a\r\nSet-Cookie: injected=1")])
    return [b"x"]


def bad_header_latin1(environ, start_response):
    start_response("200 OK", [("X-Euro", "\u20ac")])
    return [b"x"]


def bad_status(environ, start_response):
    start_response("OK 200", [])
    return [b"x"]


def hop_by_hop(environ, start_response):
    start_response("200 OK", [("Connection", "close")])
    return [b"x"]


def str_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["text, not bytes"]


def no_start_response(environ, start_response):
    return [b"body without a status"]


def latin1_header(environ, start_response):
    start_response("200 OK", [("X-Latin", "caf\u00e9"), ("Content-Length", "2")])
    return [b"ok"]


def custom_reason(environ, start_response):
    start_response("299 Custom Thing", [("Content-Length", "0")])
    return []


def short_body(environ, start_response):
    start_response("200 OK", [("Content-Length", "10")])
    return Closing("short", [b"123456789"])


def long_body(environ, start_response):
    start_response("200 OK", [("Content-Length", "8")])
    return Closing("long", [b"123456789"])


def generator_nocl(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing("gen", [b"0123456789"] * 3)


def list_nocl(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"one,", b"two"]


def empty_list(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return []


def head_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"hello-body"]


def no_content(environ, start_response):
    start_response("204 No Content", [])
    return []


def app_server_header(environ, start_response):
    start_response("200 OK", [("Server", "custom/1.0"), ("Content-Length", "0")])
    return []


class RecordingFileIO(io.FileIO):
    """A real file whose close() calls are recorded (each call, and the first)."""

    def close(self):
        record("close-call:file")
        if not self.closed:
            record("closed:file")
        super().close()


def file_wrapper(environ, start_response):
    """Serves BEHAVIOURS_FILE through wsgi.file_wrapper.

    The query string is a number of bytes to consume first through a
    *buffered* reader, whose read-ahead moves the descriptor's offset past
    tell(): a server must start from tell(), not from the descriptor.
    """
    f = io.BufferedReader(RecordingFileIO(os.environ["BEHAVIOURS_FILE"]))
    skip = int(environ.get("QUERY_STRING") or 0)
    f.read(skip)
    headers = [("Content-Type", "application/octet-stream")]
    declared = environ.get("HTTP_X_DECLARE_LENGTH")
    if declared:
        headers.append(("Content-Length", declared))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 8192)


def file_without_start_response(environ, start_response):
    f = io.BufferedReader(RecordingFileIO(os.environ["BEHAVIOURS_FILE"]))
    return environ["wsgi.file_wrapper"](f)


def hijacked_dup(environ, start_response):
    """An app (or library) that replaces os.dup must not decide what the
    server owns."""
    os.dup = lambda fd: fd
    return file_wrapper(environ, start_response)


def file_wrapper_bytesio(environ, start_response):
    data = io.BytesIO(b"in-memory file contents")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](data, 4)


def big(environ, start_response):
    size = int(environ.get("QUERY_STRING") or 1048576)
    block = b"x" * 65536

    def gen():
        left = size
        while left > 0:
            n = min(left, len(block))
            yield block[:n]
            left -= n
        record("big-done")
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return Closing("big", gen())


def endless(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    block = b"e" * 65536

    def gen():
        while True:
            yield block
    return Closing("endless", gen())


def reentrant(environ, start_response):
    """exc_info whose __getitem__ calls write() from inside start_response."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"head-out ")

    class Sneaky(tuple):
        def __getitem__(self, i):
            write(b"sneaky ")
            return tuple.__getitem__(self, i)
    try:
        raise KeyError("late")
    except KeyError:
        info = Sneaky(sys.exc_info())
    start_response("500 Oops", [], info)
    return [b"never"]


def database_aborted(environ, start_response):
    raise ConnectionAbortedError(103, "connection to the database was aborted")


def excess_generator(environ, start_response):
    start_response("200 OK", [("Content-Length", "8")])
    return Closing("excess", [b"12345678", b"9"])


def excess_write(environ, start_response):
    write = start_response("200 OK", [("Content-Length", "3")])
    write(b"abc")
    write(b"d")
    write(b"e")
    return []


_kept_inputs = []


def keep_input(environ, start_response):
    _kept_inputs.append(environ["wsgi.input"])
    return _plain(start_response, "kept")


def kept_input_closed(environ, start_response):
    return _json(start_response, [i.closed for i in _kept_inputs])


def header_case(environ, start_response):
    start_response("200 OK", [("X-API-Key", "k"), ("ETag", '"e"'), ("content-type", "text/plain")])
    return [b"ok"]


def reason_latin1(environ, start_response):
    start_response("200 Caf\u00e9", [("Content-Length", "2")])
    return [b"ok"]


def no_content_with_length(environ, start_response):
    start_response("204 No Content", [("Content-Length", "5")])
    return [b"hello"]


def slow_stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing("slow", [b"tick\n"] * 50, delay=0.05)


def sleep(environ, start_response):
    seconds = float(environ.get("QUERY_STRING") or 0.5)
    time.sleep(seconds)
    return _plain(start_response, "slept %s\n" % seconds)


def hold_gil(environ, start_response):
    # libc's sleep() called through PyDLL keeps the GIL (ctypes releases it
    # only for CDLL): the interpreter is wedged for that long, as with a C
    # extension stuck in a loop.
    seconds = int(environ.get("QUERY_STRING") or 3)
    ctypes.PyDLL(None).sleep(seconds)
    return _plain(start_response, "held the GIL %s s\n" % seconds)


def errors_stream(environ, start_response):
    environ["wsgi.errors"].write("line one from the app\npartial ")
    environ["wsgi.errors"].write("line two\n")
    environ["wsgi.errors"].flush()
    return _plain(start_response, "logged")


def thread_name(environ, start_response):
    return _plain(start_response, threading.current_thread().name)


def events(environ, start_response):
    with _events_lock:
        snapshot = list(_events)
    return _json(start_response, snapshot)


class AppSpecificError(Exception):
    """An exception type of the app's own, for the exception-type metric."""


def app_error(environ, start_response):
    raise AppSpecificError("raised by the app")


def pid(environ, start_response):
    return _plain(start_response, str(os.getpid()))


def crash(environ, start_response):
    # A worker process that dies without a word, as on a segfault.
    os._exit(70)


def collect_garbage(environ, start_response):
    import gc
    found = gc.collect()
    return _plain(start_response, "collected %d\n" % found)


def python_info(environ, start_response):
    return _json(start_response, {
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "executable": sys.executable,
        "version": sys.version,
        "path": sys.path,
        "argv": sys.argv,
        "listen_fds": os.environ.get("LISTEN_FDS"),
    })


ROUTES = {
    "/environ": environ_route,
    "/echo": echo,
    "/input": input_api,
    "/input-size": input_size,
    "/lazy": lazy,
    "/write": write_callable,
    "/write-then-generator": write_then_generator,
    "/keep-responder": keep_responder,
    "/after-kept-responder": after_kept_responder,
    "/error-before": error_before,
    "/error-after-start": error_after_start,
    "/error-mid-stream": error_mid_stream,
    "/exc-info-replace": exc_info_replace,
    "/exc-info-after-sent": exc_info_after_sent,
    "/second-call": second_call,
    "/bad-header-crlf": bad_header_crlf,
    "/bad-header-latin1": bad_header_latin1,
    "/bad-status": bad_status,
    "/hop-by-hop": hop_by_hop,
    "/str-body": str_body,
    "/no-start-response": no_start_response,
    "/latin1-header": latin1_header,
    "/custom-reason": custom_reason,
    "/short-body": short_body,
    "/long-body": long_body,
    "/generator": generator_nocl,
    "/list": list_nocl,
    "/empty": empty_list,
    "/head-body": head_body,
    "/no-content": no_content,
    "/app-server-header": app_server_header,
    "/file": file_wrapper,
    "/file-bytesio": file_wrapper_bytesio,
    "/file-no-start": file_without_start_response,
    "/hijacked-dup": hijacked_dup,
    "/endless": endless,
    "/reentrant": reentrant,
    "/database-aborted": database_aborted,
    "/excess-generator": excess_generator,
    "/excess-write": excess_write,
    "/keep-input": keep_input,
    "/kept-input-closed": kept_input_closed,
    "/reason-latin1": reason_latin1,
    "/header-case": header_case,
    "/no-content-with-length": no_content_with_length,
    "/big": big,
    "/slow-stream": slow_stream,
    "/sleep": sleep,
    "/hold-gil": hold_gil,
    "/errors": errors_stream,
    "/thread": thread_name,
    "/events": events,
    "/python": python_info,
    "/app-error": app_error,
    "/gc": collect_garbage,
    "/pid": pid,
    "/crash": crash,
}


def factory():
    """For --call: returns the app."""
    return app


not_callable = 42
broken_import_guard = True
