"""Counts maitred's user-space instructions per request with callgrind.

    python3 bench/instructions.py [--app hello] [--seconds 15]

after `cargo build --release`; needs valgrind and wrk.

Starts the release binary under `valgrind --tool=callgrind` with one Python
thread, waits until it answers, zeroes the counters (so start-up is not
counted), loads it with wrk (one thread, 16 connections) for a fixed time, and
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
import subprocess
import sys
import tempfile

from compare import HERE, MAITRED, ROOT, SCENARIOS, VENV, free_port, parse_wrk, wait_ready

# maitred's own files: relative to the project or absolute, by how the
# debug information and callgrind_annotate's directory meet.
SRC = "^(?:" + re.escape(ROOT) + "/)?src/"

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
    ap.add_argument("--app", default="hello", choices=sorted(SCENARIOS), help="a scenario of bench/apps.py")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--binary", default=MAITRED)
    args = ap.parse_args()
    port, admin = free_port(), free_port()
    out = tempfile.mkdtemp(prefix="maitred-callgrind-")
    profile = os.path.join(out, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}",
           args.binary, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
           "--threads", "1"]
    # The same site-packages as the side-by-side runs, when they have run.
    if os.path.isdir(VENV):
        cmd += ["--virtualenv", VENV]
    cmd.append(f"apps:{args.app}")
    log = open(os.path.join(out, "server.log"), "w")
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": HERE}, stdout=log, stderr=log)
    try:
        # Under valgrind start-up takes several times as long.
        if not wait_ready(port, server, timeout=120):
            sys.exit(f"maitred did not start under valgrind; see {out}/server.log")
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True,
                       capture_output=True)
        wrk = ["wrk", "-t1", "-c16", f"-d{args.seconds}s", *SCENARIOS[args.app]]
        run = subprocess.run([*wrk, f"http://127.0.0.1:{port}/"], capture_output=True,
                             text=True, timeout=args.seconds + 60)
        parsed = parse_wrk(run.stdout)
        if not parsed or not parsed[0]:
            sys.exit(f"wrk failed:\n{run.stdout}{run.stderr}")
        requests = parsed[0]
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
