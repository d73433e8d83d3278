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

# Debian packages some tests drive: real nginx and HAProxy for the proxy
# tests, `ss` (iproute2) to read a listener's backlog.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
missing=""
have nginx || missing="$missing nginx-light"
have haproxy || missing="$missing haproxy"
have ss || missing="$missing iproute2"
if [ -n "$missing" ]; then
    echo "==> installing$missing (used by the tests)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

# Offline checkers the tests drive (promtool, hadolint, kubernetes-validate,
# a kustomize renderer), installed under target/tools.
./scripts/tools.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path python/Cargo.toml -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi

# The pip-installed maitred on another Python than the embedded 3.11: the
# wheel for CPython 3.13, installed into a fresh venv, under the tests that
# depend on the Python (scripts/test-pythons.sh with no argument does
# every version 3.9-3.13).
echo "==> the wheel on CPython 3.13"
./scripts/test-pythons.sh 3.13
