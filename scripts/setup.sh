#!/usr/bin/env bash
# Installs what framewire needs on a fresh Debian machine: Bun (from npm) and
# the npm dependencies, Deno among them (node_modules/.bin/deno). With --test
# also the Debian packages the tests start for real: nats-server, ffmpeg, a
# GStreamer RTSP server, chromium and mosquitto-clients (mosquitto_sub).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bun >/dev/null 2>&1; then
  echo "setup: installing bun from npm"
  npm install -g bun >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
  need=()
  for pkg in nats-server ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-tools chromium mosquitto-clients; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

bun install --frozen-lockfile 2>/dev/null || bun install
# Bun runs no install scripts (none are trusted): the deno package's own installer, run here, puts
# its native binary at node_modules/deno/deno (from the platform package, no download). It also
# points node_modules/.bin/deno at that binary, which breaks `deno task` (it runs a package's bin
# as a script): .bin/deno goes back to the package's wrapper, which runs the binary.
if [ -f node_modules/deno/install.cjs ]; then bun node_modules/deno/install.cjs; fi
ln -sf ../deno/bin.cjs node_modules/.bin/deno
