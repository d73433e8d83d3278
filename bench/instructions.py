"""Counts maitred's user-space instructions per request with callgrind.

    python3 bench/instructions.py [--app hello] [--seconds 15]

after `cargo build --release`; needs valgrind and wrk.

Starts the release binary under `valgrind --tool=callgrind` with one Python
thread, waits until it answers, zeroes the counters (so start-up is not
counted), loads it with one wrk connection-thread for a fixed time, and
prints the instructions per request, in all and grouped by whose code runs
(by source path: code inlined from the standard library counts as the
standard library's). Instruction counts do not depend on how busy the
machine is, so unlike req/s they compare across runs and days.
Loopback only; bounded by --seconds plus start-up and shutdown.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
# maitred's own files: relative to the project or absolute, by how the
# debug information and callgrind_annotate's directory meet.
SRC = "^(?:" + re.escape(os.path.dirname(HERE)) + "/)?src/"

# First match wins: metrics before maitred, CPython before everything.
GROUPS = [
    ("metrics (metrics.rs, record.rs, prometheus)", SRC + r"(?:metrics|gateway/record)\.rs|prometheus-"),
    ("CPython", r"libpython3|Python-3\.\d+"),
    ("maitred", SRC),
    ("hyper", r"hyper-1\.|hyper-util"),
    ("http crate", r"/http-1\.|http-body"),
    ("httparse", r"httparse-"),
    ("tokio", r"tokio-1\."),
    ("pyo3", r"pyo3-"),
    ("mimalloc", r"mimalloc"),
    ("libc", r"libc\.so|sysdeps|/malloc/|nptl"),
    ("Rust std and inlined generic code", r"/rustc/|/rust/deps/"),
]
# Thread entry points, which callgrind lists with their whole thread's cost.
ENTRY = re.compile(r"clone\.S:clone|start_thread|thread_start|call_once\{\{vtable|__rust_begin_short_backtrace")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group(annotated, requests):
    totals = {name: 0 for name, _ in GROUPS}
    totals["other crates"] = 0
    program = 0
    for line in annotated.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        cost, where = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in where:
            program = cost
            continue
        if ENTRY.search(where) and cost > program // 4:
            continue
        name = next((n for n, p in GROUPS if re.search(p, where)), "other crates")
        totals[name] += cost
    print(f"{'instructions per request':44} {program / requests:8.0f}")
    for name, cost in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:42} {cost / requests:8.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--app", default="hello", help="a scenario of bench/apps.py")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--binary", default=os.environ.get("MAITRED_BIN", "target/release/maitred"))
    args = ap.parse_args()
    port, admin = free_port(), free_port()
    out = tempfile.mkdtemp(prefix="maitred-callgrind-")
    profile = os.path.join(out, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}",
           args.binary, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
           "--threads", "1"]
    # The same site-packages as the side-by-side runs, when they have run.
    venv = os.environ.get("BENCH_VENV", os.path.join(os.path.dirname(HERE), "target", "bench-venv"))
    if os.path.isdir(venv):
        cmd += ["--virtualenv", venv]
    cmd.append(f"apps:{args.app}")
    log = open(os.path.join(out, "server.log"), "w")
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": HERE}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"maitred did not start under valgrind; see {out}/server.log")
                time.sleep(1)
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True,
                       capture_output=True)
        wrk = ["wrk", "-t1", "-c16", f"-d{args.seconds}s"]
        if args.app == "echo":
            wrk += ["-s", os.path.join(HERE, "post.lua")]
        run = subprocess.run([*wrk, f"http://127.0.0.1:{port}/"], capture_output=True,
                             text=True, timeout=args.seconds + 60)
        m = re.search(r"(\d+) requests in", run.stdout)
        if not m:
            sys.exit(f"wrk failed:\n{run.stdout}{run.stderr}")
        requests = int(m.group(1))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    annotated = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                                "--inclusive=no", profile],
                               capture_output=True, text=True, check=True).stdout
    print(f"{args.app}: {requests} requests over {args.seconds} s, profile in {profile}")
    group(annotated, requests)


if __name__ == "__main__":
    main()
