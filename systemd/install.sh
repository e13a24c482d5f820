#!/usr/bin/env bash
# Installs kbridge as a systemd service (run as root), or removes it.
#
#   systemd/install.sh [--no-build] [--enable]   install (idempotent)
#   systemd/install.sh --uninstall               remove what install put there
#                                                (the config and data stay)
#
# What it installs (under DESTDIR, default /; PREFIX default /usr/local;
# KBRIDGE_BIN picks another binary than target/release/kbridge):
#   $PREFIX/bin/kbridge                    release build (cargo build --release)
#   /etc/kbridge/config.ini                the shipped config, only when absent:
#                                          an edited config is never overwritten
#                                          (the new one goes to config.ini.new)
#   /etc/systemd/system/kbridge@.service   one unit per role: kbridge@ingest, …
#   /etc/systemd/system/kbridge.target     starts every configured role
#   /etc/logrotate.d/kbridge               rotation of /var/log/kbridge/*.log
#   $PREFIX/share/doc/kbridge/             README and docs
# and the system user and group `kbridge`. With --enable (and no DESTDIR),
# the roles configured in /etc/kbridge/config.ini are enabled in
# kbridge.target and systemd is reloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BUILD=1 ENABLE=0 UNINSTALL=0
for a in "$@"; do
  case $a in
    --no-build) BUILD=0 ;;
    --enable) ENABLE=1 ;;
    --uninstall) UNINSTALL=1 ;;
    *) sed -n '2,21p' "$0" >&2; exit 2 ;;
  esac
done

BIN=$DESTDIR$PREFIX/bin/kbridge
UNIT=$DESTDIR/etc/systemd/system/kbridge@.service
TARGET=$DESTDIR/etc/systemd/system/kbridge.target
ROTATE=$DESTDIR/etc/logrotate.d/kbridge
DOC=$DESTDIR$PREFIX/share/doc/kbridge
CONF=$DESTDIR/etc/kbridge/config.ini

say() { echo "install: $*"; }
live() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

if [ $UNINSTALL = 1 ]; then
  if live; then
    systemctl disable --now 'kbridge@*.service' kbridge.target 2>/dev/null || true
  fi
  rm -f "$BIN" "$UNIT" "$TARGET" "$ROTATE"
  rm -rf "$DOC"
  rmdir "$DESTDIR/etc/systemd/system/kbridge.target.wants" 2>/dev/null || true
  live && systemctl daemon-reload
  say "removed the binary, the units, the logrotate file and the docs;"
  say "kept $CONF, /var/lib/kbridge and /var/log/kbridge (remove them by hand, and the user with userdel kbridge)"
  exit 0
fi

SRC=${KBRIDGE_BIN:-target/release/kbridge}
if [ $BUILD = 1 ] && [ -z "${KBRIDGE_BIN:-}" ]; then
  say "building the release binary"
  scripts/deps
  cargo build --release --quiet --bin kbridge
fi
[ -x "$SRC" ] || { echo "install: no $SRC (build first)" >&2; exit 1; }

# The unit names $PREFIX/bin/kbridge; another PREFIX rewrites it.
unit_text() { sed "s#/usr/local/#$PREFIX/#g" "$1"; }

install -d -m 0755 "$(dirname "$BIN")" "$(dirname "$UNIT")" "$(dirname "$ROTATE")" "$DOC/docs"
install -m 0755 "$SRC" "$BIN"
unit_text systemd/kbridge@.service >"$UNIT.tmp" && mv "$UNIT.tmp" "$UNIT" && chmod 0644 "$UNIT"
unit_text systemd/kbridge.target >"$TARGET.tmp" && mv "$TARGET.tmp" "$TARGET" && chmod 0644 "$TARGET"
install -m 0644 systemd/kbridge.logrotate "$ROTATE"
install -m 0644 README.md "$DOC/README.md"
for d in docs/*.md; do [ -e "$d" ] && install -m 0644 "$d" "$DOC/docs/"; done

install -d -m 0750 "$(dirname "$CONF")"
if [ ! -e "$CONF" ]; then
  # The shipped file, logging to the unit's LogsDirectory.
  sed 's#^file =$#file = /var/log/kbridge/kbridge.log#' config.ini >"$CONF"
  chmod 0640 "$CONF"
  say "installed $CONF (edit [kafka] brokers and the roles' sections)"
elif ! cmp -s <(sed 's#^file =$#file = /var/log/kbridge/kbridge.log#' config.ini) "$CONF"; then
  sed 's#^file =$#file = /var/log/kbridge/kbridge.log#' config.ini >"$CONF.new"
  say "kept your $CONF; the shipped one is $CONF.new"
fi

if [ -z "$DESTDIR" ]; then
  if ! getent group kbridge >/dev/null; then groupadd --system kbridge; fi
  if ! getent passwd kbridge >/dev/null; then
    useradd --system --gid kbridge --home-dir /var/lib/kbridge --no-create-home \
      --shell /usr/sbin/nologin --comment "kbridge service" kbridge
  fi
  chgrp kbridge "$(dirname "$CONF")" "$CONF"
fi

if [ $ENABLE = 1 ] && live; then
  systemctl daemon-reload
  "$BIN" check-config --config "$CONF"
  for role in ingest deliver collect; do
    if grep -q "^\[$role\]" "$CONF"; then
      systemctl enable "kbridge@$role.service"
      say "enabled kbridge@$role"
    fi
  done
  systemctl enable kbridge.target
  say "start everything with: systemctl start kbridge.target"
elif live; then
  systemctl daemon-reload
fi
say "installed kbridge $("$BIN" --version | awk '{print $2}') into ${DESTDIR:-/}"
