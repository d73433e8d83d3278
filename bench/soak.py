#!/usr/bin/env python3
"""A soak: maitred under a mix of load, floods and faults for a bounded time,
its memory and open descriptors sampled every second.

    python3 bench/soak.py --seconds 1800               # the run (stdlib only)
    python3 bench/soak.py plot target/soak-samples.json docs/soak.png
                                                       # the plot (matplotlib)

It starts maitred (--binary, default target/release/maitred) on 127.0.0.1
with bench/soak_app.py, `--workers 2 --threads 4` and
`limits.request_timeout = 3s`, every other setting at its default. Only
loopback is ever used, and the run ends by itself after --seconds of load and
--settle seconds of quiet.

The load, for the whole run:

- wrk (if installed) cycles through the bench scenarios: /hello, /echo
  (4 KiB POST, bench/post.lua), /big (4 MiB) and /stream (chunked), for
  --wrk-seconds each with --wrk-pause seconds between them. Without wrk,
  --clients more Python threads send the same requests;
- --clients Python threads send a mix on keep-alive connections, each answer
  checked: /hello, /echo, /upload (1 MiB, spooled to a temporary file),
  /stream, /big, /sleep, /file (wsgi.file_wrapper), /write, a path that
  does not exist (404), and two faults: /raise (the app raises: 500) and
  /close-raises (close() of the body raises: the 200 must be intact).

Every minute (--cycle), one cycle of floods, as in bench/flood.py (from
127.0.0.2-254):

- 0-35 s: --idle connections that say nothing and --slowloris that trickle a
  head a byte a second (header_timeout, 30 s, cuts those);
- 35-55 s: --body connections that trickle a 1 MiB body a byte a second and
  --noread that ask for a 256 KiB echo and never read it;

and faults: every --block-every seconds a request that blocks its Python
thread for 10 s, past request_timeout (the client gets 504, the thread is
counted stuck and replaced, and comes back when the sleep ends), and once a
cycle (at 45 s) os._exit() in a request, so the supervisor replaces a worker.

Quiet readings. RSS under load depends on what is in flight at that second
(a 4 MiB response, 100 unread 256 KiB echoes), so a reading under load and
one after the load are not comparable. The second cycle, and every
--quiet-every cycles after it, therefore starts with --quiet-seconds in
which nothing is sent (no client, no wrk, no flood, no blocked thread
pending): the mean of its last 5 samples is a quiet reading. The first one
(at about 1 min 25 s) is "RSS at 1 minute"; the last is the end of the
settle after the load. Growth is end against 1 minute, both quiet. The
summary also compares, under load, the flood-free last seconds (56-60 s) of
the first cycle with those of the last five, and gives a least-squares slope.

Worker replacement and memory. A fresh worker has a smaller RSS than one
that has served for a while, so the RSS of the whole process tree drops
each time one is replaced, and a leak in the workers could hide behind the
replacements. So the soak always kills the younger worker (/exit?PID: the
app exits only in the worker with that pid, the request is repeated on
fresh connections until it lands there) and one worker, "old", lives
through the whole run. The samples hold the RSS of the supervisor, of the
old worker, of the young one and of the tree; growth is reported for the
tree (what a container limit sees) and for supervisor + old worker (the
processes that lived through everything, the honest leak measure).

Every second it prints the elapsed time, the phase, RSS (tree and per
process), open descriptors (tree and per process), flood connections open,
cumulative requests, the faults provoked and errors by kind (a failure on a
keep-alive connection before any answer is named apart: a client such as
urllib3 retries those). At the end (load stopped, --settle seconds of quiet)
it prints a summary (the quiet readings and the growth between them, the
under-load comparison, descriptors at baseline, peak and end, the old
worker's resident memory by kind of mapping from /proc/PID/smaps at each
quiet reading, request and error totals, errors within seconds of a worker
exit apart from the others) and writes everything to --out (JSON).
"""
import argparse
import asyncio
import collections
import http.client
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

HOST = "127.0.0.1"
BLOCK_SECONDS = 10.0
REQUEST_TIMEOUT = "3s"

# --------------------------------------------------------------------------
# /proc


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


def proc_figures(pid):
    """{rss, anon, fds} in KiB / count, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    out = {"rss": 0, "anon": 0, "fds": fds}
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1])
        elif line.startswith("RssAnon:"):
            out["anon"] = int(line.split()[1])
    return out


def smaps_breakdown(pid):
    """Resident KiB of a process by kind of mapping: the brk heap (C malloc:
    CPython's objects and buffers), anonymous mappings (mimalloc's segments
    for Rust, pymalloc's arenas, large C mallocs, thread stacks), files
    (the binary, libpython, extension modules) and the rest."""
    out = collections.Counter()
    try:
        with open(f"/proc/{pid}/smaps") as f:
            kind = None
            for line in f:
                first = line.split(None, 6)
                if "-" in first[0] and len(first) >= 5 and ":" in first[3]:
                    name = first[5].strip() if len(first) > 5 else ""
                    if name == "[heap]":
                        kind = "heap"
                    elif name == "":
                        kind = "anon"
                    elif name.startswith("[stack"):
                        kind = "stack"
                    elif name.startswith("/"):
                        kind = "file"
                    else:
                        kind = "other"
                    out[kind + "_mappings"] += 1
                elif line.startswith("Rss:"):
                    out[kind] += int(line.split()[1])
    except OSError:
        return None
    return dict(out)


def start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------
# Shared state


class State:
    def __init__(self, args, port, admin_port, sup_pid):
        self.args = args
        self.port, self.admin_port, self.sup_pid = port, admin_port, sup_pid
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.began = None  # time.monotonic() at the start of the load
        self.phase = "warm-up"  # the flood phase under load
        self.stage = "load"  # then "stopping", then "settle"
        self.outcomes = collections.Counter()  # (source, route, outcome) -> n
        self.error_events = []  # (t, source, route, kind)
        self.events = []  # dicts: exits, blocks, flood phases, worker changes
        self.hello_ms = []
        self.wrk = collections.Counter()  # requests, errors by kind
        self.wrk_runs = []
        self.flood_open = 0
        self.flood_stats = collections.Counter()
        self.metrics = {}
        self.metrics_at = None
        self.py_stats = {}  # pid -> last /stats answer
        self.old_worker = None
        self.smaps = []  # the old worker's smaps breakdown at checkpoints
        # Quiet windows: [start, end) in seconds since the load started,
        # when every client, wrk, flood and fault waits, so the memory can
        # be read with nothing in flight, like for like with the end.
        self.windows = [(c * args.cycle, c * args.cycle + args.quiet_seconds)
                        for c in quiet_cycles(args)]

    def quiet_at(self, t, margin=0.0):
        """The quiet window that t (seconds since the load started) is in,
        or that starts within margin seconds after it; None otherwise."""
        for a, b in self.windows:
            if a - margin <= t < b:
                return (a, b)
        return None

    def overlaps(self, t0, t1):
        return any(a < t1 and t0 < b for a, b in self.windows)

    def wait_quiet(self):
        """Sleeps out a quiet window if one is on; True if it did."""
        w = self.quiet_at(self.t())
        if not w:
            return False
        self.stop.wait(max(0.0, self.began + w[1] - time.monotonic()))
        return True

    def t(self):
        return round(time.monotonic() - self.began, 3) if self.began else 0.0

    def event(self, kind, **kw):
        with self.lock:
            self.events.append({"t": self.t(), "kind": kind, **kw})

    def count(self, source, route, outcome, t=None):
        with self.lock:
            self.outcomes[(source, route, outcome)] += 1
            if outcome != "ok" and not outcome.startswith("expected"):
                self.error_events.append((t if t is not None else self.t(), source, route, outcome))


# --------------------------------------------------------------------------
# The Python client mix


def quiet_cycles(args):
    """The cycles that begin with a quiet window: the second (the end of the
    first minute) and then every --quiet-every cycles, each followed by at
    least half a cycle of load (the settle after the load is the last quiet
    reading)."""
    if args.quiet_seconds <= 0:
        return []
    cycles = sorted({1, *range(args.quiet_every, int(args.seconds // args.cycle), args.quiet_every)})
    # Each followed by at least half a cycle of load.
    return [c for c in cycles if c * args.cycle + args.quiet_seconds + args.cycle / 2 <= args.seconds]


def expected_bodies():
    import soak_app  # noqa: E402  (bench/soak_app.py: the same constants)
    return {
        "hello": soak_app.HELLO,
        "stream_len": soak_app.STREAM_CHUNKS * len(soak_app.STREAM_CHUNK),
        "big_len": soak_app.BIG_SIZE,
        "self": soak_app.SELF,
    }


ECHO_BODY = bytes(random.Random(1).getrandbits(8) for _ in range(4096))
UPLOAD_BODY = b"u" * (1024 * 1024)

# route -> (weight, method, path, body)
MIX = {
    "hello": (25, "GET", "/hello", None),
    "echo": (12, "POST", "/echo", ECHO_BODY),
    "upload": (2, "POST", "/upload", UPLOAD_BODY),
    "stream": (6, "GET", "/stream", None),
    "big": (1, "GET", "/big", None),
    "sleep": (12, "GET", "/sleep", None),
    "file": (6, "GET", "/file", None),
    "write": (6, "GET", "/write", None),
    "head": (3, "HEAD", "/hello", None),
    "missing": (2, "GET", "/missing", None),
    "raise": (2, "GET", "/raise", None),
    "close-raises": (2, "GET", "/close-raises", None),
}
# Without wrk, the scenario clients send these.
SCENARIO_MIX = {k: MIX[k] for k in ("hello", "echo", "big", "stream")}


def check(route, status, data, exp):
    """None if the answer is the one expected, else what was wrong."""
    want = {"missing": 404, "raise": 500}.get(route, 200)
    if status != want:
        return f"status {status}"
    ok = {
        "hello": data == exp["hello"],
        "echo": data == ECHO_BODY,
        "upload": data == str(len(UPLOAD_BODY)).encode(),
        "stream": len(data) == exp["stream_len"],
        "big": len(data) == exp["big_len"],
        "sleep": data == exp["hello"],
        "file": data == exp["self"],
        "write": data == exp["hello"],
        "head": data == b"",
        "close-raises": data == exp["self"],
    }.get(route, True)
    return None if ok else f"wrong body ({len(data)} bytes)"


CLOSED_EARLY = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                http.client.IncompleteRead)


def client_loop(state, seed, mix, source, exp):
    rng = random.Random(seed)
    routes = list(mix)
    weights = [mix[r][0] for r in routes]
    conn, reused = None, False
    while not state.stop.is_set():
        if state.quiet_at(state.t()):
            if conn is not None:
                conn.close()
                conn = None
            state.wait_quiet()
            continue
        route = rng.choices(routes, weights)[0]
        _, method, path, body = mix[route]
        if conn is None:
            conn, reused = http.client.HTTPConnection(HOST, state.port, timeout=30), False
        t0 = time.monotonic()
        resp = None
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            data = resp.read()
        except Exception as e:  # noqa: BLE001 - every failure is counted
            conn.close()
            conn = None
            kind = type(e).__name__
            if resp is not None:
                # The head came and the body was cut short.
                kind = "response cut short: " + kind
            elif reused and isinstance(e, CLOSED_EARLY):
                # A keep-alive connection that the server closed (or whose
                # worker died) before any answer: counted apart, as a client
                # such as urllib3 retries it.
                kind = "keep-alive connection closed: " + kind
            state.count(source, route, kind)
            continue
        took = time.monotonic() - t0
        reused = True
        wrong = check(route, resp.status, data, exp)
        state.count(source, route, wrong or "ok")
        if route == "hello" and wrong is None and source == "mix":
            with state.lock:
                state.hello_ms.append(round(1000 * took, 2))
        if resp.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


# --------------------------------------------------------------------------
# wrk


WRK_SCENARIOS = [
    # name, path, connections, extra arguments
    ("hello", "/hello", 16, []),
    ("echo", "/echo", 16, ["-s", os.path.join(HERE, "post.lua")]),
    ("big", "/big", 4, []),
    ("stream", "/stream", 8, []),
]


def parse_wrk(text):
    out = collections.Counter()
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non-2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        for k, v in zip(("connect", "read", "write", "timeout"), m.groups()):
            if int(v):
                out[k] = int(v)
    return out


def wrk_loop(state, deadline):
    i = 0
    while not state.stop.is_set():
        left = deadline - time.monotonic()
        if left < 2:
            break
        if state.wait_quiet():
            continue
        seconds = min(state.args.wrk_seconds, left)
        upcoming = state.quiet_at(state.t(), margin=seconds)
        if upcoming:
            # End before the quiet window starts.
            seconds = upcoming[0] - state.t()
            if seconds < 1:
                state.stop.wait(seconds)
                continue
        seconds = int(seconds)
        name, path, conns, extra = WRK_SCENARIOS[i % len(WRK_SCENARIOS)]
        i += 1
        start = state.t()
        run = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", *extra,
                              f"http://{HOST}:{state.port}{path}"],
                             capture_output=True, text=True, timeout=seconds + 60)
        got = parse_wrk(run.stdout)
        with state.lock:
            state.wrk.update(got)
            state.wrk_runs.append({"t0": start, "t1": state.t(), "scenario": name, **got})
        state.stop.wait(min(state.args.wrk_pause, max(0.0, deadline - time.monotonic())))


# --------------------------------------------------------------------------
# Floods


async def flood_phase(state, kinds, seconds):
    import flood as floodmod  # bench/flood.py: the flood connections

    floods = [floodmod.Flood(state.port, kind, count, same_address=False, reopen=False)
              for kind, count in kinds if count]
    ready = asyncio.Semaphore(0)
    opening = asyncio.Semaphore(200)
    tasks = []

    async def start(f, i):
        async with opening:
            tasks.append(asyncio.ensure_future(f.one(i, ready)))
            await ready.acquire()

    async def watch():
        peak = 0
        while True:
            state.flood_open = sum(f.open for f in floods)
            peak = max(peak, state.flood_open)
            state.flood_stats["peak_" + "+".join(k for k, _ in kinds)] = max(
                state.flood_stats["peak_" + "+".join(k for k, _ in kinds)], peak)
            await asyncio.sleep(0.25)

    watcher = asyncio.ensure_future(watch())
    offset = 0
    starters = []
    for f in floods:
        starters += [start(f, offset + i) for i in range(f.count)]
        offset += f.count
    opener = asyncio.ensure_future(asyncio.gather(*starters))
    await asyncio.sleep(seconds)
    opener.cancel()
    for f in floods:
        f.stop = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(opener, *tasks, return_exceptions=True)
    watcher.cancel()
    state.flood_open = 0
    summary = {f.kind: {"count": f.count, "closed_by_server": f.closed_by_server,
                        "failed_opens": f.failed_opens} for f in floods}
    for f in floods:
        state.flood_stats[f"{f.kind}_opened"] += f.count
        state.flood_stats[f"{f.kind}_closed_by_server"] += f.closed_by_server
        state.flood_stats[f"{f.kind}_failed_opens"] += f.failed_opens
    return summary


async def flood_schedule(state, deadline):
    a = state.args
    cycle = 0
    plan = [  # (offset, length, phase name, kinds)
        (0, 35, "idle+slowloris", [("idle", a.idle), ("slowloris", a.slowloris)]),
        (35, 20, "body+noread", [("body", a.body), ("noread", a.noread)]),
    ]
    while not state.stop.is_set():
        base = state.began + cycle * a.cycle
        for offset, length, name, kinds in plan:
            at = base + offset
            if at >= deadline - 1:
                return
            now = time.monotonic()
            if at > now:
                await asyncio.sleep(at - now)
            length = min(length, deadline - time.monotonic())
            if state.stop.is_set() or length < 1:
                return
            if state.overlaps(cycle * a.cycle + offset, cycle * a.cycle + offset + length):
                continue  # no flood across a quiet window
            state.phase = name
            state.event("flood", phase=name, seconds=round(length, 1))
            summary = await flood_phase(state, kinds, length)
            state.event("flood-end", phase=name, result=summary)
            state.phase = "mix"
        cycle += 1


# --------------------------------------------------------------------------
# Faults: blocking requests and os._exit()


def get_once(port, path, timeout):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def block_once(state):
    t0 = time.monotonic()
    try:
        status, _ = get_once(state.port, f"/block?{BLOCK_SECONDS}", 30)
        outcome = "expected 504" if status == 504 else f"status {status}"
    except Exception as e:  # noqa: BLE001
        outcome = type(e).__name__
    state.count("fault", "block", outcome)
    state.event("block", outcome=outcome, seconds=round(time.monotonic() - t0, 2))


def workers(state):
    return children(state.sup_pid)


def exit_young(state):
    """os._exit() in the younger worker; returns once a new one runs."""
    current = workers(state)
    young = [p for p in current if p != state.old_worker]
    if not young:
        state.event("exit-skipped", why="no young worker", workers=current)
        return
    target = young[0]
    t0 = time.monotonic()
    for attempt in range(1, 201):
        if state.stop.is_set():
            return
        try:
            status, data = get_once(state.port, f"/exit?{target}", 10)
        except CLOSED_EARLY:
            state.count("fault", "exit", "expected connection closed")
            break
        except Exception as e:  # noqa: BLE001
            state.count("fault", "exit", type(e).__name__)
            state.event("exit-failed", target=target, error=type(e).__name__)
            return
        if status != 200 or not data.startswith(b"not me"):
            state.count("fault", "exit", f"status {status}")
        time.sleep(0.02)
    else:
        state.event("exit-missed", target=target, attempts=attempt)
        return
    exited = state.t()
    # Wait for the supervisor to have started its replacement.
    replaced = None
    while time.monotonic() - t0 < 60 and not state.stop.is_set():
        now = workers(state)
        new = [p for p in now if p not in current]
        if target not in now and new:
            replaced = new[0]
            break
        time.sleep(0.05)
    state.event("exit", target=target, attempts=attempt, t_exit=exited, new_worker=replaced,
                replaced_after=round(state.t() - exited, 2) if replaced else None)


def fault_loop(state, deadline):
    a = state.args
    next_block = state.began + a.block_every / 2
    cycle = 0
    next_exit = state.began + a.exit_at
    while not state.stop.is_set():
        now = time.monotonic()
        # No block in the last seconds of the load, so the thread it holds
        # is back before the end is measured.
        if now >= next_block:
            # None in the last seconds of the load or just before a quiet
            # window, so the thread it holds is back before those are read.
            if now < deadline - BLOCK_SECONDS - 2 and not state.quiet_at(state.t(), BLOCK_SECONDS + 2):
                threading.Thread(target=block_once, args=(state,), daemon=True).start()
            next_block += a.block_every
        if a.exit_at >= 0 and now >= next_exit and now < deadline - 15:
            if not state.quiet_at(state.t(), 10):
                exit_young(state)
            cycle += 1
            next_exit = state.began + cycle * a.cycle + a.exit_at
        state.stop.wait(0.1)


# --------------------------------------------------------------------------
# Metrics and Python-side figures

METRICS = [
    "maitred_worker_restarts_total", "maitred_workers", "maitred_python_threads",
    "maitred_python_threads_stuck", "maitred_python_thread_replacements_total",
    "maitred_connections_active", "maitred_connections_accepted_total",
    "maitred_connections_evicted_total", "maitred_connection_limit_reached_total",
    "process_open_fds", "process_resident_memory_bytes",
]
LABELLED = ["maitred_app_exceptions_total", "maitred_gateway_responses_total",
            "maitred_connection_timeouts_total", "maitred_connections_rejected_total"]


def scrape(admin_port):
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    requests = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            v = float(value)
        except ValueError:
            continue
        if name == "http_server_request_duration_seconds_count":
            requests += v
        elif name in METRICS:
            out[name] = v
        elif name in LABELLED and v:
            out[name_labels] = v
    out["http_requests"] = requests
    return out


def metrics_loop(state):
    while True:
        try:
            m = scrape(state.admin_port)
            with state.lock:
                state.metrics, state.metrics_at = m, state.t()
        except Exception:  # noqa: BLE001 - a missed scrape is not a fault of the server under test
            pass
        try:
            _, data = get_once(state.port, "/stats", 5)
            s = json.loads(data)
            with state.lock:
                state.py_stats.setdefault(s["pid"], []).append({**s, "t": state.t()})
        except Exception:  # noqa: BLE001
            pass
        if state.stop.wait(5):
            return


# --------------------------------------------------------------------------
# Sampling


def sample(state):
    sup = state.sup_pid
    procs = {p: proc_figures(p) for p in tree(sup)}
    procs = {p: f for p, f in procs.items() if f}
    ws = [p for p in children(sup) if p in procs]
    if state.old_worker not in ws and ws and state.began is not None:
        # The old worker died without being asked to: say so, and carry on
        # with the oldest remaining one (the series is broken there).
        oldest = min(ws, key=lambda p: start_ticks(p) or 0)
        state.event("old-worker-lost", old=state.old_worker, new=oldest)
        state.old_worker = oldest
    old = procs.get(state.old_worker)
    young = [p for p in ws if p != state.old_worker]
    phase = state.phase
    if state.stage != "load":
        phase = state.stage
    elif state.began is not None and state.quiet_at(state.t()):
        phase = "quiet"
    with state.lock:
        s = {
            "t": round(state.t(), 1),
            "phase": phase,
            "rss_tree": sum(f["rss"] for f in procs.values()),
            "anon_tree": sum(f["anon"] for f in procs.values()),
            "fds_tree": sum(f["fds"] for f in procs.values()),
            "sup": procs.get(sup),
            "old": dict(old, pid=state.old_worker) if old else None,
            "young": [dict(procs[p], pid=p) for p in young],
            "others": len(procs) - 1 - len(ws),
            "flood_open": state.flood_open,
            "requests": sum(n for (src, _, _), n in state.outcomes.items()) + state.wrk["requests"],
            "py_requests": sum(state.outcomes.values()),
            "wrk_requests": state.wrk["requests"],
            "server_requests": state.metrics.get("http_requests"),
            "errors": error_counts(state),
            "faults": fault_counts(state),
        }
    s["stable_rss"] = (s["sup"]["rss"] if s["sup"] else 0) + (old["rss"] if old else 0)
    s["stable_anon"] = (s["sup"]["anon"] if s["sup"] else 0) + (old["anon"] if old else 0)
    return s


def error_counts(state):
    """Errors by kind (the caller holds the lock): unexpected outcomes of
    the Python clients and wrk's error counts."""
    out = collections.Counter()
    for (src, route, outcome), n in state.outcomes.items():
        if outcome != "ok" and not outcome.startswith("expected"):
            out[outcome] += n
    for k, v in state.wrk.items():
        if k != "requests":
            out["wrk " + k] += v
    return dict(out)


def fault_counts(state):
    """The faults provoked and answered as expected (the caller holds the
    lock)."""
    out = collections.Counter()
    for (src, route, outcome), n in state.outcomes.items():
        if route in ("raise", "close-raises") and outcome == "ok":
            out[route] += n
        elif outcome.startswith("expected"):
            out[route] += n
    return dict(out)


def show(s):
    mib = lambda k: k / 1024  # noqa: E731
    young = " ".join(f"{mib(y['rss']):.1f}" for y in s["young"]) or "-"
    yfds = " ".join(str(y["fds"]) for y in s["young"]) or "-"
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "none"
    print(f"{s['t']:7.1f}s {s['phase']:<14} RSS {mib(s['rss_tree']):6.1f} MiB "
          f"(sup {mib(s['sup']['rss']) if s['sup'] else 0:.1f} old "
          f"{mib(s['old']['rss']) if s['old'] else 0:.1f} young {young}) "
          f"fds {s['fds_tree']} (sup {s['sup']['fds'] if s['sup'] else 0} old "
          f"{s['old']['fds'] if s['old'] else 0} young {yfds}) flood {s['flood_open']} | "
          f"requests {s['requests']} (wrk {s['wrk_requests']}, server {int(s['server_requests'] or 0)}) | "
          f"faults {' '.join(f'{k} {v}' for k, v in sorted(s['faults'].items())) or '-'} | "
          f"errors {errs}", flush=True)


# --------------------------------------------------------------------------
# The run


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            get_once(port, "/hello", 2)
            return True
        except Exception:  # noqa: BLE001
            time.sleep(0.2)
    return False


def warm_up(state, exp):
    """Every route once on each worker (as far as the kernel spreads the
    connections), so the baseline has what a first request opens."""
    for _ in range(6):
        for route, (_, method, path, body) in MIX.items():
            conn = http.client.HTTPConnection(HOST, state.port, timeout=30)
            try:
                conn.request(method, path, body=body, headers={"Connection": "close"})
                resp = conn.getresponse()
                wrong = check(route, resp.status, resp.read(), exp)
                if wrong:
                    raise SystemExit(f"warm-up: {route}: {wrong}")
            finally:
                conn.close()


def run(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = args.idle + args.slowloris + args.body + args.noread + 500
    if need > hard:
        raise SystemExit(f"the open-file limit ({hard}) is too low for {need} connections")
    use_wrk = not args.no_wrk and subprocess.run(["sh", "-c", "command -v wrk"],
                                                 capture_output=True).returncode == 0
    exp = expected_bodies()
    port, admin_port = free_port(), free_port()
    cmd = [os.path.abspath(args.binary), "--listen", f"{HOST}:{port}", "--admin-listen", f"{HOST}:{admin_port}",
           "--workers", str(args.workers), "--threads", str(args.threads),
           "--limits-request-timeout", REQUEST_TIMEOUT, "--app-dir", HERE, "soak_app:app"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env = {k: v for k, v in env.items() if not k.startswith("MAITRED_") and k != "RUST_LOG"}
    os.makedirs(os.path.dirname(os.path.abspath(args.server_log)), exist_ok=True)
    log = open(args.server_log, "w")
    print("# " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    state = State(args, port, admin_port, proc.pid)
    samples, threads, exit_code = [], [], None
    try:
        if not wait_ready(port, proc):
            raise SystemExit(f"maitred did not start; see {args.server_log}")
        warm_up(state, exp)
        time.sleep(3)
        ws = workers(state)
        state.old_worker = min(ws, key=lambda p: start_ticks(p) or 0) if ws else None
        baseline = sample(state)
        baseline["phase"] = "baseline"
        capture_smaps(state, "baseline")
        print("# baseline (after warm-up, before the load):", flush=True)
        show(baseline)

        state.began = time.monotonic()
        deadline = state.began + args.seconds
        state.phase = "mix"

        def spawn(target, *a):
            th = threading.Thread(target=target, args=a, daemon=True)
            th.start()
            threads.append(th)

        for i in range(args.clients):
            spawn(client_loop, state, i, MIX, "mix", exp)
        if use_wrk:
            spawn(wrk_loop, state, deadline)
        else:
            for i in range(args.clients):
                spawn(client_loop, state, 100 + i, SCENARIO_MIX, "scenario", exp)
        spawn(fault_loop, state, deadline)
        spawn(metrics_loop, state)
        flood_thread = threading.Thread(target=lambda: asyncio.run(flood_schedule(state, deadline)), daemon=True)
        flood_thread.start()

        tick = state.began
        captured = set()
        while True:
            tick += 1
            now = time.monotonic()
            if tick > now:
                time.sleep(tick - now)
            if time.monotonic() >= deadline and not state.stop.is_set():
                state.stop.set()
                state.stage = "stopping"
                state.event("load-end")
            if state.stage == "stopping":
                # Wait for the load to be gone before the settle starts.
                if not flood_thread.is_alive() and not any(t.is_alive() for t in threads):
                    state.stage = "settle"
                    settle_from = time.monotonic()
            if proc.poll() is not None:
                state.event("server-exited", code=proc.returncode)
                print(f"# maitred exited with {proc.returncode}; see {args.server_log}", flush=True)
                break
            s = sample(state)
            samples.append(s)
            show(s)
            w = state.quiet_at(s["t"])
            if s["phase"] == "quiet" and w and w[1] - s["t"] <= 1.5 and w not in captured:
                captured.add(w)
                capture_smaps(state, f"quiet at {w[0]:.0f} s")
            if state.stage == "settle" and time.monotonic() - settle_from >= args.settle:
                capture_smaps(state, "end")
                break
            if time.monotonic() > deadline + args.settle + 180:
                state.event("stop-overran")
                print("# the load did not stop in time; ending anyway", flush=True)
                break
        try:
            final_metrics = scrape(admin_port)
        except Exception as e:  # noqa: BLE001
            final_metrics = {"error": str(e)}
    finally:
        state.stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                exit_code = proc.wait()
        else:
            exit_code = proc.returncode
        log.close()

    summary = summarize(state, baseline, samples, final_metrics, exit_code, use_wrk)
    print_summary(summary)
    with open(args.out, "w") as f:
        json.dump({"command": cmd, "args": vars(args), "summary": summary, "baseline": baseline,
                   "samples": samples, "events": state.events, "wrk_runs": state.wrk_runs,
                   "python_stats": state.py_stats, "smaps": state.smaps,
                   "windows": state.windows, "final_metrics": final_metrics}, f)
    print(f"# samples written to {args.out}")
    if args.plot:
        plot(args.out, args.plot)
    return 0


def capture_smaps(state, label):
    procs = {"sup": state.sup_pid, "old": state.old_worker}
    young = [p for p in workers(state) if p != state.old_worker]
    if young:
        procs["young"] = young[0]
    entry = {"label": label, "t": round(state.t(), 1)}
    for name, pid in procs.items():
        entry[name] = smaps_breakdown(pid)
    state.smaps.append(entry)


def at(samples, t):
    return min(samples, key=lambda s: abs(s["t"] - t))


def slope_per_hour(points):
    """Least-squares slope of (t seconds, y) in y per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 3600 * sum((t - mt) * (y - my) for t, y in points) / den if den else float("nan")


def mean_of(samples, key):
    return sum(key(x) for x in samples) / len(samples) if samples else float("nan")


def reading(state, samples, label, t=None):
    """Memory and descriptors over the last 5 samples of a quiet stretch."""
    mib = lambda k: round(k / 1024, 2)  # noqa: E731
    return {
        "label": label,
        "t": samples[-1]["t"] if t is None else t,
        "tree": mib(mean_of(samples, lambda x: x["rss_tree"])),
        "stable": mib(mean_of(samples, lambda x: x["stable_rss"])),
        "stable_anon": mib(mean_of(samples, lambda x: x["stable_anon"])),
        "sup": mib(mean_of(samples, lambda x: x["sup"]["rss"])),
        "old": mib(mean_of(samples, lambda x: x["old"]["rss"] if x["old"] else 0)),
        "young": mib(mean_of(samples, lambda x: sum(y["rss"] for y in x["young"]))),
        "fds": samples[-1]["fds_tree"],
        "fds_by_process": {"sup": samples[-1]["sup"]["fds"],
                           "old": samples[-1]["old"]["fds"] if samples[-1]["old"] else None,
                           "young": [y["fds"] for y in samples[-1]["young"]]},
    }


def summarize(state, baseline, samples, final_metrics, exit_code, use_wrk):
    a = state.args
    mib = lambda k: round(k / 1024, 2)  # noqa: E731
    load = [s for s in samples if s["phase"] not in ("stopping", "settle")]
    settle = [s for s in samples if s["phase"] == "settle"]

    # Quiet readings: the last 5 samples of each quiet window, and of the
    # settle after the load. The first is the reading at one minute.
    quiet = []
    for w0, w1 in state.windows:
        inside = [s for s in load if s["phase"] == "quiet" and w0 <= s["t"] < w1]
        if inside:
            quiet.append(reading(state, inside[-5:], f"quiet window {w0:.0f}-{w1:.0f} s"))
    if settle:
        quiet.append(reading(state, settle[-5:], "end (after the load and the settle)"))
    first, last = (quiet[0], quiet[-1]) if quiet else (None, None)

    def growth(a_, b_, key):
        return round(100.0 * (b_[key] - a_[key]) / a_[key], 2) if a_ and b_ and a_[key] else None

    # Under load, like for like: the flood-free last seconds of every cycle
    # (56-60 s: the mix and wrk, no flood), first cycle against the last five.
    gaps = []
    for c in range(int(load[-1]["t"] // a.cycle) + 1):
        inside = [s for s in load if s["phase"] == "mix" and c * a.cycle + 56 <= s["t"] < (c + 1) * a.cycle]
        if inside:
            gaps.append(reading(state, inside, f"cycle {c}, 56-60 s under load", t=c * a.cycle + 58))
    under_load = None
    if len(gaps) >= 6:
        tail = gaps[-5:]
        tail_mean = {k: sum(g[k] for g in tail) / 5 for k in ("tree", "stable", "old")}
        under_load = {
            "first_cycle": {k: gaps[0][k] for k in ("tree", "stable", "old")},
            "last_5_cycles": {k: round(v, 2) for k, v in tail_mean.items()},
            "growth_pct": {k: round(100.0 * (tail_mean[k] - gaps[0][k]) / gaps[0][k], 2)
                           for k in ("tree", "stable", "old")},
            "slope_mib_per_hour": {k: round(slope_per_hour([(g["t"], g[k]) for g in gaps]), 2)
                                   for k in ("tree", "stable", "old")},
        }

    outcomes = collections.defaultdict(dict)
    for (src, route, outcome), n in sorted(state.outcomes.items()):
        outcomes[f"{src} {route}"][outcome] = n
    exits = [e for e in state.events if e["kind"] == "exit"]
    windows = [(e["t_exit"] - 1.0, e["t_exit"] + (e["replaced_after"] or 10) + 2.0) for e in exits]
    near_exit, elsewhere = collections.Counter(), collections.Counter()
    for t, src, route, kind in state.error_events:
        (near_exit if any(a_ <= t <= b_ for a_, b_ in windows) else elsewhere)[kind] += 1
    wrk_exit, wrk_else = collections.Counter(), collections.Counter()
    for r in state.wrk_runs:
        overlapped = any(r["t0"] <= e["t_exit"] <= r["t1"] + 1 for e in exits)
        for k, v in r.items():
            if k not in ("t0", "t1", "scenario", "requests"):
                (wrk_exit if overlapped else wrk_else)[k] += v
    hello = sorted(state.hello_ms)

    def pct(p):
        return hello[min(len(hello) - 1, int(round(p / 100 * (len(hello) - 1))))] if hello else None

    end = samples[-1]
    return {
        "load_seconds": load[-1]["t"],
        "wrk": use_wrk,
        "server_exit_code": exit_code,
        "rss_mib": {
            "baseline": {"tree": mib(baseline["rss_tree"]), "stable": mib(baseline["stable_rss"]),
                         "sup": mib(baseline["sup"]["rss"]), "old": mib(baseline["old"]["rss"])},
            "quiet_readings": quiet,
            "at_1_min": first,
            "end": last,
            "growth_after_1_min_pct": {k: growth(first, last, k) for k in ("tree", "stable", "stable_anon", "old")},
            "peak": {"tree": mib(max(s["rss_tree"] for s in samples)),
                     "stable": mib(max(s["stable_rss"] for s in samples))},
            "under_load": under_load,
            "under_load_by_cycle": [[g["t"], g["stable"], g["old"], g["tree"]] for g in gaps],
        },
        "fds": {
            "baseline": {"tree": baseline["fds_tree"], "sup": baseline["sup"]["fds"],
                         "old": baseline["old"]["fds"] if baseline["old"] else None,
                         "young": [y["fds"] for y in baseline["young"]]},
            "peak": max(s["fds_tree"] for s in samples),
            "at_quiet_readings": [[q["t"], q["fds"]] for q in quiet],
            "end": {"tree": end["fds_tree"], "sup": end["sup"]["fds"],
                    "old": end["old"]["fds"] if end["old"] else None,
                    "young": [y["fds"] for y in end["young"]]},
        },
        "requests": {
            "total": end["requests"], "wrk": state.wrk["requests"], "python": end["py_requests"],
            "server_counted": final_metrics.get("http_requests"),
        },
        "outcomes": outcomes,
        "errors": {"all": end["errors"],
                   "python_near_a_worker_exit": dict(near_exit),
                   "python_elsewhere": dict(elsewhere),
                   "wrk_runs_overlapping_a_worker_exit": dict(wrk_exit),
                   "wrk_other_runs": dict(wrk_else)},
        "events": dict(collections.Counter(e["kind"] for e in state.events)),
        "floods": dict(state.flood_stats),
        "hello_latency_ms": {"n": len(hello), "p50": pct(50), "p99": pct(99), "max": hello[-1] if hello else None},
        "smaps_kib": state.smaps,
        "final_metrics": final_metrics,
    }


def print_summary(s):
    r, f = s["rss_mib"], s["fds"]
    print("\n# summary")
    print(f"load {s['load_seconds']:.0f} s, wrk {'yes' if s['wrk'] else 'no'}, "
          f"maitred exit code {s['server_exit_code']}")
    print(f"RSS MiB at baseline (before the load): {r['baseline']}")
    print("RSS MiB with nothing in flight (mean of the last 5 s of each quiet stretch):")
    for q in r["quiet_readings"]:
        print(f"  {q['t']:7.1f}s tree {q['tree']:6.2f}  supervisor+old worker {q['stable']:6.2f} "
              f"(supervisor {q['sup']:.2f}, old {q['old']:.2f})  young {q['young']:.2f}  fds {q['fds']}  "
              f"[{q['label']}]")
    g = r["growth_after_1_min_pct"]
    print(f"RSS growth from the reading at 1 min to the end: tree {g['tree']}%, "
          f"supervisor+old worker {g['stable']}% (anonymous {g['stable_anon']}%), old worker {g['old']}%")
    if r["under_load"]:
        u = r["under_load"]
        print(f"under load (56-60 s of each cycle): first cycle {u['first_cycle']}, last five "
              f"{u['last_5_cycles']}, growth {u['growth_pct']}%, slope {u['slope_mib_per_hour']} MiB/h")
    print(f"peak RSS MiB {r['peak']}")
    print(f"fds baseline {f['baseline']} | peak tree {f['peak']} | at quiet readings {f['at_quiet_readings']} "
          f"| end {f['end']}")
    for e in s["smaps_kib"]:
        print(f"  smaps KiB {e['label']} ({e['t']} s): old worker {e.get('old')}; supervisor {e.get('sup')}")
    print(f"requests {s['requests']}")
    print(f"errors {json.dumps(s['errors'])}")
    print(f"events {s['events']}  floods {s['floods']}")
    print(f"hello latency (Python client) {s['hello_latency_ms']}")
    for k, v in s["outcomes"].items():
        print(f"  {k}: {v}")
    ok_rss = all(v is not None and v <= 5 for v in (g["tree"], g["stable"]))
    ok_fds = f["end"]["tree"] <= f["baseline"]["tree"]
    print(f"criterion RSS growth <= 5% after 1 min (quiet readings): {'PASS' if ok_rss else 'FAIL'}")
    print(f"criterion fds back to baseline: {'PASS' if ok_fds else 'FAIL'} "
          f"({f['end']['tree']} vs {f['baseline']['tree']})")


# --------------------------------------------------------------------------
# The plot


def plot(samples_path, out_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(samples_path) as f:
        data = json.load(f)
    samples, events = data["samples"], data["events"]
    t = [s["t"] / 60 for s in samples]
    mib = lambda k: k / 1024  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
    ax1.plot(t, [mib(s["rss_tree"]) for s in samples], label="process tree (supervisor + 2 workers)", lw=0.8)
    ax1.plot(t, [mib(s["stable_rss"]) for s in samples], label="supervisor + long-lived worker", lw=0.8)
    ax1.plot(t, [mib(sum(y["rss"] for y in s["young"])) for s in samples],
             label="worker replaced every minute (os._exit)", lw=0.6, alpha=0.7)
    ax1.plot(t, [mib(s["sup"]["rss"]) if s["sup"] else 0 for s in samples], label="supervisor", lw=0.8)
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax2.plot(t, [s["fds_tree"] for s in samples], label="process tree", lw=0.8)
    ax2.plot(t, [s["flood_open"] for s in samples], label="flood connections open (client side)",
             lw=0.6, alpha=0.6)
    ax2.set_ylabel("open file descriptors")
    ax2.set_xlabel("minutes since the load started")
    ax2.set_ylim(bottom=0)
    colors = {"idle+slowloris": "tab:orange", "body+noread": "tab:purple"}
    labelled = set()
    for e in events:
        if e["kind"] == "flood":
            for ax in (ax1, ax2):
                ax.axvspan(e["t"] / 60, (e["t"] + e["seconds"]) / 60, color=colors.get(e["phase"], "grey"),
                           alpha=0.10, lw=0,
                           label=(f"flood: {e['phase']}" if ax is ax1 and e["phase"] not in labelled else None))
            labelled.add(e["phase"])
        elif e["kind"] == "exit":
            ax1.axvline(e["t_exit"] / 60, color="red", lw=0.4, alpha=0.5,
                        label="os._exit() in a request" if "exit" not in labelled else None)
            labelled.add("exit")
        elif e["kind"] == "load-end":
            for ax in (ax1, ax2):
                ax.axvline(e["t"] / 60, color="black", lw=0.8, ls="--",
                           label="load stops" if ax is ax1 else None)
    s = data["summary"]
    for i, (w0, w1) in enumerate(data.get("windows", [])):
        for ax in (ax1, ax2):
            ax.axvspan(w0 / 60, w1 / 60, color="tab:green", alpha=0.15, lw=0,
                       label="quiet window (nothing sent)" if ax is ax1 and i == 0 else None)
    quiet = s["rss_mib"].get("quiet_readings") or []
    if quiet:
        ax1.plot([q["t"] / 60 for q in quiet], [q["tree"] for q in quiet], "o", color="tab:blue", ms=4,
                 label="quiet readings (mean of the last 5 s)")
        ax1.plot([q["t"] / 60 for q in quiet], [q["stable"] for q in quiet], "o", color="tab:orange", ms=4)
        one = quiet[0]
        ax1.axhline(one["tree"] * 1.05, color="tab:blue", lw=0.6, ls=":",
                    label="+5% over the reading at 1 min")
        ax1.axhline(one["stable"] * 1.05, color="tab:orange", lw=0.6, ls=":")
    ax2.axhline(s["fds"]["baseline"]["tree"], color="black", lw=0.6, ls=":",
                label=f"baseline ({s['fds']['baseline']['tree']})")
    for ax in (ax1, ax2):
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    g = s["rss_mib"]["growth_after_1_min_pct"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.1f}%"  # noqa: E731
    ax1.set_title(f"maitred soak, {s['load_seconds'] / 60:.0f} min (workers 2): RSS from the reading at 1 min "
                  f"to the end {fmt(g['tree'])} (tree), {fmt(g['stable'])} (supervisor + long-lived worker); "
                  f"fds {s['fds']['baseline']['tree']} at baseline, {s['fds']['end']['tree']} at the end",
                  fontsize=9)
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    print(f"# plot written to {out_png}")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "plot":
        if len(sys.argv) != 4:
            raise SystemExit("usage: bench/soak.py plot SAMPLES.json OUT.png")
        plot(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1800, help="how long the load runs")
    ap.add_argument("--settle", type=float, default=25, help="quiet seconds sampled after the load")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "maitred"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--clients", type=int, default=4, help="Python client threads sending the mix")
    ap.add_argument("--no-wrk", action="store_true", help="Python clients for the bench scenarios too")
    ap.add_argument("--wrk-seconds", type=float, default=10)
    ap.add_argument("--wrk-pause", type=float, default=5)
    ap.add_argument("--cycle", type=float, default=60, help="seconds of one flood-and-exit cycle")
    ap.add_argument("--idle", type=int, default=1500)
    ap.add_argument("--slowloris", type=int, default=1500)
    ap.add_argument("--body", type=int, default=300)
    ap.add_argument("--noread", type=int, default=100)
    ap.add_argument("--block-every", type=float, default=20)
    ap.add_argument("--quiet-seconds", type=float, default=25,
                    help="length of the quiet windows (nothing sent) that start the second cycle and "
                         "every --quiet-every cycles after it; 0: none")
    ap.add_argument("--quiet-every", type=int, default=10)
    ap.add_argument("--exit-at", type=float, default=45,
                    help="second of each cycle at which a worker calls os._exit() (-1: never)")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "soak-samples.json"))
    ap.add_argument("--server-log", default=os.path.join(ROOT, "target", "soak-server.log"))
    ap.add_argument("--plot", help="also draw the plot to this PNG (needs matplotlib)")
    args = ap.parse_args()
    if args.workers < 2 and args.exit_at >= 0:
        raise SystemExit("os._exit() needs --workers 2 or more (or --exit-at -1)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
