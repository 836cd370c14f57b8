#!/usr/bin/env bash
# Installs what Forge needs to build and test on Debian/Ubuntu (sudo only when not root).
set -e
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
pkgs="build-essential clang libclang-rt-14-dev libmicrohttpd-dev libjansson-dev libpcre2-dev libcmocka-dev curl python3 python3-pip"
missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ "${1:-}" = "--test" ]; then
    python3 -c "import pytest, openai, requests" 2>/dev/null ||
        python3 -m pip install -q pytest openai requests 2>/dev/null ||
        python3 -m pip install -q --break-system-packages pytest openai requests
fi
