"""The page maitred serves when it is started without an application.

It shows that the whole path works (HTTP in, embedded Python, WSGI out) and
what the application would see: the server and Python versions and the
request's environ. Embedded in the binary; MAITRED_VERSION is set at load.
"""
import html
import platform
import sys

MAITRED_VERSION = "unknown"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>maitred {version}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }}
h1 {{ margin-bottom: 0.2rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }}
td:first-child {{ font-family: monospace; white-space: nowrap; }}
td:last-child {{ font-family: monospace; word-break: break-all; }}
code {{ background: #f3f3f3; padding: 0.1rem 0.3rem; }}
</style>
</head>
<body>
<h1>maitred {version}</h1>
<p>This is the built-in demo application. maitred is running
<strong>Python {python}</strong> ({implementation}) from <code>{prefix}</code>.</p>
<p>Serve your own WSGI application with <code>maitred myproject.wsgi:application</code>.</p>
<h2>Request environ</h2>
<table>
<tr><th>key</th><th>value</th></tr>
{rows}
</table>
</body>
</html>
"""


def app(environ, start_response):
    rows = "\n".join(
        "<tr><td>{}</td><td>{}</td></tr>".format(html.escape(str(k)), html.escape(repr(v)))
        for k, v in sorted(environ.items())
    )
    body = PAGE.format(
        version=html.escape(MAITRED_VERSION),
        python=html.escape(platform.python_version()),
        implementation=html.escape(sys.version.replace("\n", " ")),
        prefix=html.escape(sys.prefix),
        rows=rows,
    ).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
