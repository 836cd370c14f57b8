#!/usr/bin/env bash
# tests/emu/run.sh - builds src/backend/cuda/cuda_attn.cu for the CPU SIMT emulator (launches
# and dynamic shared memory rewritten into a temporary copy) with 32- and 64-wide warps, and
# runs test_attn_emu. A development check for machines without a GPU, not part of make check.
# Usage: tests/emu/run.sh [scenario index]   (the 2048-token prompt is the last index, ~5 min)
. "$(dirname "$0")/emu_lib.sh"
emu_rewrite src/backend/cuda/cuda_attn.cu "$tmp/cuda_attn_emu.cpp"
inc="-Iinclude -Isrc"
# while include/forge/model.h still declares the backend section forge/backend.h now owns,
# compile against a copy without it
if grep -q "typedef struct fg_backend_opts" include/forge/model.h; then
    mkdir -p "$tmp/inc/forge"
    cp include/forge.h "$tmp/inc/forge.h"
    python3 - include/forge/model.h "$tmp/inc/forge/model.h" <<'PY'
import sys
s = open(sys.argv[1]).read()
a, b = s.index('// ---- backends'), s.index('// ---- models')
s = s[:a] + s[b:]
s = s.replace('#ifdef __cplusplus\nextern "C" {', '#include "forge/backend.h"\n#ifdef __cplusplus\nextern "C" {', 1)
open(sys.argv[2], 'w').write(s)
PY
    inc="-I$tmp/inc $inc"
fi
gcc -O1 -c $inc src/base/status.c -o "$tmp/status.o"
# the reference quantizer (fg_quantize_row) the Q8_0 cases compare the stores against
quant=""
for f in quant_ref quant_kquants types; do
    gcc -O1 -std=c11 -c $inc src/quant/$f.c -o "$tmp/$f.o"
    quant="$quant $tmp/$f.o"
done
rc=0
for w in 32 64; do
    g++ -std=c++17 -O1 -fno-strict-aliasing -DFG_WARP=$w -Itests/emu $inc -include tests/emu/emu_rt.h \
        -Wall -Wno-unused-function -Wno-unknown-pragmas -o "$tmp/test_w$w" tests/emu/test_attn_emu.cpp \
        "$tmp/cuda_attn_emu.cpp" "$tmp/status.o" $quant -lm
    echo "== warp $w"
    "$tmp/test_w$w" "$@" || rc=1
done
exit $rc
