"""A small but real Flask application, served by maitred from a virtualenv.

The index route reports where Flask was imported from, so the test can tell
the virtualenv's copy from any copy in the base interpreter.
"""
import sys
from importlib.metadata import version

import flask

from flask import Flask, Response, jsonify, redirect, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="hello from flask", flask=version("flask"), flask_file=flask.__file__, prefix=sys.prefix)


@app.post("/form")
def form():
    upload = request.files.get("upload")
    return jsonify(
        name=request.form.get("name"),
        upload=upload.read().decode() if upload else None,
        filename=upload.filename if upload else None,
    )


@app.post("/json")
def json_echo():
    return jsonify(received=request.get_json(), length=request.content_length)


@app.get("/stream")
def stream():
    @stream_with_context
    def generate():
        for i in range(5):
            yield f"part {i} of {request.args.get('name', 'x')}\n"
    return Response(generate(), mimetype="text/plain")


@app.get("/go")
def go():
    return redirect(url_for("index", _external=True))


@app.get("/boom")
def boom():
    raise RuntimeError("flask view failed")


@app.get("/cookie")
def cookie():
    resp = jsonify(seen=request.cookies.get("session_id"))
    resp.set_cookie("session_id", "abc123", httponly=True)
    return resp
