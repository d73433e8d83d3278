"""The WSGI app behind the `request_path` fuzz target.

Fast, deterministic and standard library only. The first segment of
PATH_INFO picks a behaviour (a list body, a generator, write(), a file
wrapper, an exception, a wrong Content-Length, ...), so the fuzzer reaches
every way a response can leave the app. Every request's environ is checked
against PEP 3333 first; a violation answers `599 Environ Violation` with
the reason, which the target treats as a failure.
"""
import io
from urllib.parse import unquote_to_bytes

REQUIRED = (
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
    "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL",
)


def violation(environ):
    """What is wrong with the environ, or None."""
    for key in REQUIRED:
        if not isinstance(environ.get(key), str):
            return "%s missing or not a str" % key
    for key, value in environ.items():
        if not isinstance(key, str):
            return "a key is not a str: %r" % (key,)
        if key.startswith("wsgi."):
            continue
        if not isinstance(value, str):
            return "%s is not a str: %r" % (key, value)
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return "%s is not latin-1: %r" % (key, value)
        if key != "PATH_INFO" and ("\r" in value or "\n" in value):
            return "%s holds a line break: %r" % (key, value)
    if not environ["SERVER_PORT"].isdigit():
        return "SERVER_PORT %r" % environ["SERVER_PORT"]
    script = environ["SCRIPT_NAME"]
    if script and (not script.startswith("/") or script.endswith("/")):
        return "SCRIPT_NAME %r" % script
    if environ.get("wsgi.version") != (1, 0):
        return "wsgi.version %r" % (environ.get("wsgi.version"),)
    if environ.get("wsgi.url_scheme") not in ("http", "https"):
        return "wsgi.url_scheme %r" % (environ.get("wsgi.url_scheme"),)
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        if not isinstance(environ.get(key), bool):
            return "%s %r" % (key, environ.get(key))
    if "CONTENT_LENGTH" in environ:
        length = environ["CONTENT_LENGTH"]
        if length and not length.isdigit():
            return "CONTENT_LENGTH %r" % length
    if "HTTP_CONTENT_LENGTH" in environ or "HTTP_CONTENT_TYPE" in environ:
        return "Content-Length or Content-Type as an HTTP_ variable"
    return uri_violation(environ)


def uri_violation(environ):
    """REQUEST_URI is the request target as sent (latin-1): its path,
    percent-decoded with leading slashes collapsed, is (a tail of)
    SCRIPT_NAME + PATH_INFO, and its query is QUERY_STRING."""
    uri = environ.get("REQUEST_URI")
    if uri is None:
        return None
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.isalpha():
        # The authority ends at the path or the query.
        ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
        uri = rest[min(ends):] if ends else ""
    path, mark, query = uri.partition("?")
    if not path.startswith("/"):
        # `*`, or an authority-form target (which hyper accepts for any
        # method): PATH_INFO is empty or the target itself.
        return None
    if mark and query != environ["QUERY_STRING"]:
        return "REQUEST_URI %r but QUERY_STRING %r" % (uri, environ["QUERY_STRING"])
    decoded = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
    if decoded.startswith("//"):
        decoded = "/" + decoded.lstrip("/")
    # A trusted X-Forwarded-Prefix goes in front of SCRIPT_NAME, not into
    # REQUEST_URI: the decoded path ends with PATH_INFO, after a tail of
    # SCRIPT_NAME (empty outside the prefix).
    info = environ["PATH_INFO"]
    mount = decoded[:len(decoded) - len(info)]
    if not decoded.endswith(info) or not environ["SCRIPT_NAME"].endswith(mount):
        return "REQUEST_URI %r but SCRIPT_NAME %r and PATH_INFO %r" % (
            environ["REQUEST_URI"], environ["SCRIPT_NAME"], environ["PATH_INFO"])
    return None


def read_body(environ):
    stream = environ["wsgi.input"]
    body = stream.read()
    if stream.read(1) != b"":
        return body, "wsgi.input gave more after read()"
    length = environ.get("CONTENT_LENGTH")
    if length and int(length) != len(body):
        return body, "CONTENT_LENGTH %s but the body has %d bytes" % (length, len(body))
    return body, None


class Closing:
    """An iterable with close(), failing mid-way when asked."""

    def __init__(self, chunks, fail=False):
        self.chunks = chunks
        self.fail = fail

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if self.fail and i == 1:
                raise RuntimeError("failed mid-stream")
            yield chunk

    def close(self):
        pass


def app(environ, start_response):
    problem = violation(environ)
    body, length_problem = read_body(environ)
    problem = problem or length_problem
    if problem:
        text = problem.encode("latin-1", "replace")
        # The reason in a header too, for HEAD requests.
        reason = problem.encode("ascii", "backslashreplace").decode("ascii")[:500]
        start_response("599 Environ Violation", [
            ("Content-Length", str(len(text))), ("X-Environ-Violation", reason),
        ])
        return [text]
    segment = environ["PATH_INFO"].lstrip("/").split("/", 1)[0]
    summary = ("%r %r %r %r %r %d\n" % (
        environ["REQUEST_METHOD"], environ["wsgi.url_scheme"], environ["PATH_INFO"],
        environ.get("REMOTE_ADDR"), environ.get("HTTP_HOST"), len(body),
    )).encode("latin-1")
    plain = [("Content-Type", "text/plain")]
    if segment == "stream":
        start_response("200 OK", plain)
        return (summary[:i + 1] for i in range(0, len(summary), 7))
    if segment == "write":
        write = start_response("200 OK", plain)
        write(summary)
        write(b"")
        return [b"after write\n"]
    if segment == "file":
        start_response("200 OK", plain)
        return environ["wsgi.file_wrapper"](io.BytesIO(summary * 3), 5)
    if segment == "raise":
        raise ValueError("the app failed")
    if segment == "fail":
        start_response("200 OK", plain)
        return Closing([summary, summary, summary], fail=True)
    if segment == "short":
        start_response("200 OK", plain + [("Content-Length", str(len(summary) + 10))])
        return [summary]
    if segment == "long":
        start_response("200 OK", plain + [("Content-Length", "3")])
        return [summary, summary]
    if segment == "status":
        code = environ["PATH_INFO"][len("/status/"):][:3]
        start_response(code + " Whatever", plain)
        return [summary]
    if segment == "header":
        start_response("200 OK", [("X-Echo", environ.get("QUERY_STRING", ""))])
        return [summary]
    if segment == "exc":
        start_response("200 OK", plain)
        try:
            raise KeyError("late")
        except KeyError:
            import sys
            start_response("500 Oops", plain, sys.exc_info())
        return [summary]
    if segment == "twice":
        start_response("200 OK", plain)
        start_response("200 OK", plain)
        return [summary]
    if segment == "big":
        start_response("200 OK", plain)
        return [b"x" * 70000, summary]
    if segment == "empty":
        start_response("204 No Content", [])
        return Closing([b"", b""])
    if segment == "none":
        return [summary]
    start_response("200 OK", plain + [("Content-Length", str(len(summary)))])
    return [summary]
