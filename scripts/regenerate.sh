#!/usr/bin/env bash
# Regenerates the files derived from the settings registry:
# config/maitred.toml and the reference table in docs/configuration.md.
# The test suite fails when they are out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
bin=target/debug/maitred
"$bin" config defaults > config/maitred.toml
python3 - "$bin" <<'PY'
import subprocess, sys
table = subprocess.run([sys.argv[1], "config", "docs"], capture_output=True, text=True, check=True).stdout
path = "docs/configuration.md"
text = open(path).read()
begin = "<!-- BEGIN GENERATED: maitred config docs -->\n"
end = "<!-- END GENERATED -->"
a = text.index(begin) + len(begin)
b = text.index(end)
open(path, "w").write(text[:a] + table + text[b:])
PY
echo "regenerated config/maitred.toml and docs/configuration.md"
