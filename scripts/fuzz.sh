#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60), one after
# another, one process at a time (libFuzzer in-process, one core).
#
#   ./scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS="framing values"  only these targets (default: all)
#   FUZZ_SANITIZER=none            no AddressSanitizer (about twice as fast;
#                                  default: address)
#   FUZZ_KEEP_GOING=1              keep fuzzing after a crash (libFuzzer's
#                                  -fork=1 -ignore_crashes=1) instead of
#                                  stopping that target at its first one
#   FUZZ_CORPUS_BUDGET=50          most fuzzer-found inputs saved per target
#   MAITRED_FUZZ_KNOWN=a,b         step over these open bugs (names in
#                                  fuzz/regressions/OPEN) to look past them
#
# Needs only what scripts/test.sh needs (stable Rust, CPython 3.11 with its
# shared library) and installs the rest: cargo-fuzz, pinned, into
# target/tools/bin (unless a cargo-fuzz is already on PATH). libFuzzer's
# instrumentation (-Zsanitizer, sanitizer-coverage) needs nightly features;
# stable rustc accepts them with RUSTC_BOOTSTRAP=1, which is set here and
# only for these builds.
#
# Everything is in memory: no target opens a socket. New inputs go to
# fuzz/work/<target>/ (not committed, kept for the next run); the saved
# corpus fuzz/corpus/<target>/ (replayed by tests/fuzz_replay.rs in
# ./scripts/test.sh) is then chosen afresh: its hand-written seeds plus at
# most FUZZ_CORPUS_BUDGET inputs found, those that reach the most edges the
# seeds do not. A crash is written to fuzz/artifacts/<target>/: minimise
# it (`cargo fuzz tmin <target> <file>` in fuzz/), save it under
# fuzz/regressions/<target>/, and it is replayed as a test from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
case $seconds in
    '' | *[!0-9]*)
        echo "usage: $0 [SECONDS]" >&2
        exit 2
        ;;
esac
all_targets="proxy_forwarded proxy_protocol framing host_and_te values request_path"
read -r -a targets <<<"${FUZZ_TARGETS:-$all_targets}"
sanitizer=${FUZZ_SANITIZER:-address}
budget=${FUZZ_CORPUS_BUDGET:-50}

python=${PYO3_PYTHON:-python3}
if ! "$python" -c 'import sys, sysconfig; sys.exit(0 if sys.version_info[:2] == (3, 11) and sysconfig.get_config_var("Py_ENABLE_SHARED") == 1 else 1)'; then
    echo "the fuzz targets embed CPython 3.11 with its shared library, as maitred does;" >&2
    echo "put such a python3 first on PATH, or set PYO3_PYTHON to it." >&2
    exit 1
fi

tools=$PWD/target/tools
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ ! -x "$tools/bin/cargo-fuzz" ]; then
        echo "==> installing cargo-fuzz $cargo_fuzz_version into target/tools/bin"
        cargo install --quiet --locked --root "$tools" "cargo-fuzz@$cargo_fuzz_version"
    fi
    export PATH="$tools/bin:$PATH"
fi

export RUSTC_BOOTSTRAP=1
# The embedded Python must not pick up the caller's virtualenv.
unset VIRTUAL_ENV
export PYTHONDONTWRITEBYTECODE=1
# CPython keeps its objects until exit by design: no leak report at exit.
export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

# Longest input, and dictionary, per target.
max_len() {
    case $1 in
        proxy_protocol | proxy_forwarded | framing) echo 4096 ;;
        host_and_te) echo 1024 ;;
        values) echo 1024 ;;
        request_path) echo 16384 ;;
        *) echo 4096 ;;
    esac
}
dict() {
    case $1 in
        proxy_forwarded | proxy_protocol) echo "$PWD/fuzz/dicts/proxy.dict" ;;
        values) echo "$PWD/fuzz/dicts/values.dict" ;;
        *) echo "$PWD/fuzz/dicts/http.dict" ;;
    esac
}

echo "==> building ${targets[*]} (sanitizer: $sanitizer)"
for target in "${targets[@]}"; do
    cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer" "$target"
done

logs=$PWD/target/fuzz-logs
mkdir -p "$logs"
summary=()
failed=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    work=fuzz/work/$target
    mkdir -p "$corpus" "$work" "fuzz/artifacts/$target"
    log=$logs/$target.log
    flags=(
        "-max_total_time=$seconds"
        "-max_len=$(max_len "$target")"
        "-dict=$(dict "$target")"
        -timeout=30
        -rss_limit_mb=4096
        -detect_leaks=0
        -print_final_stats=1
    )
    if [ -n "${FUZZ_KEEP_GOING:-}" ]; then
        flags+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    before=$(find "$corpus" -type f | wc -l)
    echo "==> fuzzing $target for ${seconds}s (log: target/fuzz-logs/$target.log)"
    status=0
    # New inputs are written to the first directory (scratch); the saved
    # corpus is read as seeds.
    cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$target" "$work" "$corpus" \
        -- "${flags[@]}" >"$log" 2>&1 || status=$?
    # The saved corpus stays small: its hand-written seeds (named files)
    # plus at most $budget of everything found so far (named by their
    # SHA-1), chosen for the edges they reach beyond the seeds (see
    # fuzz/pick_corpus.py). Without MAITRED_FUZZ_KNOWN: an input that
    # reproduces an open bug crashes the merge, which skips it (it belongs
    # in fuzz/regressions/), so the saved corpus passes the strict replay.
    echo "==> choosing the saved corpus of $target"
    seeds=$(mktemp -d)
    control=$logs/$target.merge.control
    rm -f "$control"
    find "$corpus" -maxdepth 1 -type f -regextype posix-extended ! -regex '.*/[0-9a-f]{40}' -exec cp {} "$seeds/" \;
    if env -u MAITRED_FUZZ_KNOWN cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$target" \
        "$seeds" "$corpus" "$work" -- -merge=1 "-merge_control_file=$control" \
        "-max_len=$(max_len "$target")" -timeout=30 -rss_limit_mb=4096 \
        >"$logs/$target.merge.log" 2>&1; then
        "$python" fuzz/pick_corpus.py "$control" "$corpus" "$budget"
    else
        echo "    merge failed: see target/fuzz-logs/$target.merge.log"
    fi
    rm -rf "$seeds"
    after=$(find "$corpus" -type f | wc -l)

    # libFuzzer's own numbers: executions from the final stats (or, in fork
    # mode, the last status line), coverage from the last status line.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+:?[[:space:]].*cov: ' "$log" | tail -n 1 || true)
    [ -n "$execs" ] || execs=$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(sed -E -n 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    [ -n "$rate" ] || rate=$(sed -E -n 's/.*exec\/s:? ([0-9]+).*/\1/p' <<<"$last")
    crashes=$(grep -E -o 'Test unit written to [^ ]+' "$log" | sed 's/Test unit written to //' || true)
    line="$target: ${execs:-?} executions (${rate:-?}/s), cov ${cov:-?} edges, ft ${ft:-?} features, corpus $before -> $after files"
    if [ -n "$crashes" ]; then
        line="$line, CRASH: $(tr '\n' ' ' <<<"$crashes")"
        failed=1
    elif [ "$status" -ne 0 ]; then
        line="$line, FAILED (exit $status): see target/fuzz-logs/$target.log"
        failed=1
    fi
    summary+=("$line")
    echo "    $line"
done

echo
echo "==> summary (${seconds}s per target, sanitizer: $sanitizer)"
printf '    %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "A crash reproduces with \`cargo fuzz run --fuzz-dir fuzz <target> <file>\`;" \
        "minimise it with \`cargo fuzz tmin\`, then save it under fuzz/regressions/<target>/."
    exit 1
fi
