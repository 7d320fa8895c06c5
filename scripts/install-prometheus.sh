#!/usr/bin/env bash
# Install promtool and the Prometheus server into .tools/bin (git-ignored), for the
# observability tests (tests/test_observability.py) and for `promtool test rules` by hand:
#
#   .tools/bin/promtool     check rules / test rules / check metrics
#   .tools/bin/prometheus   a real server that the tests start on loopback to scrape ours
#
# Both come from Debian's `prometheus` package, unpacked with `apt-get download` + `dpkg -x`:
# nothing is installed system-wide and no service is started. `apt-get update` runs once when
# the package lists do not know the package yet (that needs root, as on a fresh CI machine).
# Run it as often as you like: binaries that are there and run are kept. Usage:
#
#   bash scripts/install-prometheus.sh
#
# Quiet on success (one line); on failure it prints the failing step's log and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PACKAGE=prometheus

mkdir -p "$BIN"
LOG="$TOOLS/install-prometheus.log"
NAME=install-prometheus
# shellcheck source=scripts/lib/install-log.sh
source "$ROOT/scripts/lib/install-log.sh"
works() { [ -x "$BIN/promtool" ] && [ -x "$BIN/prometheus" ] &&
    "$BIN/promtool" --version >/dev/null 2>&1 && "$BIN/prometheus" --version >/dev/null 2>&1; }
version_of() { "$1" --version 2>&1 | sed -n '1s/^[a-z]*, version \([^ ]*\).*/\1/p'; }

if works; then
    say "promtool + prometheus $(version_of "$BIN/prometheus"): already installed"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "no apt-get: this script takes the binaries from Debian's '$PACKAGE' package"
command -v dpkg >/dev/null 2>&1 || die "no dpkg on PATH"

# Package lists: a fresh machine (or a slim container image) has none; update once.
if ! apt-cache show "$PACKAGE" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "apt does not know '$PACKAGE' yet and 'apt-get update' needs root: run 'sudo apt-get update' first"
    run "apt-get update" apt-get update -qq
    apt-cache show "$PACKAGE" >/dev/null 2>&1 || die "'$PACKAGE' is not in the configured apt sources"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/install-prometheus.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# apt (as root) downloads as the _apt user; let it write here, or it warns and falls back.
chmod 0755 "$WORK"
mkdir -p "$WORK/deb" "$WORK/root"
chmod 0777 "$WORK/deb"
# apt-get download writes into the current directory.
(cd "$WORK/deb" && run "apt-get download $PACKAGE" apt-get download -qq "$PACKAGE")
DEB="$(find "$WORK/deb" -maxdepth 1 -name "${PACKAGE}_*.deb" | head -n 1)"
[ -n "$DEB" ] || die "apt-get download left no ${PACKAGE}_*.deb"
run "dpkg -x $(basename "$DEB")" dpkg -x "$DEB" "$WORK/root"

for tool in promtool prometheus; do
    src="$WORK/root/usr/bin/$tool"
    [ -f "$src" ] || die "$(basename "$DEB") has no usr/bin/$tool"
    # Replace atomically, so a half-copied binary never looks installed.
    install -m 0755 "$src" "$BIN/.$tool.tmp"
    mv -f "$BIN/.$tool.tmp" "$BIN/$tool"
done

run "promtool runs" "$BIN/promtool" --version
run "prometheus runs" "$BIN/prometheus" --version
works || die "the installed binaries do not run"
say "installed promtool + prometheus $(version_of "$BIN/prometheus") from $(basename "$DEB") into $BIN"
