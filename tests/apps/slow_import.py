"""An app that takes a long time to import (as large Django projects do)."""
import os
import time

time.sleep(float(os.environ.get("SLOW_IMPORT_SECONDS", "30")))


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"finally\n"]
