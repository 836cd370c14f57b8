#!/usr/bin/env bash
# tests/emu/run_norm.sh - builds src/backend/cuda/cuda_ops.cu for the CPU SIMT emulator
# (launches and dynamic shared memory rewritten into a temporary copy) with 32- and 64-wide
# warps and runs test_norm_emu: rmsnorm straight into an activation type against the reference
# quantizers. A few seconds; tests/run.sh runs it.
# Usage: tests/emu/run_norm.sh [seed]
. "$(dirname "$0")/emu_lib.sh"
emu_rewrite src/backend/cuda/cuda_ops.cu "$tmp/cuda_ops_emu.cpp"
inc="-Iinclude -Isrc"
objs=""
for f in src/base/status.c src/backend/tensor.c src/quant/quant_ref.c src/quant/quant_kquants.c src/quant/types.c; do
    gcc -O1 -std=c11 -D_GNU_SOURCE -c $inc "$f" -o "$tmp/$(basename "$f" .c).o"
    objs="$objs $tmp/$(basename "$f" .c).o"
done
rc=0
for w in 32 64; do
    g++ -std=c++17 -O1 -fno-strict-aliasing -DFG_WARP=$w -Itests/emu $inc -include tests/emu/emu_rt.h \
        -Wall -Wno-unused-function -Wno-unknown-pragmas -o "$tmp/test_w$w" tests/emu/test_norm_emu.cpp \
        "$tmp/cuda_ops_emu.cpp" $objs -lm
    "$tmp/test_w$w" "$@" || rc=1
done
exit $rc
