#!/usr/bin/env bash
# Tests maitred installed from its wheel on every CPython 3.9-3.13 found
# (pyenv's versions here), or on the versions named:
#
#   scripts/test-pythons.sh            every version found
#   scripts/test-pythons.sh 3.13       only 3.13
#
# For each version: build the wheel (scripts/wheels.sh), install it into a
# fresh virtualenv with the Flask test app's requirements, and run the
# integration tests that depend on the Python against that venv's `maitred`
# command (MAITRED_TEST_VENV): start-up and imports, PEP 3333 and the
# environ, Flask, workers, HTTP and the Waitress-compatible command line.
# Debian's python3.11 (no libpython3.11.so) is tried as well when present.
# ./scripts/test.sh stays the full suite on the embedded 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.9 3.10 3.11 3.12 3.13)
tests=(--test startup --test environ --test flask --test workers --test http --test config)

# shellcheck source=scripts/pythons.sh
. scripts/pythons.sh

# The test binaries themselves (built once, against the embedded 3.11).
cargo build --tests --quiet

run_on() { # python, label
    local python=$1 label=$2 v wheel venv
    v=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    wheel=$(wheel_for "$v")
    [ -n "$wheel" ] || { echo "no wheel for Python $v in target/wheels: run scripts/wheels.sh $v" >&2; return 1; }
    venv=target/test-pythons/$label
    echo "==> $label: $("$python" -VV | head -1), $(basename "$wheel")"
    rm -rf "$venv"
    "$python" -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel" -r tests/requirements-flask.txt || return 1
    # The same check deploy/Dockerfile makes at build time.
    sh deploy/check-install.sh "$venv" "$v" || return 1
    export MAITRED_TEST_VENV=$PWD/$venv
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --no-fail-fast "${tests[@]}" &&
            cargo nextest run --no-fail-fast --test installed --run-ignored only
    else
        cargo test --no-fail-fast "${tests[@]}" &&
            cargo test --no-fail-fast --test installed -- --ignored
    fi
    local status=$?
    unset MAITRED_TEST_VENV
    return $status
}

failed=()
for v in "${versions[@]}"; do
    python=$(find_python "$v")
    if [ -z "$python" ]; then
        echo "==> no CPython $v under ~/.pyenv or on PATH; skipped"
        continue
    fi
    ./scripts/wheels.sh "$v"
    run_on "$python" "cpython-$v" || failed+=("$v")
    # Debian's own 3.11 has no libpython3.11.so: the extension module runs
    # on it all the same, since the interpreter is in its executable.
    if [ "$v" = 3.11 ] && [ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c 'import venv, ensurepip' 2>/dev/null; then
        run_on /usr/bin/python3.11 debian-3.11 || failed+=("debian-3.11")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "==> failed on: ${failed[*]}" >&2
    exit 1
fi
echo "==> every version passed"
