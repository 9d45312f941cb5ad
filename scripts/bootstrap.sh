#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks: system packages and a venv in .venv.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in iptables ipset nftables libnetfilter-queue-dev iproute2 conntrack gcc python3-dev python3-venv \
           chromium postfix; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test,live]'
