#!/usr/bin/env bash
# Runs the side-by-side benchmark (see bench/compare.py for what it
# measures). Sets up what it needs on first use: wrk from Debian, and the
# peer servers at pinned versions in target/bench-venv. Loopback only.
#
#   bench/run.sh [compare.py options]     e.g. --scenarios hello --rounds 2
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${BENCH_VENV:-$PWD/target/bench-venv}
if ! command -v wrk >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi
if [ ! -x "$venv/bin/granian" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q granian==2.8.7 waitress==3.0.2 gunicorn==27.0.1 \
        fastwsgi==0.0.9 bjoern-binary==3.2.2
fi
cargo build --release --quiet
export BENCH_VENV="$venv"
exec python3 bench/compare.py "$@"
