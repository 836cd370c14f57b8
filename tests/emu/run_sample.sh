#!/usr/bin/env bash
# tests/emu/run_sample.sh - builds src/backend/cuda/cuda_sample.cu for the CPU SIMT emulator
# (launches rewritten into a temporary copy) with 32- and 64-wide warps and runs
# test_sample_emu against the reference sampler (src/backend/sample_ref.c). About a minute;
# tests/run.sh runs it (the GPU kernel's logic checked without a GPU).
# Usage: tests/emu/run_sample.sh [seed] [rows]
. "$(dirname "$0")/emu_lib.sh"
emu_rewrite src/backend/cuda/cuda_sample.cu "$tmp/cuda_sample_emu.cpp"
inc="-Iinclude -Isrc"
for f in src/base/status.c src/backend/sample_ref.c; do
    gcc -O1 -std=c11 -D_GNU_SOURCE -c $inc "$f" -o "$tmp/$(basename "$f" .c).o"
done
rc=0
for w in 32 64; do
    g++ -std=c++17 -O1 -fno-strict-aliasing -DFG_WARP=$w -Itests/emu $inc -include tests/emu/emu_rt.h \
        -Wall -Wno-unused-function -Wno-unknown-pragmas -o "$tmp/test_w$w" tests/emu/test_sample_emu.cpp \
        "$tmp/cuda_sample_emu.cpp" "$tmp"/*.o -lm
    "$tmp/test_w$w" "$@" || rc=1
done
exit $rc
