#!/usr/bin/env bash
# fetch-device-deps.sh - fills .device/ (git-ignored) HERE, where there is network, with what
# the GPU machine lacks, for scripts/gpu-check.sh to use THERE (that machine reaches nothing):
#   .device/deps/*.deb  the Debian packages of libmicrohttpd, jansson, PCRE2 and cmocka (and
#                       GnuTLS with its libraries, which libmicrohttpd needs; gpu-check.sh keeps
#                       only those the machine's image does not already have)
#   .device/wheels/     pytest and requests for the Python suites (FORGE_GPU_PYTEST)
#   .device/shared/     a copy of the shared test data (models, goldens, vocab, text): the
#                       ../shared beside a checkout does not travel with the repository
# Then run gpu-check.sh through the device tool with carry [".device"] (about 35 MiB).
# Usage: scripts/fetch-device-deps.sh [SHARED_DIR]   (default ../shared, or $FORGE_SHARED)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs="libmicrohttpd12 libmicrohttpd-dev libjansson4 libjansson-dev libpcre2-8-0 libpcre2-dev
      libcmocka0 libcmocka-dev libedit2 libedit-dev libbsd0 libmd0 libtinfo6 libncurses-dev libncurses6
      libgnutls30 libp11-kit0 libidn2-0 libunistring2 libtasn1-6 libnettle8 libhogweed6 libgmp10 libffi8"

mkdir -p .device/deps
rm -f .device/deps/*.deb
# `apt-get download` fetches the .deb files of this machine's distribution into the current
# folder without installing them (no root needed). If it cannot find a package, run
# `apt-get update` first.
(cd .device/deps && apt-get download $pkgs)
echo "fetch-device-deps: $(ls .device/deps/*.deb | wc -l) packages in .device/deps ($(du -sh .device/deps | cut -f1))"

# the Python test tools for FORGE_GPU_PYTEST (the machine's python3 is 3.12)
mkdir -p .device/wheels
rm -f .device/wheels/*.whl
python3 -m pip download -q -d .device/wheels --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform any pytest requests
echo "fetch-device-deps: $(ls .device/wheels/*.whl | wc -l) wheels in .device/wheels"

shared="${1:-${FORGE_SHARED:-../shared}}"
if [ -f "$shared/models/MANIFEST.md" ]; then
    rm -rf .device/shared
    mkdir -p .device/shared
    for d in models golden vocab text; do
        [ -d "$shared/$d" ] && cp -rL "$shared/$d" .device/shared/
    done
    chmod -R u+w .device/shared
    echo "fetch-device-deps: shared test data copied to .device/shared ($(du -sh .device/shared | cut -f1))"
else
    echo "fetch-device-deps: no shared test data at $shared (models/MANIFEST.md); golden suites will fail there"
fi
git check-ignore -q .device/deps || echo "fetch-device-deps: WARNING: .device/ is not git-ignored"
echo "fetch-device-deps: carry [\".device\"] with scripts/gpu-check.sh ($(du -sh .device | cut -f1) in all)"
