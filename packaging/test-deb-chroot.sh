#!/usr/bin/env bash
# Installs the Debian package in a clean Debian 12 chroot and checks it there: minutes (a
# debootstrap), so it is not part of the default test suite; run it after build-deb.sh.
#
#   ./packaging/test-deb-chroot.sh [dist/ringmail_<version>_amd64.deb]
#
# Makes a minbase bookworm chroot with debootstrap (from Debian's archive, or $MIRROR), installs
# the .deb with apt (which brings its dependencies), and checks: the four binaries, the
# conffile, `ringmaild --check-config /etc/ringmail/ringmail.toml`, the ringmail user, the
# spool's mode 0700 and owner, the unit and logrotate files, the man pages; then
# `systemd-analyze verify` of the installed unit with systemd installed in the chroot. The
# chroot is removed at the end (KEEP=1 keeps it). BASE=DIR starts from a copy of a clean
# debootstrap made earlier instead of running one. Needs root.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEB=${1:-$(ls -t "$ROOT"/dist/ringmail_*_"$(dpkg --print-architecture)".deb 2>/dev/null | head -n1)}
[ -f "$DEB" ] || { echo "test-deb-chroot: no .deb (run packaging/build-deb.sh first)" >&2; exit 1; }
MIRROR=${MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" -eq 0 ] || { echo "test-deb-chroot: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap

CHROOT=$(mktemp -d /tmp/ringmail-chroot.XXXXXX)
cleanup() {
  for m in proc dev/pts dev sys; do
    umount "$CHROOT/$m" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then
    echo "chroot kept in $CHROOT" >&2
  else
    rm -rf "$CHROOT"
  fi
}
trap cleanup EXIT

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; FAILED=$((FAILED + 1)); }
FAILED=0
PASSED=0
ok() { printf 'ok: %s\n' "$*" >&2; PASSED=$((PASSED + 1)); }
in_chroot() { chroot "$CHROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

if [ -n "${BASE:-}" ] && [ -x "$BASE/bin/sh" ]; then
  # A clean debootstrap made earlier (BASE=dir): copied, never modified.
  log "copying the clean bookworm base $BASE into $CHROOT"
  cp -a "$BASE/." "$CHROOT/"
else
  log "debootstrap bookworm (minbase) into $CHROOT"
  debootstrap --variant=minbase bookworm "$CHROOT" "$MIRROR" >"$CHROOT.debootstrap.log" 2>&1 || {
    tail -20 "$CHROOT.debootstrap.log" >&2
    exit 1
  }
  rm -f "$CHROOT.debootstrap.log"
fi
mount -t proc proc "$CHROOT/proc"
mount --bind /dev "$CHROOT/dev"
mount --bind /dev/pts "$CHROOT/dev/pts"
mount -t sysfs sys "$CHROOT/sys"
# No daemon may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$CHROOT/usr/sbin/policy-rc.d"
chmod 755 "$CHROOT/usr/sbin/policy-rc.d"

cp "$DEB" "$CHROOT/tmp/"
log "apt-get install ./$(basename "$DEB")"
in_chroot apt-get update -qq
in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "/tmp/$(basename "$DEB")"

for b in /usr/sbin/ringmaild /usr/bin/ringmail-blast /usr/bin/ringmail-sink /usr/bin/ringmailctl; do
  if [ -x "$CHROOT$b" ]; then ok "$b installed"; else fail "$b missing"; fi
done
if in_chroot ringmaild --check-config /etc/ringmail/ringmail.toml; then
  ok "ringmaild --check-config /etc/ringmail/ringmail.toml"
else
  fail "ringmaild --check-config /etc/ringmail/ringmail.toml"
fi
if in_chroot dpkg-query -W -f='${Conffiles}\n' ringmail | grep -q /etc/ringmail/ringmail.toml; then
  ok "/etc/ringmail/ringmail.toml is a conffile"
else
  fail "/etc/ringmail/ringmail.toml is not a conffile"
fi
if in_chroot getent passwd ringmail >/dev/null; then ok "user ringmail"; else fail "no user ringmail"; fi
spool=$(in_chroot stat -c '%a %U' /var/spool/ringmail 2>/dev/null || true)
if [ "$spool" = "700 ringmail" ]; then ok "/var/spool/ringmail 0700 ringmail"; else fail "/var/spool/ringmail: '$spool'"; fi
for f in /lib/systemd/system/ringmail.service /etc/logrotate.d/ringmail \
  /usr/share/man/man8/ringmaild.8.gz /usr/share/man/man1/ringmail-blast.1.gz \
  /usr/share/man/man1/ringmail-sink.1.gz /usr/share/man/man1/ringmailctl.1.gz \
  /usr/share/ringmail/bounces.toml; do
  if [ -e "$CHROOT$f" ]; then ok "$f"; else fail "$f missing"; fi
done
if in_chroot ringmaild --version | grep -q '^ringmaild '; then ok "ringmaild --version"; else fail "ringmaild --version"; fi

log "systemd-analyze verify (systemd installed in the chroot)"
in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
if out=$(in_chroot systemd-analyze verify --man=no /lib/systemd/system/ringmail.service 2>&1) &&
  [ -z "$out" ]; then
  ok "systemd-analyze verify ringmail.service"
else
  fail "systemd-analyze verify: $out"
fi
score=$(in_chroot systemd-analyze security --offline=yes /lib/systemd/system/ringmail.service 2>/dev/null |
  sed -n 's/.*Overall exposure level for ringmail.service: \([0-9.]*\).*/\1/p')
if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
  ok "systemd-analyze security: $score"
else
  fail "systemd-analyze security: '$score'"
fi

log "purge"
if in_chroot env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq ringmail >/dev/null &&
  [ ! -e "$CHROOT/var/spool/ringmail" ]; then
  ok "purge removes the package and its spool"
else
  fail "purge"
fi

echo "test-deb-chroot: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
