"""``python -m maitred``: maitred's command line, run in this Python."""
import os
import signal
import sys


def main():
    from maitred._maitred import run

    # maitred handles these itself (drain on SIGTERM and SIGINT, and so on,
    # as the binary does); Python's own handlers would only be run between
    # bytecodes of a main thread that is blocked in `run`.
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    code = run(["maitred", *sys.argv[1:]])
    # Python's threads are parked waiting for requests: leave without
    # finalizing the interpreter (which would wait on them), as the binary
    # does, once what was written is out.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing to save
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
