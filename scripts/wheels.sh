#!/usr/bin/env bash
# Builds maitred's wheels into target/wheels/: one per CPython found (or
# named), each tagged manylinux2014 (glibc 2.17) and checked with
# `auditwheel show`.
#
#   scripts/wheels.sh                 every CPython 3.9-3.13 under ~/.pyenv
#   scripts/wheels.sh 3.11 3.13       only these versions
#   scripts/wheels.sh --sdist         the source distribution as well
#
# Needs the Rust toolchain; maturin, ziglang (the linker that targets an old
# glibc) and auditwheel come from PyPI into target/wheel-venv. The wheels
# need none of it: `pip install target/wheels/maitred-...whl`.
set -euo pipefail
cd "$(dirname "$0")/.."

sdist=0
versions=()
for arg in "$@"; do
    case "$arg" in
        --sdist) sdist=1 ;;
        3.*) versions+=("$arg") ;;
        *) echo "usage: $0 [--sdist] [3.X ...]" >&2; exit 2 ;;
    esac
done
[ ${#versions[@]} -gt 0 ] || versions=(3.9 3.10 3.11 3.12 3.13)

# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh

tools=target/wheel-venv
if [ ! -x "$tools/bin/maturin" ] || [ ! -x "$tools/bin/auditwheel" ]; then
    echo "==> installing maturin, ziglang and auditwheel into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2
fi

export CARGO_TARGET_DIR=$PWD/target/wheel-build
# pyo3 must not link libpython into an extension module: the Python that
# imports it provides the symbols (that is what lets it run on a Python
# built without libpython3.X.so).
export PYO3_BUILD_EXTENSION_MODULE=1
mkdir -p target/wheels
built=()
for v in "${versions[@]}"; do
    python=$(find_python "$v")
    if [ -z "$python" ]; then
        echo "==> no CPython $v found; skipped"
        continue
    fi
    echo "==> wheel for $("$python" -VV | head -1) ($python)"
    PATH="$PWD/$tools/bin:$PATH" "$tools/bin/maturin" build --release --strip \
        --zig --compatibility manylinux2014 \
        --interpreter "$python" --out target/wheels
    wheel=$(wheel_for "$v")
    [ -n "$wheel" ] || { echo "maturin wrote no wheel for Python $v into target/wheels" >&2; exit 1; }
    "$tools/bin/auditwheel" show "$wheel"
    built+=("$wheel")
done
if [ "$sdist" = 1 ]; then
    echo "==> source distribution"
    "$tools/bin/maturin" sdist --out target/wheels
fi
echo "==> built:"
printf '  %s\n' "${built[@]}"
