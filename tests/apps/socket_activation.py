"""Starts a program the way systemd socket activation does.

    python socket_activation.py tcp|unix:PATH PROGRAM [ARGS...]

Binds the listening socket itself (127.0.0.1 on a free port, or the Unix
socket PATH), puts it on file descriptor 3, sets LISTEN_FDS=1 and
LISTEN_PID to its own pid, then execs PROGRAM, which keeps that pid.
Standard library only.
"""
import os
import socket
import sys

FIRST_FD = 3  # SD_LISTEN_FDS_START


def main():
    kind, program = sys.argv[1], sys.argv[2:]
    if kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    elif kind.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(kind[len("unix:"):])
    else:
        sys.exit("usage: socket_activation.py tcp|unix:PATH PROGRAM [ARGS...]")
    sock.listen(64)
    if sock.fileno() != FIRST_FD:
        os.dup2(sock.fileno(), FIRST_FD)
        sock.close()
    os.set_inheritable(FIRST_FD, True)
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    env["LISTEN_FDNAMES"] = "http"
    os.execve(program[0], program, env)


if __name__ == "__main__":
    main()
