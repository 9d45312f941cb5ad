#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks: system packages and a venv in .venv.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in iptables ipset nftables libnetfilter-queue-dev iproute2 conntrack gcc python3-dev python3-venv \
           chromium libsystemd-dev pkg-config systemd-journal-remote openssh-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    # openssh-server is here for the tests, which start their own sshd: start no system sshd, leave none enabled
    guard=""
    if [[ " ${need[*]} " == *" openssh-server "* && ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > "$guard"; chmod 755 "$guard"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" || { [ -z "$guard" ] || rm -f "$guard"; exit 1; }
    [ -z "$guard" ] || rm -f "$guard"
    if [[ " ${need[*]} " == *" openssh-server "* ]]; then
        systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
    fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test,live,journal]'
