#!/usr/bin/env bash
# Runs maitred's whole test suite from a fresh checkout.
#
# Needs only what a machine of this kind has: the Rust toolchain (with
# cargo-nextest if present; plain `cargo test` otherwise) and CPython 3.11
# built with its shared library (pyenv's, or Debian's python3.11). The tests
# build the real binary, start it on 127.0.0.1, and create the virtualenvs
# they need (the Flask one installs pinned packages from PyPI into
# target/test-venvs/, once).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYO3_PYTHON:-python3}
if ! "$python" - <<'PY'
import sys, sysconfig
ok = sys.version_info[:2] == (3, 11) and sysconfig.get_config_var("Py_ENABLE_SHARED") == 1
if not ok:
    print(f"{sys.executable} is Python {sys.version.split()[0]}, shared library: "
          f"{bool(sysconfig.get_config_var('Py_ENABLE_SHARED'))}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
then
    echo "maitred embeds CPython 3.11 with its shared library (libpython3.11.so)." >&2
    echo "Put such a python3 first on PATH, or set PYO3_PYTHON to it." >&2
    exit 1
fi

# The proxy tests run real nginx and HAProxy (Debian's packages).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] || \
   ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    echo "==> installing nginx and haproxy (for the proxy tests)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light haproxy >/dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi
