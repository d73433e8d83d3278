# Sourced by scripts/wheels.sh and scripts/test-pythons.sh: where the
# CPythons and the wheels built for them are.

# The CPython for major.minor: pyenv's newest patch release, else one on PATH.
find_python() {
    local v=$1 found="" dir
    for dir in "$HOME"/.pyenv/versions/"$v".*; do
        [ -x "$dir/bin/python$v" ] && found="$dir/bin/python$v"
    done
    [ -n "$found" ] || found=$(command -v "python$v" || true)
    echo "$found"
}

# The newest wheel in target/wheels for major.minor (empty if none).
wheel_for() {
    local tag="cp${1/./}"
    ls -t target/wheels/maitred-*-"$tag"-"$tag"-*.whl 2>/dev/null | head -1
}
