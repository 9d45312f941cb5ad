#!/usr/bin/env bash
# build-deb.sh — build the Debian package dist/inspector_<version>_amd64.deb.
#
#   scripts/build-deb.sh [--out DIR]
#
# What dh-virtualenv does, without a debian/ tree: a virtualenv at /opt/venvs/inspector made with
# the system python3 (so the package depends on that python3.X), the project and its "live" and "notify" extras
# installed into it from wheels (pip's index settings and cache apply), the paths rewritten from the
# build directory to /opt/venvs/inspector, then packed with dpkg-deb.  The package installs:
#   /opt/venvs/inspector/               the venv (bytecode compiled by postinst, removed by prerm)
#   /usr/bin/inspector                  -> /opt/venvs/inspector/bin/inspector
#   /usr/sbin/inspector-setup-nfqueue   the firewall setup script (scripts/setup-nfqueue.sh)
#   /lib/systemd/system/inspector.service
#   /etc/inspector/inspector.toml, /etc/inspector/rules/*   conffiles (dpkg keeps the admin's edits)
# The maintainer scripts never touch the firewall and never enable or start the unit: nothing
# changes until the admin runs inspector-setup-nfqueue or "systemctl enable --now inspector".
# Needs: python3-venv, dpkg-deb (in dpkg); the compiler and libnetfilter-queue-dev for NetfilterQueue.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=dist
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=${2:?}; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
PY=/usr/bin/python3
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb not found (it comes with dpkg)" >&2; exit 1; }
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' inspector/__init__.py)
[ -n "$VERSION" ] || { echo "build-deb: no __version__ in inspector/__init__.py" >&2; exit 1; }
PYVER=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
ARCH=$(dpkg --print-architecture)
VENV=/opt/venvs/inspector

STAGE=$(mktemp -d /tmp/inspector-deb.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
BUILD_VENV=$ROOT$VENV
mkdir -p "$ROOT/DEBIAN" "$(dirname "$BUILD_VENV")"

# the venv, built in the staging tree, then moved to its final path by rewriting the build path
$PY -m venv "$BUILD_VENV"
"$BUILD_VENV/bin/pip" install -q --no-compile --no-warn-script-location ".[live,notify]"
"$BUILD_VENV/bin/pip" uninstall -q -y pip
find "$BUILD_VENV" -name __pycache__ -prune -exec rm -rf {} +
find "$BUILD_VENV" -name direct_url.json -delete   # names the source directory
# shebangs, activate scripts, pyvenv.cfg: text files naming the build path
{ grep -rlIF "$BUILD_VENV" "$BUILD_VENV" || true; } | while read -r f; do sed -i "s|$BUILD_VENV|$VENV|g" "$f"; done
! grep -rlF "$BUILD_VENV" "$BUILD_VENV" || { echo "build-deb: build path left in the venv" >&2; exit 1; }

install -D -m 0755 scripts/setup-nfqueue.sh "$ROOT/usr/sbin/inspector-setup-nfqueue"
mkdir -p "$ROOT/usr/bin"
ln -s "$VENV/bin/inspector" "$ROOT/usr/bin/inspector"
install -D -m 0644 README.md "$ROOT/usr/share/doc/inspector/README.md"
sed -e "s|/opt/inspector/scripts/setup-nfqueue.sh|/usr/sbin/inspector-setup-nfqueue|g" \
    -e "s|/opt/inspector/.venv/bin/inspector|/usr/bin/inspector|g" \
    -e "s|file:/opt/inspector/README.md|file:/usr/share/doc/inspector/README.md|g" \
    -e "s|^# systemd unit for inspector.*|# systemd unit for inspector (Debian package).|" \
    -e "/^# copy this file/d" -e "s|^# then: systemctl daemon-reload \&\& |# Enable it with: |" \
    -e "/^# Install the project in/d" \
    packaging/inspector.service > "$STAGE/inspector.service"
install -D -m 0644 "$STAGE/inspector.service" "$ROOT/lib/systemd/system/inspector.service"
sed -e "s|/opt/inspector/rules/|/etc/inspector/rules/|g" packaging/inspector.toml > "$STAGE/inspector.toml"
install -D -m 0644 "$STAGE/inspector.toml" "$ROOT/etc/inspector/inspector.toml"
for f in rules/*; do install -D -m 0644 "$f" "$ROOT/etc/inspector/rules/$(basename "$f")"; done
(cd "$ROOT" && find etc -type f | sort | sed 's|^|/|') > "$ROOT/DEBIAN/conffiles"

SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<EOF
Package: inspector
Version: $VERSION
Architecture: $ARCH
Maintainer: inspector developers <root@localhost>
Installed-Size: $SIZE
Depends: python$PYVER, libnetfilter-queue1, iptables, ipset
Recommends: nftables, conntrack
Section: net
Priority: optional
Description: inline packet inspector for mail and SSH servers
 Reads SMTP envelopes and SSH sessions on the reassembled client stream through
 NFQUEUE, resets and bans offending sources with ipset, fails open.  Installing
 the package changes no firewall rule: run inspector-setup-nfqueue install, or
 enable the inspector service.
EOF
cat > "$ROOT/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
    $VENV/bin/python -m compileall -q $VENV/lib >/dev/null 2>&1 || true
    mkdir -p /var/lib/inspector /var/log/inspector
    # a new unit file for systemd to see; never enabled or started here
    if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
fi
exit 0
EOF
cat > "$ROOT/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
find $VENV -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
EOF
cat > "$ROOT/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = purge ]; then
    rm -rf /var/lib/inspector /var/log/inspector
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
DEB=$OUT/inspector_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
