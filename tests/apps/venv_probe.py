"""Reports which Python and which packages the server's interpreter sees.

Standard library only; `venv_marker` exists only inside the virtualenv the
test creates, so importing it proves the venv's site-packages are in use.
"""
import json
import sys
import sysconfig


def app(environ, start_response):
    try:
        import venv_marker
        marker = venv_marker.MARKER
    except ImportError:
        marker = None
    base_site = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    body = json.dumps({
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "executable": sys.executable,
        "marker": marker,
        "base_site_on_path": base_site in sys.path,
        "version": list(sys.version_info[:2]),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
