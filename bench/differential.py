#!/usr/bin/env python3
"""Differential runner for the HTTP conformance corpus.

Sends every vector of tests/conformance/corpus.json, each on a fresh
connection, to maitred, to waitress-serve and to gunicorn, all serving
tests/apps/conformance.py on 127.0.0.1, and prints a Markdown table of the
vectors where the three differ, then how many vectors each server answers as
the corpus expects.

    python3 bench/differential.py                      # all three servers
    python3 bench/differential.py --servers maitred    # one server, every vector
    python3 bench/differential.py --only chunked       # vectors whose class or name contains "chunked"

The first run creates target/differential-venv with pinned Waitress and
Gunicorn from PyPI. maitred is target/release/maitred or target/debug/maitred,
whichever was built last (MAITRED_BIN overrides). Only loopback is used and
every vector is bounded in time (--deadline). Not part of ./scripts/test.sh.

An outcome is recorded exactly as tests/conformance.rs records it: the
statuses of the responses in order (1xx included; 0 for bytes that are not
a response), how many times the app ran (the app's per-client-port count,
read before and after), and whether the connection was still open once the
expected responses had arrived and a quiet period passed.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(ROOT, "tests", "conformance", "corpus.json")
APPS = os.path.join(ROOT, "tests", "apps")
VENV = os.path.join(ROOT, "target", "differential-venv")
PINS = ["waitress==3.0.2", "gunicorn==23.0.0"]

# How long a connection must stay quiet, once the expected responses are in,
# before it counts as open.
QUIET = 0.15


# --- the corpus -----------------------------------------------------------


def load_corpus(path=CORPUS):
    with open(path, encoding="utf-8") as f:
        vectors = json.load(f)
    for v in vectors:
        v["bytes"] = v["raw"].encode("latin-1")
    return vectors


# --- reading responses ----------------------------------------------------


class Garbage(Exception):
    """The bytes at the front of the buffer are not an HTTP response."""


def parse_response(buf, no_body, at_eof):
    """The response at the start of `buf`: (status, bytes used), with status
    -1 for a response cut short by the close; None when more bytes are
    needed. `no_body`: it answers a HEAD. `at_eof`: nothing more will come."""

    def cut():
        return (-1, len(buf)) if at_eof else None

    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if buf.startswith(b"HTTP/"[: len(buf)]) and not at_eof:
            return None
        raise Garbage()
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not parts[0].startswith("HTTP/") or len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit():
        raise Garbage()
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    at = end + 4
    if 100 <= status < 200 or status in (204, 304) or no_body:
        return status, at
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            eol = buf.find(b"\r\n", at)
            if eol < 0:
                return cut()
            try:
                size = int(buf[at:eol].split(b";")[0].strip(), 16)
            except ValueError:
                raise Garbage()
            at = eol + 2
            if size == 0:
                while True:  # trailers, then the empty line
                    eol = buf.find(b"\r\n", at)
                    if eol < 0:
                        return cut()
                    empty = eol == at
                    at = eol + 2
                    if empty:
                        return status, at
            if len(buf) < at + size + 2:
                return cut()
            at += size + 2
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise Garbage()
        return (status, at + length) if len(buf) >= at + length else cut()
    # Delimited by the close.
    return (status, len(buf)) if at_eof else None


def calls(addr, port=None, timeout=5.0):
    """The app's call count: the total, or that of requests from `port`."""
    path = "/__calls" if port is None else f"/__calls?port={port}"
    url = f"http://{addr[0]}:{addr[1]}{path}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return int(r.read())


# How long the sender waits at each of a vector's `pause_after` offsets.
PAUSE = 0.1


def send(sock, data, pause_after):
    """Writes the vector, pausing at the given offsets (so the server sees
    the parts in separate reads). The server may close before it has read
    everything; that is part of the outcome, not an error."""
    start = 0
    try:
        for offset in [*pause_after, len(data)]:
            sock.sendall(data[start:offset])
            start = offset
            if offset < len(data):
                time.sleep(PAUSE)
    except OSError:
        pass


def record(addr, vector, deadline, per_port=True):
    """Sends one vector on a new connection: (statuses, app calls, open).

    Reads until the server closes, or, once the expected number of
    responses is in, until QUIET passes with nothing more; never longer than
    `deadline`. With `per_port`, the calls are counted for this connection's
    client port while it is still open (vectors may run concurrently);
    otherwise as the change in the total, after the connection is closed
    (servers that serve one connection at a time)."""
    expect = vector["expect"]
    want = len(expect["statuses"])
    head_responses = set(vector.get("head_responses", []))
    if not per_port:
        before = calls(addr)
    sock = socket.create_connection(addr, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if per_port:
            port = sock.getsockname()[1]
            before = calls(addr, port)
        send(sock, vector["bytes"], vector.get("pause_after", []))
        statuses, buf, closed = [], b"", False
        garbage = False
        finals = 0
        started = time.monotonic()
        quiet_from = None
        while True:
            # Parse what has arrived.
            while buf and not garbage:
                try:
                    parsed = parse_response(buf, finals in head_responses, closed)
                except Garbage:
                    statuses.append(0)
                    garbage = True
                    buf = b""
                    break
                if parsed is None:
                    break
                status, used = parsed
                statuses.append(status)
                if not 100 <= status < 200:
                    finals += 1
                buf = buf[used:]
            if closed:
                break
            now = time.monotonic()
            if now - started >= deadline:
                break
            complete = len(statuses) >= want and not buf
            if complete and expect["open"]:
                if quiet_from is None:
                    quiet_from = now
                wait = QUIET - (now - quiet_from)
                if wait <= 0:
                    break
            else:
                wait = deadline - (now - started)
            sock.settimeout(max(wait, 0.001))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if data:
                buf += data
                quiet_from = None
            else:
                closed = True
        if buf and not garbage:
            statuses.append(-1)  # a response cut short
        if per_port:
            after = calls(addr, port)
    finally:
        sock.close()
    if not per_port:
        time.sleep(0.05)
        after = calls(addr)
    return {"statuses": statuses, "app_calls": after - before, "open": not closed}


def matches(outcome, expect):
    return (
        outcome["statuses"] == expect["statuses"]
        and outcome["app_calls"] == expect["app_calls"]
        and outcome["open"] == expect["open"]
    )


def show(outcome):
    statuses = ",".join(str(s) for s in outcome["statuses"]) or "-"
    return f"{statuses} calls={outcome['app_calls']} {'open' if outcome['open'] else 'closed'}"


# --- servers --------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_venv():
    python = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, "pins.txt")
    if os.path.exists(stamp) and open(stamp).read().split() == PINS:
        return VENV
    print(f"creating {VENV} with {' '.join(PINS)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *PINS], check=True)
    with open(stamp, "w") as f:
        f.write("\n".join(PINS) + "\n")
    return VENV


def maitred_binary():
    if os.environ.get("MAITRED_BIN"):
        return os.environ["MAITRED_BIN"]
    built = [
        os.path.join(ROOT, "target", profile, "maitred")
        for profile in ("release", "debug")
        if os.path.exists(os.path.join(ROOT, "target", profile, "maitred"))
    ]
    if not built:
        sys.exit("no target/release/maitred or target/debug/maitred: run `cargo build` first")
    return max(built, key=os.path.getmtime)


def command(name, port):
    listen = f"127.0.0.1:{port}"
    if name == "maitred":
        return [maitred_binary(), "--listen", listen, "--admin-listen", "", "conformance:app"]
    bin_dir = os.path.join(VENV, "bin")
    if name == "waitress":
        return [os.path.join(bin_dir, "waitress-serve"), f"--listen={listen}", "conformance:app"]
    if name == "gunicorn":
        return [os.path.join(bin_dir, "gunicorn"), "-w", "1", "-b", listen, "conformance:app"]
    raise ValueError(name)


class Server:
    def __init__(self, name):
        self.name = name
        self.port = free_port()
        env = dict(os.environ)
        for k in ("VIRTUAL_ENV", "MAITRED_CONFIG", "RUST_LOG", "PYTHONPATH"):
            env.pop(k, None)
        self.log = open(os.path.join(ROOT, "target", f"differential-{name}.log"), "w")
        self.proc = subprocess.Popen(
            command(name, self.port),
            cwd=APPS,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                calls(self.addr, timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit(f"{name} did not start; see target/differential-{name}.log")
                time.sleep(0.1)

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# gunicorn's default (sync) worker serves one connection at a time, so its
# vectors go one by one and are counted by the total.
CONCURRENT = {"maitred": True, "waitress": True, "gunicorn": False}


def run_server(name, vectors, deadline, jobs):
    server = Server(name)
    try:
        concurrent_ok = CONCURRENT[name]
        with concurrent.futures.ThreadPoolExecutor(jobs if concurrent_ok else 1) as pool:
            outcomes = list(
                pool.map(lambda v: record(server.addr, v, deadline, per_port=concurrent_ok), vectors)
            )
    finally:
        server.stop()
    return outcomes


# --- the report -----------------------------------------------------------


def md(text):
    return text.replace("|", "\\|")


def only_gunicorn_closed(v, results, servers):
    """Every server answered as expected, except that gunicorn's sync worker
    closed a connection expected to stay open (it never keeps one)."""
    expect = v["expect"]
    for s in servers:
        got = results[s]
        if s == "gunicorn":
            if not (expect["open"] and not got["open"] and got["statuses"] == expect["statuses"]
                    and got["app_calls"] == expect["app_calls"]):
                return False
        elif not matches(got, expect):
            return False
    return True


def report(vectors, results, servers, out):
    lines = []
    rows = []
    gunicorn_closed = 0
    for i, v in enumerate(vectors):
        outcomes = {s: results[s][i] for s in servers}
        if all(matches(outcomes[s], v["expect"]) for s in servers):
            continue
        if "gunicorn" in servers and only_gunicorn_closed(v, outcomes, servers):
            gunicorn_closed += 1
            continue
        cells = []
        for s in servers:
            mark = "" if matches(outcomes[s], v["expect"]) else " ✗"
            cells.append(md(show(outcomes[s])) + mark)
        name = f"`{v['name']}`" + (" (pending)" if v.get("pending") else "")
        rows.append(f"| {v['class']} | {name} | {md(show(v['expect']))} | " + " | ".join(cells) + " |")
    lines.append("| class | vector | expected | " + " | ".join(servers) + " |")
    lines.append("|---|---|---|" + "---|" * len(servers))
    lines.extend(rows)
    lines.append("")
    lines.append(f"{len(rows)} vectors listed (✗: not the expected outcome; pending: a known difference of maitred's).")
    if gunicorn_closed:
        lines.append(
            f"Not listed: {gunicorn_closed} more vectors that every server answered as expected, except that "
            "gunicorn's sync worker closed the connection after its response (it never keeps one open)."
        )
    lines.append("")
    lines.append("| server | vectors as expected |")
    lines.append("|---|---|")
    for s in servers:
        n = sum(matches(results[s][i], v["expect"]) for i, v in enumerate(vectors))
        lines.append(f"| {s} | {n} / {len(vectors)} |")
    text = "\n".join(lines) + "\n"
    out.write(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="maitred,waitress,gunicorn")
    parser.add_argument("--only", default="", help="vectors whose class or name contains this")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per vector at most")
    parser.add_argument("--jobs", type=int, default=4, help="connections at once (servers that allow it)")
    parser.add_argument("--json", help="also write every outcome to this file")
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    vectors = [v for v in load_corpus() if args.only in v["class"] or args.only in v["name"]]
    if any(s != "maitred" for s in servers):
        ensure_venv()
    results = {}
    for name in servers:
        started = time.monotonic()
        results[name] = run_server(name, vectors, args.deadline, args.jobs)
        print(f"{name}: {len(vectors)} vectors in {time.monotonic() - started:.1f}s", file=sys.stderr)
    report(vectors, results, servers, sys.stdout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {v["name"]: {s: results[s][i] for s in servers} for i, v in enumerate(vectors)},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
