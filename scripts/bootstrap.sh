#!/usr/bin/env bash
# Install what a fresh Debian 12 machine lacks: system packages and a venv in .venv.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in iptables ipset nftables libnetfilter-queue-dev iproute2 conntrack gcc python3-dev python3-venv \
           chromium postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libidn12 openssl libsystemd-dev pkg-config \
           systemd-journal-remote openssh-server redis-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    # openssh-server, postfix and redis-server are here for the tests, which start their own: start
    # no system daemon
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > "$guard"; chmod 755 "$guard"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" || { [ -z "$guard" ] || rm -f "$guard"; exit 1; }
    [ -z "$guard" ] || rm -f "$guard"
    # the tests start their own sshd, Postfix and redis-server: leave no system daemon enabled
    for unit in ssh.service ssh.socket postfix.service redis-server.service; do
        systemctl disable "$unit" >/dev/null 2>&1 || true
    done
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test,live,journal]'
