#!/usr/bin/env bash
# Install the buf CLI (https://buf.build) into .tools/bin/buf (git-ignored), for the proto checks
# in tests/test_proto_lint.py (`buf lint`, `buf breaking`) and for running them by hand:
#
#   .tools/bin/buf lint
#   .tools/bin/buf breaking --against '.git#branch=main'
#
# The binary comes from the npm registry: the package @bufbuild/buf ships it as a per-platform
# optional dependency (@bufbuild/buf-linux-x64, ...), installed with npm into .tools/buf-npm and
# linked into .tools/bin. The version is pinned below. npm itself comes from Debian's `npm`
# package when it is missing (that needs root, as on a fresh CI machine). Run it as often as you
# like: a buf that is there and reports the pinned version is kept. Usage:
#
#   bash scripts/install-buf.sh
#
# Quiet on success (one line); on failure it prints the failing step's log and exits 1.
set -euo pipefail

BUF_VERSION=1.75.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
PREFIX="$TOOLS/buf-npm"

mkdir -p "$BIN"
LOG="$TOOLS/install-buf.log"
NAME=install-buf
# shellcheck source=scripts/lib/install-log.sh
source "$ROOT/scripts/lib/install-log.sh"
installed_version() { "$BIN/buf" --version 2>/dev/null | head -n 1; }

if [ -x "$BIN/buf" ] && [ "$(installed_version)" = "$BUF_VERSION" ]; then
    say "buf $BUF_VERSION: already installed"
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64 | Linux-amd64) PLATFORM=linux-x64 ;;
    Linux-aarch64 | Linux-arm64) PLATFORM=linux-aarch64 ;;
    Darwin-arm64) PLATFORM=darwin-arm64 ;;
    Darwin-x86_64) PLATFORM=darwin-x64 ;;
    *) die "no @bufbuild/buf binary package for $(uname -s) $(uname -m)" ;;
esac

# npm: Debian's package on a fresh machine (NodeSource's nodejs already bundles it).
if ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "npm is missing and there is no apt-get to install it: install Node.js + npm first"
    [ "$(id -u)" = 0 ] || die "npm is missing and installing it needs root: run 'sudo apt-get install -y npm' first"
    if ! apt-cache show npm >/dev/null 2>&1; then
        run "apt-get update" apt-get update -qq
    fi
    run "apt-get install npm" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
    command -v npm >/dev/null 2>&1 || die "apt-get installed npm but it is not on PATH"
fi

# A private prefix with its own package.json, so npm never looks at (or writes to) the project.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/install-buf.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
rm -rf "$PREFIX"
mkdir -p "$PREFIX"
printf '{"name": "paraformer-asr-tools", "private": true}\n' >"$PREFIX/package.json"
# npm as root refuses to run package scripts under some configurations; buf needs none.
run "npm install @bufbuild/buf@$BUF_VERSION" \
    npm install --prefix "$PREFIX" --cache "$WORK/npm-cache" --no-audit --no-fund --no-update-notifier \
    --ignore-scripts --save-exact --loglevel=error "@bufbuild/buf@$BUF_VERSION"

SRC="$PREFIX/node_modules/@bufbuild/buf-$PLATFORM/bin/buf"
[ -f "$SRC" ] || die "npm did not install @bufbuild/buf-$PLATFORM (expected $SRC)"
chmod 0755 "$SRC"
# The native binary, not the package's node wrapper: no node needed to run it. Swap atomically.
ln -sfn "../buf-npm/node_modules/@bufbuild/buf-$PLATFORM/bin/buf" "$BIN/.buf.tmp"
mv -Tf "$BIN/.buf.tmp" "$BIN/buf"

run "buf --version" "$BIN/buf" --version
[ "$(installed_version)" = "$BUF_VERSION" ] || die "installed buf reports '$(installed_version)', not $BUF_VERSION"
say "installed buf $BUF_VERSION (npm @bufbuild/buf-$PLATFORM) into $BIN"
