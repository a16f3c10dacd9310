#!/usr/bin/env bash
# Builds the Debian package from this tree, on Debian 12:
#
#   ./packaging/build-deb.sh          -> dist/ringmail_<version>_<arch>.deb (and lintian's verdict)
#
# Installs what is missing (dpkg-dev, debhelper, lintian and the Build-Depends of
# packaging/debian/control), copies the tree (the files git knows, committed or not) to a
# scratch directory with packaging/debian as its debian/, runs `dpkg-buildpackage -b -us -uc`
# there and moves the results to dist/ (or $OUT). Exits non-zero if the build fails or
# lintian reports an error. JOBS (default 2) bounds the compile.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/dist}
JOBS=${JOBS:-2}
VERSION=$(sed -n "s/^  version: '\([^']*\)',/\1/p" meson.build | head -n1)
[ -n "$VERSION" ] || { echo "build-deb: no version in meson.build" >&2; exit 1; }
CHANGELOG_VERSION=$(sed -n '1s/^ringmail (\([^)]*\)).*/\1/p' packaging/debian/changelog)
if [ "$CHANGELOG_VERSION" != "$VERSION" ]; then
  echo "build-deb: packaging/debian/changelog says $CHANGELOG_VERSION, meson.build $VERSION" >&2
  exit 1
fi

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

WORK=$(mktemp -d /tmp/ringmail-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/ringmail-$VERSION"
mkdir -p "$SRC"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
    (cd "$ROOT" && tar --null -T - -cf -) | tar -xf - -C "$SRC"
else
  tar -C "$ROOT" --exclude='./build*' --exclude=./dist --exclude=./var -cf - . | tar -xf - -C "$SRC"
fi
rm -rf "$SRC/debian"
cp -a "$SRC/packaging/debian" "$SRC/debian"

need=()
for p in dpkg-dev debhelper fakeroot lintian; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || need+=("$p")
done
if [ "${#need[@]}" -ne 0 ]; then
  log "installing: ${need[*]}"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
if ! (cd "$SRC" && dpkg-checkbuilddeps >/dev/null 2>&1); then
  log "installing the build dependencies"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y "$SRC"
fi

log "dpkg-buildpackage -b -us -uc in $SRC"
(cd "$SRC" && DEB_BUILD_OPTIONS="parallel=$JOBS nocheck" dpkg-buildpackage -b -us -uc)

mkdir -p "$OUT"
ARCH=$(dpkg --print-architecture)
DEB="ringmail_${VERSION}_${ARCH}.deb"
for f in "$WORK"/ringmail_"$VERSION"_*; do
  mv -f "$f" "$OUT/"
done
[ -f "$OUT/$DEB" ] || { echo "build-deb: $DEB was not produced" >&2; exit 1; }

log "lintian $DEB"
lintian --fail-on error --info "$OUT/$DEB"
echo "$OUT/$DEB"
