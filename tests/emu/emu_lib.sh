# tests/emu/emu_lib.sh - sourced by the emulator runners (run.sh, run_sample.sh, run_norm.sh):
# the repository root as the working folder, a temporary folder $tmp removed at exit, and
# emu_rewrite SRC OUT: the CUDA source with its launches (kernel<<<...>>>(args)) and dynamic
# shared memory (extern __shared__ T name[]) rewritten for emu_rt.h.
set -eu
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
emu_rewrite() {
    python3 - "$1" "$2" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r'(\w+(?:<[^<>;]*>)?)<<<(.*?)>>>\(', r'emu_launcher(\1, \2)(', s, flags=re.S)
s = re.sub(r'extern __shared__ (\w+) (\w+)\[\];', r'\1 *\2 = (\1 *)emu_dyn_smem();', s)
assert '<<<' not in s and 'extern __shared__' not in s
open(sys.argv[2], 'w').write(s)
PY
}
