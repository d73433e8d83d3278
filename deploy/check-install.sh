#!/bin/sh
# Checks a maitred installed from its wheel into a virtualenv, for the
# Python version expected: the extension module imports, is not linked to
# any libpython (so it runs on a Python built without one), and the
# command names that Python. deploy/Dockerfile runs it at build time for
# its PYTHON_VERSION; scripts/test-pythons.sh runs it for every CPython it
# tests (3.9 to 3.13).
#
#   deploy/check-install.sh VENV 3.13
set -eu
venv=$1
want=$2
module=$(echo "$venv"/lib/python"$want"/site-packages/maitred/_maitred*.so)
[ -f "$module" ] || { echo "no maitred extension module for Python $want in $venv" >&2; exit 1; }
# grep without -q reads all of ldd's output (no SIGPIPE for ldd).
if ldd "$module" | grep libpython; then
    echo "$module is linked to a libpython; it must take its symbols from the running Python" >&2
    exit 1
fi
"$venv/bin/python" -c 'import maitred._maitred'
version=$("$venv/bin/maitred" --version)
case "$version" in
    *"with Python $want."*"(extension module)") echo "$version" ;;
    *) echo "expected maitred on Python $want, got: $version" >&2; exit 1 ;;
esac
