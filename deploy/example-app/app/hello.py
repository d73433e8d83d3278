"""A small Flask app to show how an app goes on top of the maitred image."""

import os
import tempfile

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(
        message="hello from maitred",
        # The client as maitred resolved it through trusted proxies.
        client=request.remote_addr,
        scheme=request.scheme,
    )


@app.post("/upload")
def upload():
    # Large bodies arrive already spooled by maitred ($TMPDIR); the app may
    # spool too: the only writable place in a read-only container is TMPDIR.
    with tempfile.TemporaryFile() as f:
        size = 0
        for chunk in iter(lambda: request.stream.read(65536), b""):
            f.write(chunk)
            size += len(chunk)
    return jsonify(received=size, tmpdir=os.environ.get("TMPDIR", "/tmp"))
