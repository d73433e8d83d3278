#!/usr/bin/env python3
"""Connection floods against one server on loopback, and how an ordinary
client fares meanwhile.

    python3 bench/flood.py --server maitred --kind idle --count 10000
    python3 bench/flood.py --server waitress --kind slowloris --count 1000

Starts the server (bench/compare.py's command line, app `apps:echo`, the
server's defaults otherwise), opens --count connections of one --kind and
keeps them open (with --reopen, one the server closes is opened again half a
second later, as an attacker would):

- idle: connect and say nothing;
- slowloris: a request head trickled one byte a second, never finished;
- body: a head announcing a 1 MiB body, the body trickled one byte a second;
- noread: a request echoing 256 KiB, the answer never read.

Once they are up it sends --probes ordinary requests (a POST to the echo
app, each on a fresh connection, one at a time) and prints their p50/p99
latency, how many were refused or failed, and the server's RSS (VmRSS of
its process tree, every second) and open descriptors. Loopback only, bounded
by --seconds. The flood connections come from 127.0.0.2-127.0.0.254 (as
several clients would) unless --same-address; the probes from 127.0.0.1.
"""
import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import compare  # bench/compare.py: server command lines, ports, /proc readers

PROBE = b"POST /echo HTTP/1.1\r\nHost: probe\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def rss_kib(pid):
    def vmrss(text):
        return sum(int(l.split()[1]) for l in text.splitlines() if l.startswith("VmRSS:"))
    return compare.over_tree(pid, "status", vmrss)


def open_fds(pid):
    total = 0
    for p in compare.tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


class Flood:
    """Keeps `count` connections of one kind open against the server."""

    def __init__(self, port, kind, count, same_address, reopen):
        self.port, self.kind, self.count = port, kind, count
        self.same_address = same_address
        self.reopen = reopen
        self.closed_by_server = 0
        self.open = 0
        self.reopened = 0
        self.failed_opens = 0
        self.stop = False

    def source(self, i):
        if self.same_address:
            return None
        return (f"127.0.0.{2 + i % 253}", 0)

    async def one(self, i, ready):
        first = True
        while not self.stop:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port, local_addr=self.source(i)), 10)
            except (OSError, asyncio.TimeoutError):
                self.failed_opens += 1
                if first:
                    first = False
                    ready.release()
                await asyncio.sleep(1)
                continue
            self.open += 1
            if first:
                first = False
                ready.release()
            else:
                self.reopened += 1
            try:
                await self.hold(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass
            finally:
                self.open -= 1
                writer.close()
            self.closed_by_server += 1
            if not self.reopen:
                return
            await asyncio.sleep(0.5)

    async def hold(self, reader, writer):
        """Holds one connection as its kind does, until the server closes it."""
        closed = asyncio.ensure_future(self.closed(reader))
        try:
            if self.kind == "idle":
                await closed
            elif self.kind == "slowloris":
                writer.write(b"GET / HTTP/1.1\r\nHost: flood\r\nX-Slow: ")
                while not closed.done():
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.wait([closed], timeout=1)
            elif self.kind == "body":
                writer.write(b"POST /echo HTTP/1.1\r\nHost: flood\r\nContent-Length: 1048576\r\n\r\n")
                while not closed.done():
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.wait([closed], timeout=1)
            elif self.kind == "noread":
                # The echo app answers with 256 KiB, more than the sockets
                # between hold, and nobody reads it.
                body = b"x" * 262144
                writer.write(b"POST /echo HTTP/1.1\r\nHost: flood\r\nContent-Length: 262144\r\n\r\n" + body)
                await closed
            else:
                raise SystemExit(f"unknown kind {self.kind}")
        finally:
            closed.cancel()

    async def closed(self, reader):
        if self.kind == "noread":
            # Never reads: only a reset or the end of the stream says closed.
            while True:
                await asyncio.sleep(3600)
        while True:
            data = await reader.read(65536)
            if not data:
                return


async def probe(port):
    """One ordinary request: (seconds, None) or (seconds, why it failed)."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(PROBE)
        data = await asyncio.wait_for(reader.read(65536 * 4), 5)
        rest = data
        while rest:
            rest = await asyncio.wait_for(reader.read(65536), 5)
            data += rest
        writer.close()
    except ConnectionRefusedError:
        return time.perf_counter() - start, "refused"
    except (OSError, asyncio.TimeoutError) as e:
        return time.perf_counter() - start, type(e).__name__
    took = time.perf_counter() - start
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"hello"):
        return took, "bad answer " + repr(data[:40])
    return took, None


async def run(args, port, pid):
    flood = Flood(port, args.kind, args.count, args.same_address, args.reopen)
    ready = asyncio.Semaphore(0)
    tasks = []
    opening = asyncio.Semaphore(args.ramp)

    async def start(i):
        async with opening:
            tasks.append(asyncio.ensure_future(flood.one(i, ready)))
            await ready.acquire()

    began = time.time()
    samples = []

    async def sample():
        while True:
            samples.append((round(time.time() - began, 1), rss_kib(pid), open_fds(pid), flood.open))
            await asyncio.sleep(1)

    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*(start(i) for i in range(args.count)))
    opened_after = time.time() - began
    await asyncio.sleep(args.settle)
    results = []
    deadline = began + args.seconds
    for _ in range(args.probes):
        if time.time() > deadline:
            break
        results.append(await probe(port))
        await asyncio.sleep(args.interval)
    flood.stop = True
    sampler.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return flood, results, samples, opened_after


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="maitred")
    ap.add_argument("--kind", default="idle", choices=["idle", "slowloris", "body", "noread"])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between probes")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between the flood and the probes")
    ap.add_argument("--ramp", type=int, default=200, help="connections opened at once")
    ap.add_argument("--seconds", type=float, default=120.0, help="the whole run at most")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--same-address", action="store_true")
    ap.add_argument("--reopen", action="store_true",
                    help="open a flood connection again when the server closes it (half a second later)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--extra", default="", help="more arguments for the server (maitred only), e.g. '--connection-limit 1000'")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.count + 200 > hard:
        raise SystemExit(f"the open-file limit ({hard}) is too low for {args.count} connections")
    port = compare.free_port()
    # Every server with its defaults (connection limits, timeouts), but for
    # the address, the threads (4, maitred's and Waitress's default) and
    # the bench's virtualenv.
    cmd = compare.command(args.server, "echo", port, args.threads)
    if args.extra:
        cmd = cmd[:-1] + args.extra.split() + cmd[-1:]
    log = open(os.path.join(compare.ROOT, "target", f"flood-{args.server}.log"), "w")
    proc = subprocess.Popen(cmd, cwd=compare.HERE, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=compare.HERE))
    try:
        if not compare.wait_ready(port, proc):
            raise SystemExit(f"{args.server} did not start; see {log.name}")
        baseline = rss_kib(proc.pid), open_fds(proc.pid)
        flood, results, samples, opened_after = asyncio.run(run(args, port, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    times = [t for t, why in results if why is None]
    failures = [why for _, why in results if why is not None]
    peak_rss = max((s[1] for s in samples), default=0)
    figures = {
        "server": args.server, "kind": args.kind, "count": args.count,
        "flood_open_at_end": samples[-1][3] if samples else 0,
        "flood_closed_by_server": flood.closed_by_server,
        "flood_reopened": flood.reopened, "flood_failed_opens": flood.failed_opens,
        "seconds_to_open": round(opened_after, 1),
        "probes": len(results), "failed": len(failures),
        "failures": sorted(set(failures)),
        "p50_ms": round(1000 * statistics.median(times), 2) if times else None,
        "p99_ms": round(1000 * percentile(times, 99), 2) if times else None,
        "max_ms": round(1000 * max(times), 2) if times else None,
        "rss_mib_before": round(baseline[0] / 1024, 1),
        "rss_mib_peak": round(peak_rss / 1024, 1),
        "fds_before": baseline[1],
        "fds_peak": max((s[2] for s in samples), default=0),
    }
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"figures": figures, "samples": samples}, f)


if __name__ == "__main__":
    sys.exit(main())
