#!/usr/bin/env python3
"""Side-by-side load test of maitred and peer WSGI servers on loopback.

Every server serves the same apps (bench/apps.py) with the same number of
threads, one process each, and is loaded by wrk (one thread, 64
connections). Servers take turns within each round (A B C, A B C, ...), so
a change in the machine's speed hits them all alike; the table gives the
median over rounds and each figure as a ratio, which is what to compare:
absolute numbers on a shared machine drift from run to run.

Besides requests per second and latency, it records each server's CPU time
per request (user + system time of its process tree over the measured run,
divided by the requests served): on a busy machine that moves less than
throughput does. Peak RSS is the high-water mark (VmHWM) of the process
tree. wrk's own CPU time per request and the machine's idle share during
the run are recorded too: when idle is near zero the two CPUs are
saturated, and throughput is set by the server's and wrk's CPU time per
request together.

    bench/run.sh                                  # everything, ~10 minutes
    bench/run.sh --scenarios hello --rounds 2     # a quick look
    bench/run.sh --scaling                        # workers = 1 vs 2 on a CPU-bound app
    BENCH_BEFORE_BIN=/tmp/old/maitred bench/run.sh --servers maitred,maitred-before
                                                  # this build against another one
    bench/run.sh --servers maitred,maitred-wheel,maitred-wheel-3.13
                                                  # the binary against the installed wheels
                                                  # (in target/bench-venv, target/bench-venv-3.13)

Only 127.0.0.1 is ever loaded; every run is bounded by --duration.
"""
import argparse
import os
import resource
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import apps  # bench/apps.py, next to this script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.abspath(os.environ.get("BENCH_VENV", os.path.join(ROOT, "target", "bench-venv")))
MAITRED = os.path.abspath(os.environ.get("MAITRED_BIN", os.path.join(ROOT, "target", "release", "maitred")))

# scenario -> extra wrk arguments
SCENARIOS = {
    "hello": [],
    "big": [],
    "echo": ["-s", os.path.join(HERE, "post.lua")],
    "sleep": [],
    "stream": [],
    "cpu": [],
}
SLEEP_SECONDS = apps.SLEEP_SECONDS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(server, app, port, threads):
    vbin = os.path.join(VENV, "bin")
    target = f"apps:{app}"
    if server == "maitred-before":
        # Another build (the code before a change, for a same-run
        # comparison): BENCH_BEFORE_BIN names it.
        before = os.environ.get("BENCH_BEFORE_BIN")
        if not before:
            raise SystemExit("maitred-before: set BENCH_BEFORE_BIN to the other build's binary")
        return [os.path.abspath(before), "--listen", f"127.0.0.1:{port}",
                "--admin-listen", "127.0.0.1:0", "--threads", str(threads), "--workers", "1",
                "--virtualenv", VENV, target]
    if server.startswith("maitred-wheel"):
        # maitred installed from its wheel (scripts/wheels.sh): into the
        # bench venv itself ("maitred-wheel", the same Python 3.11 as the
        # binary), or into target/bench-venv-3.X ("maitred-wheel-3.X").
        version = server[len("maitred-wheel-"):]
        venv = os.path.join(ROOT, "target", f"bench-venv-{version}") if version else VENV
        return [os.path.join(venv, "bin", "maitred"), "--listen", f"127.0.0.1:{port}",
                "--admin-listen", "127.0.0.1:0", "--threads", str(threads), "--workers", "1",
                "--virtualenv", venv, target]
    if server.startswith("maitred"):
        # maitredN: N worker processes. The peers run from the bench
        # virtualenv, so maitred uses it too (the same site-packages, the
        # same .pth files run at start-up).
        workers = server[len("maitred"):] or "1"
        return [MAITRED, "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
                "--threads", str(threads), "--workers", workers, "--virtualenv", VENV, target]
    if server in ("granian", "granian1"):
        blocking = "1" if server == "granian1" else str(threads)
        return [f"{vbin}/granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--blocking-threads", blocking, "--no-access-log", target]
    if server == "waitress":
        return [f"{vbin}/waitress-serve", f"--listen=127.0.0.1:{port}", f"--threads={threads}", target]
    if server == "gunicorn":
        return [f"{vbin}/gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread",
                "--threads", str(threads), target]
    if server == "fastwsgi":
        code = ("import fastwsgi, apps; "
                f"fastwsgi.run(wsgi_app=apps.{app}, host='127.0.0.1', port={port})")
        return [f"{vbin}/python", "-c", code]
    if server == "bjoern":
        code = f"import bjoern, apps; bjoern.run(apps.{app}, '127.0.0.1', {port})"
        return [f"{vbin}/python", "-c", code]
    raise SystemExit(f"unknown server {server}")


def tree(pid):
    """The pid and its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def over_tree(pid, name, read):
    """Sum of read(text of /proc/P/name) over the process tree."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/{name}") as f:
                total += read(f.read())
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_ticks(pid):
    def utime_stime(text):
        fields = text.rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    return over_tree(pid, "stat", utime_stime)


def peak_rss_kib(pid):
    def hwm(text):
        return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM:"))
    return over_tree(pid, "status", hwm)


def idle_jiffies():
    """(idle + iowait, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_ready(port, proc, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return True
        except Exception:
            time.sleep(0.1)
    return False


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text):
    m = re.search(r"(\d+) requests in", text)
    requests = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        return None
    rps = float(m.group(1))
    lat = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return requests, rps, lat.get("50", float("nan")), lat.get("99", float("nan")), errors


def run_one(server, scenario, args):
    port = free_port()
    cmd = command(server, scenario, port, args.threads)
    log_path = os.path.join(args.logdir, f"{server}-{scenario}.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=log, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": HERE})
        try:
            if not wait_ready(port, proc):
                print(f"# {server} did not start for {scenario}; see {log_path}", file=sys.stderr)
                return None
            url = f"http://127.0.0.1:{port}/"
            wrk = ["wrk", "-t1", f"-c{args.connections}", *SCENARIOS[scenario]]
            try:
                subprocess.run([*wrk, "-d2s", url], capture_output=True, timeout=30)  # warm-up
                before = cpu_ticks(proc.pid)
                wrk_before, (idle0, total0) = children_cpu_s(), idle_jiffies()
                run = subprocess.run([*wrk, f"-d{args.duration}s", "--latency", url],
                                     capture_output=True, text=True, timeout=args.duration + 30)
            except subprocess.TimeoutExpired:
                print(f"# {server} {scenario}: wrk overran its time, sample dropped; see {log_path}",
                      file=sys.stderr)
                return None
            ticks = cpu_ticks(proc.pid) - before
            wrk_s, (idle1, total1) = children_cpu_s() - wrk_before, idle_jiffies()
            parsed = parse_wrk(run.stdout)
            if parsed is None:
                print(f"# {server} {scenario}: wrk gave no result ({run.stderr.strip() or 'no message'}), "
                      f"sample dropped; see {log_path}", file=sys.stderr)
                return None
            requests, rps, p50, p99, errors = parsed
            hz = os.sysconf("SC_CLK_TCK")
            per_request = (lambda x: x * 1e6 / requests) if requests else (lambda x: float("nan"))
            idle = 100.0 * (idle1 - idle0) / max(total1 - total0, 1)
            return (rps, p50, p99, errors, peak_rss_kib(proc.pid), per_request(ticks / hz),
                    per_request(wrk_s), idle)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            # A killed supervisor's workers get SIGTERM from the kernel and
            # drain; their sockets close with them. Give the port back.
            time.sleep(0.3)


def measure(scenarios, servers, args):
    """{(scenario, server): [samples]}"""
    samples = {(sc, sv): [] for sc in scenarios for sv in servers}
    for scenario in scenarios:
        for _ in range(args.rounds):
            for server in servers:
                r = run_one(server, scenario, args)
                if r is not None:
                    samples[(scenario, server)].append(r)
    return samples


def median(rows, i):
    values = [r[i] for r in rows]
    return statistics.median(values) if values else float("nan")


def table(samples, scenarios, servers, base="maitred"):
    header = ("scenario", "server", "req/s", "p50 ms", "p99 ms", "errors", "peak RSS MiB", "CPU us/req",
              "wrk CPU us/req", "idle %", f"{base} / this")
    rows = []
    for scenario in scenarios:
        ref = median(samples.get((scenario, base), []), 0)
        for server in servers:
            s = samples.get((scenario, server), [])
            if not s:
                rows.append((scenario, server, *["-"] * (len(header) - 2)))
                continue
            rps = median(s, 0)
            rows.append((scenario, server, f"{rps:.0f}", f"{median(s, 1):.2f}", f"{median(s, 2):.2f}",
                         str(sum(r[3] for r in s)), f"{max(r[4] for r in s) / 1024:.1f}",
                         f"{median(s, 5):.1f}", f"{median(s, 6):.1f}", f"{median(s, 7):.0f}",
                         f"{ref / rps:.2f}" if rps else "-"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |" for row in (header, *rows)]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def bars(samples, args):
    """The performance issue's bars, each with its measured ratio."""
    out = []

    def get(sc, sv, i=0):
        return median(samples.get((sc, sv), []), i)

    for sc in ("hello", "big", "echo", "stream"):
        if not samples.get((sc, "maitred")):
            continue
        peers = [(get(sc, g), get(sc, g, 2), g) for g in ("granian", "granian1") if samples.get((sc, g))]
        if not peers:
            continue
        rps, p99, name = max(peers)
        ratio = get(sc, "maitred") / rps
        ok = ratio >= 1.3 and get(sc, "maitred", 2) <= p99
        out.append(f"{sc}: maitred / {name} = {ratio:.2f} (bar 1.30), p99 {get(sc, 'maitred', 2):.2f} ms "
                   f"vs {p99:.2f} ms -> {'met' if ok else 'NOT met'}")
    if samples.get(("hello", "maitred")) and samples.get(("hello", "fastwsgi")):
        ratio = get("hello", "maitred") / get("hello", "fastwsgi")
        out.append(f"hello: maitred / fastwsgi = {ratio:.2f} (bar 0.85) -> {'met' if ratio >= 0.85 else 'NOT met'}")
    if samples.get(("sleep", "maitred")):
        limit = args.threads / SLEEP_SECONDS
        ratio = get("sleep", "maitred") / limit
        out.append(f"sleep: maitred / pool limit ({limit:.0f} req/s) = {ratio:.3f} (bar 0.95) -> "
                   f"{'met' if ratio >= 0.95 else 'NOT met'}")
    if samples.get(("hello", "maitred")) and samples.get(("hello", "waitress")):
        mine = max(r[4] for r in samples[("hello", "maitred")])
        theirs = max(r[4] for r in samples[("hello", "waitress")])
        ratio = mine / theirs
        out.append(f"hello: peak RSS maitred / waitress = {ratio:.2f} (bar 1.25) -> "
                   f"{'met' if ratio <= 1.25 else 'NOT met'}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="maitred,granian,granian1,fastwsgi,waitress")
    ap.add_argument("--scenarios", default="hello,big,echo,stream,sleep")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds of measured load per run")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--scaling", action="store_true",
                    help="only compare workers = 1 and 2 on the CPU-bound app (threads = 1)")
    ap.add_argument("--logdir", default=os.path.join(ROOT, "target", "bench-logs"))
    ap.add_argument("--markdown", default=None, help="also write the report here")
    args = ap.parse_args()
    os.makedirs(args.logdir, exist_ok=True)
    if not os.path.exists(MAITRED):
        raise SystemExit(f"{MAITRED} is missing: cargo build --release")

    report = []
    if args.scaling:
        args.threads = 1
        servers = ["maitred", "maitred2"]
        samples = measure(["cpu"], servers, args)
        report.append(table(samples, ["cpu"], servers))
        one, two = median(samples[("cpu", "maitred")], 0), median(samples[("cpu", "maitred2")], 0)
        report.append(f"\nworkers = 2 / workers = 1 on the CPU-bound app: {two / one:.2f}x")
    else:
        scenarios = args.scenarios.split(",")
        servers = args.servers.split(",")
        samples = measure(scenarios, servers, args)
        report.append(table(samples, scenarios, servers))
        report.append("")
        report.extend(bars(samples, args))
    text = "\n".join(report)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
