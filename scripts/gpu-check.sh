#!/usr/bin/env bash
# gpu-check.sh - the one script to run on the GPU machine (a copy of the repository, no network,
# no libmicrohttpd/jansson/pcre2/cmocka): unpacks the carried .deb files, builds Forge with the
# CUDA backend, runs the GPU-relevant C suites, compute-sanitizer (memcheck, racecheck) over one
# suite and optional benchmarks, saves full logs under $OUT (when set) and prints a compact table
# LAST: suite, passed, failed, skipped, seconds, note. Exit status 0 when nothing failed.
#
# Here, once (network needed): scripts/fetch-device-deps.sh   (fills .device/: debs + test data)
# There, through the device tool, from the repository root, with carry [".device"]:
#   scripts/gpu-check.sh
#   FORGE_GPU_SUITES="test_cuda test_backend_ops" FORGE_BENCH="build/forge bench ... ;; ..." scripts/gpu-check.sh
# On a kind of several GPUs (nvidia-h100-x2, ...), test_tp and the goldens' "tp2" cases
# (test_golden, FORGE_GOLDEN_TP) run tensor-parallel across GPUs 0..N-1 through NCCL; with one
# GPU they SKIP. NCCL comes from the toolkit, else from the image's nvidia-nccl Python wheel
# (NCCL_HOME is set to it here); NCCL_NVLS_ENABLE stays 0.
#
# Environment (all optional):
#   FORGE_GPU_SUITES      suites to run, names under build/tests (default: every build/tests/test_*)
#   FORGE_SUITE_TIMEOUT   seconds per suite (300)
#   FORGE_SANITIZE        0 skips compute-sanitizer (default 1)
#   FORGE_SANITIZE_SUITE  the suite run under the sanitizers (test_backend_ops, else test_cuda)
#   FORGE_SANITIZE_TOOLS  "memcheck racecheck" (also: synccheck initcheck)
#   FORGE_SANITIZE_ENV    VAR=value pairs for the sanitized runs, to shorten them
#   FORGE_SANITIZE_TIMEOUT seconds per sanitizer run (240)
#   FORGE_GPU_PYTEST      tests/py files to run against the GPU build (pytest, requests: from
#                         .device/wheels when the machine's python3 lacks them)
#   FORGE_BENCH           benchmark commands separated by ";;" (run from the repository root)
#   FORGE_BENCH_SET       named sets appended to FORGE_BENCH (space-separated; 8B files synthesised in
#                         /tmp): prefill (Q4_K, Q8_0, Q4_0: forge bench -p 512), decode (Q4_K:
#                         bench_engine at 16..256 sequences), serve (Q4_K with a real tokenizer:
#                         bench_serve.py, 128- and 512-token prompts, 128 tokens, 1..256 streams)
#   FORGE_DEADLINE_S      wall-clock budget of the whole script (560): phases are cut short
#                         so that the table still prints inside the device tool's 600 s
#   FORGE_DEVICE          exported to the suites (default cuda: test_golden runs on the GPU)
#   FORGE_SHARED          test data (default .device/shared, else ../shared, else shared)
#   FORGE_DEPS_DIR        the .deb folder (.device/deps)
#   CUDA_ARCHS (90), JOBS (16), BUILD (build), OUT (logs: build.log, suites.log, memcheck.log,
#                         racecheck.log, bench.log, summary.txt; at most 8 files come back)
set -u
cd "$(dirname "$0")/.." || exit 1
T0=$(date +%s)
DEADLINE="${FORGE_DEADLINE_S:-560}"
BUILD="${BUILD:-build}"
JOBS="${JOBS:-16}"
export CUDA_ARCHS="${CUDA_ARCHS:-90}"
export FORGE_DEVICE="${FORGE_DEVICE:-cuda}"
LOGDIR="${OUT:-$BUILD/gpu-check}"
mkdir -p "$LOGDIR"
MAX_LOG=16000000 # bytes: what the device tool brings back per file

rows=()
n_failed=0
now() { date +%s; }
left() { echo $((DEADLINE - ($(now) - T0))); }
# row SUITE PASSED FAILED SKIPPED SECONDS NOTE
row() {
    rows+=("$(printf '%-34s %6s %6s %7s %7s  %s' "$1" "$2" "$3" "$4" "$5" "$6")")
    [ "$3" != "-" ] && [ "$3" -gt 0 ] 2>/dev/null && n_failed=$((n_failed + $3))
    return 0
}
cap_log() { # keeps the tail of a log within what comes back
    [ -f "$1" ] && [ "$(stat -c %s "$1")" -gt "$MAX_LOG" ] &&
        { tail -c "$MAX_LOG" "$1" >"$1.tmp" && mv "$1.tmp" "$1"; }
    return 0
}
# limit SECONDS: the smaller of SECONDS and what the deadline leaves (minus room for the table)
limit() {
    local l
    l=$(($(left) - 20))
    [ "$1" -lt "$l" ] && l=$1
    echo "$l"
}
table() {
    local total=$(($(now) - T0))
    {
        echo
        echo "== gpu-check: $GPU_NAME, ${total}s"
        printf '%-34s %6s %6s %7s %7s  %s\n' suite passed failed skipped seconds note
        for r in "${rows[@]}"; do echo "$r"; done
        if [ "$n_failed" -eq 0 ]; then echo "gpu-check: OK"; else echo "gpu-check: $n_failed FAILED"; fi
    } | tee "$LOGDIR/summary.txt"
    for f in "$LOGDIR"/*.log; do cap_log "$f"; done
}
# cmocka counts of a log: "passed failed skipped"
counts() {
    local p f k
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    k=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    echo "$p $f $k"
}

# ---------------------------------------------------------------- the machine
GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
GPU_NAME="${GPU_NAME:-no nvidia-smi answer}"
echo "gpu: $GPU_NAME"
echo "nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
N_GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
echo "gpus: $N_GPUS"
[ "$N_GPUS" -gt 1 ] && nvidia-smi topo -m 2>/dev/null | head -n 12
# NCCL for tensor parallelism: the toolkit's nccl.h, else the nvidia-nccl wheel of the image's python
nvcc_home=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")")
if [ -z "${NCCL_HOME:-}" ] && [ ! -f "$nvcc_home/include/nccl.h" ]; then
    d=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null)
    [ -n "$d" ] && [ -f "$d/include/nccl.h" ] && export NCCL_HOME="$d"
fi
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
nccl_h="${NCCL_HOME:-$nvcc_home}/include/nccl.h"
nccl_v=$(sed -n 's/^#define NCCL_\(MAJOR\|MINOR\|PATCH\) *\([0-9]*\).*/\2/p' "$nccl_h" 2>/dev/null | paste -sd.)
if [ -n "$nccl_v" ]; then
    echo "nccl: $nccl_v in ${NCCL_HOME:-$nvcc_home}; NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
else
    echo "nccl: nccl.h not found (built without tensor parallelism on the GPU)"
fi

# ---------------------------------------------------------------- dependencies
# The .deb files of scripts/fetch-device-deps.sh, unpacked into /tmp/deps (never into /). A
# library whose soname the image already has is removed from /tmp/deps so that nothing the
# image's own programs (gcc, python) load is shadowed through LD_LIBRARY_PATH; the libraries
# Forge links directly are kept (their -dev links point at them).
DEPS_DIR="${FORGE_DEPS_DIR:-.device/deps}"
if ls "$DEPS_DIR"/*.deb >/dev/null 2>&1; then
    rm -rf /tmp/deps
    mkdir -p /tmp/deps
    for d in "$DEPS_DIR"/*.deb; do
        if command -v dpkg >/dev/null 2>&1; then
            dpkg -x "$d" /tmp/deps
        else # no dpkg: a .deb is an ar archive holding data.tar.*
            abs="$(pwd)/$d"
            (mkdir -p /tmp/deps/.x && cd /tmp/deps/.x && ar x "$abs" && tar -xf data.tar.* -C /tmp/deps && cd .. && rm -rf .x)
        fi
    done
    lib=/tmp/deps/usr/lib/x86_64-linux-gnu
    have=$(ldconfig -p 2>/dev/null | awk '{print $1}')
    for so in "$lib"/lib*.so.[0-9]*; do
        name=$(basename "$so")
        case "$name" in libmicrohttpd* | libjansson* | libpcre2-8* | libcmocka*) continue ;; esac
        [[ "$name" =~ ^lib.*\.so\.[0-9]+$ ]] || continue # sonames only
        if grep -qxF "$name" <<<"$have"; then rm -f "$lib/$name" "$lib/$name".*; fi
    done
    export CPATH="/tmp/deps/usr/include:/tmp/deps/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    kept=""
    for so in "$lib"/lib*.so.[0-9]*; do
        [[ "$(basename "$so")" =~ ^lib.*\.so\.[0-9]+$ ]] && kept="$kept $(basename "$so")"
    done
    echo "deps: $(find "$DEPS_DIR" -name '*.deb' | wc -l) packages unpacked into /tmp/deps; libraries kept:$kept"
else
    echo "deps: no .deb files in $DEPS_DIR (scripts/fetch-device-deps.sh fills it); using the system's libraries"
fi

if [ -z "${FORGE_SHARED:-}" ]; then
    for s in .device/shared ../shared shared; do
        if [ -f "$s/models/MANIFEST.md" ]; then FORGE_SHARED="$s"; break; fi
    done
fi
export FORGE_SHARED="${FORGE_SHARED:-.device/shared}"
echo "shared test data: $FORGE_SHARED"

# ---------------------------------------------------------------- build
t=$(now)
echo "== build (make -j$JOBS CUDA_ARCHS=$CUDA_ARCHS tests)"
# libedit from the carried packages is the static archive (the image's own libedit has no
# development link): it needs its libraries named
cli_libs="-ledit"
[ -f /tmp/deps/usr/lib/x86_64-linux-gnu/libedit.a ] && cli_libs="-ledit -l:libtinfo.so.6 -l:libbsd.so.0 -l:libmd.so.0"
if timeout -k 5 "$(limit 400)" make -j"$JOBS" BUILD="$BUILD" CUDA_ARCHS="$CUDA_ARCHS" CLI_LDLIBS="$cli_libs" tests \
    >"$LOGDIR/build.log" 2>&1; then
    row build 1 0 0 $(($(now) - t)) "CUDA_ARCHS=$CUDA_ARCHS"
else
    grep -E 'error|undefined reference|cannot find' "$LOGDIR/build.log" | head -n 30
    tail -n 15 "$LOGDIR/build.log"
    row build 0 1 0 $(($(now) - t)) "see build.log"
    table
    exit 1
fi
[ -x "$BUILD/tests/test_cuda" ] || echo "warning: $BUILD/tests/test_cuda was not built (no nvcc on PATH?)"

# ---------------------------------------------------------------- suites
if [ -n "${FORGE_GPU_SUITES:-}" ]; then
    suites="$FORGE_GPU_SUITES"
else
    suites=""
    for b in "$BUILD"/tests/test_*; do
        [ -f "$b" ] && [ -x "$b" ] && suites="$suites $(basename "$b")"
    done
fi
: >"$LOGDIR/suites.log"
echo "== suites: ${suites# } (FORGE_DEVICE=$FORGE_DEVICE)"
for s in $suites; do
    bin="$BUILD/tests/$s"
    if [ ! -x "$bin" ]; then
        row "$s" 0 1 0 0 "not built"
        continue
    fi
    lim=$(limit "${FORGE_SUITE_TIMEOUT:-300}")
    if [ "$(left)" -lt 30 ]; then
        row "$s" - - - 0 "not run (deadline)"
        continue
    fi
    t=$(now)
    log="$BUILD/tests/$s.gpu.log"
    timeout -k 5 "$lim" "$bin" >"$log" 2>&1
    rc=$?
    read -r p f k <<<"$(counts "$log")"
    note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note="timeout after ${lim}s"
        [ "$f" -eq 0 ] && f=1
    elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        note="exit $rc (crash or failure outside a test)"
        f=1
    fi
    skipmsg=$(grep -m1 '^SKIP' "$log" | cut -c1-80)
    [ -n "$skipmsg" ] && note="${note:+$note; }$skipmsg"
    row "$s" "$p" "$f" "$k" $(($(now) - t)) "$note"
    { echo "===== $s (rc $rc)"; cat "$log"; } >>"$LOGDIR/suites.log"
    if [ "$f" -ne 0 ]; then
        echo "---- $s: last lines"
        tail -n 25 "$log"
    fi
done

# ---------------------------------------------------------------- compute-sanitizer
if [ "${FORGE_SANITIZE:-1}" != "0" ]; then
    ss="${FORGE_SANITIZE_SUITE:-}"
    if [ -z "$ss" ]; then
        ss=test_backend_ops
        [ -x "$BUILD/tests/$ss" ] || ss=test_cuda
    fi
    if ! command -v compute-sanitizer >/dev/null 2>&1; then
        row "sanitizer" - - - 0 "compute-sanitizer not on PATH"
    elif [ ! -x "$BUILD/tests/$ss" ]; then
        row "sanitizer($ss)" 0 1 0 0 "not built"
    else
        for tool in ${FORGE_SANITIZE_TOOLS:-memcheck racecheck}; do
            lim=$(limit "${FORGE_SANITIZE_TIMEOUT:-240}")
            if [ "$(left)" -lt 35 ]; then
                row "$tool($ss)" - - - 0 "not run (deadline)"
                continue
            fi
            extra=()
            [ "$tool" = memcheck ] && extra=(--leak-check full)
            log="$LOGDIR/$tool.log"
            t=$(now)
            # shellcheck disable=SC2086
            timeout -k 5 "$lim" env ${FORGE_SANITIZE_ENV:-} compute-sanitizer --tool "$tool" ${extra[@]+"${extra[@]}"} \
                --error-exitcode 99 --print-limit 50 "$BUILD/tests/$ss" >"$log" 2>&1
            rc=$?
            read -r p f k <<<"$(counts "$log")"
            errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) error.*/\1/p' "$log" | tail -n 1)
            hz=$(sed -n 's/.*RACECHECK SUMMARY: \([0-9]*\) hazard.*/\1/p' "$log" | tail -n 1)
            note="${errs:-?} sanitizer errors${hz:+, $hz hazards}"
            if grep -q 'Device not supported' "$log"; then
                note="sanitizer refused the device (gVisor machine?): not checked"
            elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
                note="timeout after ${lim}s (set FORGE_SANITIZE_ENV to shorten); $note"
                f=$((f + 1))
            elif [ "$rc" -eq 99 ] || [ "${errs:-0}" != "0" ] || [ "${hz:-0}" != "0" ]; then
                f=$((f + 1))
                grep -m 12 -E '^========= (Invalid|Race|Error|Program hit|Leaked|Uninitialized)|^=========     at ' "$log"
            elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
                note="exit $rc; $note"
                f=1
            fi
            row "$tool($ss)" "$p" "$f" "$k" $(($(now) - t)) "$note"
        done
    fi
fi

# ---------------------------------------------------------------- python suites
# FORGE_GPU_PYTEST: tests/py files run against the GPU build (FORGE_DEVICE=cuda), e.g. the server's
# load test; pytest and requests come from the carried wheels (.device/wheels) when missing.
if [ -n "${FORGE_GPU_PYTEST:-}" ]; then
    t=$(now)
    PY=$(command -v python3 || true)
    pyd=/tmp/forge-pyd
    if [ -n "$PY" ] && ! "$PY" -c "import pytest, requests" 2>/dev/null && [ -d .device/wheels ]; then
        "$PY" -m pip install -q --no-index --find-links .device/wheels --target "$pyd" pytest requests \
            >"$LOGDIR/pytest-install.log" 2>&1
        export PYTHONPATH="$pyd${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if [ -z "$PY" ] || ! "$PY" -c "import pytest, requests" 2>/dev/null; then
        row "pytest" - - - 0 "SKIP: no python3 with pytest and requests (scripts/fetch-device-deps.sh carries wheels)"
    else
        log="$LOGDIR/pytest.log"
        FORGE_BIN="$PWD/$BUILD/forge" BUILD="$BUILD" FORGE_SHARED="$(cd "$FORGE_SHARED" && pwd)" \
            timeout -k 5 "$(limit 240)" "$PY" -m pytest -q $FORGE_GPU_PYTEST >"$log" 2>&1
        rc=$?
        last=$(tail -n 1 "$log")
        p=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || echo 0)
        f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$last" | awk '{s += $1} END {print s + 0}')
        k=$(grep -oE '[0-9]+ skipped' <<<"$last" | grep -oE '[0-9]+' || echo 0)
        [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ] && f=1
        tail -n 15 "$log"
        row "pytest (FORGE_DEVICE=$FORGE_DEVICE)" "$p" "${f:-0}" "$k" $(($(now) - t)) "$FORGE_GPU_PYTEST"
    fi
fi

# ---------------------------------------------------------------- benchmarks
# FORGE_BENCH_SET: the issues' benchmark sets as FORGE_BENCH commands
bench_set() {
    local F="$BUILD/forge" E="$BUILD/bench/bench_engine" V="$FORGE_SHARED/vocab/ggml-vocab-deepseek-llm.gguf"
    local srv="--server-args --device cuda --parallel 256 --max-conns-per-ip 512" t
    case "$1" in
    prefill)
        for t in q4_k q8_0 q4_0; do
            printf '%s;;' "$F synth --preset llama3-8b --type $t -o /tmp/l8-$t.gguf >/dev/null && $F bench -m /tmp/l8-$t.gguf --device cuda -p 512 -n 0 -r 3; rm -f /tmp/l8-$t.gguf"
        done ;;
    decode)
        printf '%s;;' "[ -f /tmp/l8k.gguf ] || $F synth --preset llama3-8b --type q4_k -o /tmp/l8k.gguf >/dev/null" \
            "$E /tmp/l8k.gguf --device cuda --seqs 16,32,64,128,256 --gen 16" ;;
    serve)
        local py="python3 -c 'import requests' 2>/dev/null || pip install -q --no-index --find-links .device/wheels requests"
        printf '%s;;' "[ -f /tmp/l8d.gguf ] || $F synth --preset llama3-8b --type q4_k --vocab-from $V -o /tmp/l8d.gguf >/dev/null; $py" \
            "python3 -u bench/bench_serve.py --model /tmp/l8d.gguf --concurrency 1 4 16 64 128 256 --max-tokens 128 --prompt-tokens 128 --json ${OUT:-$LOGDIR}/serve128.json $srv" \
            "python3 -u bench/bench_serve.py --model /tmp/l8d.gguf --concurrency 1 4 16 64 128 256 --max-tokens 128 --prompt-tokens 512 --json ${OUT:-$LOGDIR}/serve512.json $srv" ;;
    *) echo "gpu-check: unknown FORGE_BENCH_SET '$1' (prefill, decode, serve)" >&2 ;;
    esac
}
for set_name in ${FORGE_BENCH_SET:-}; do
    FORGE_BENCH="${FORGE_BENCH:-};;$(bench_set "$set_name")"
done
if [ -n "${FORGE_BENCH:-}" ]; then
    : >"$LOGDIR/bench.log"
    i=0
    while IFS= read -r cmd; do
        cmd=$(sed 's/^[[:space:]]*//; s/[[:space:]]*$//' <<<"$cmd")
        [ -z "$cmd" ] && continue
        i=$((i + 1))
        lim=$(limit 300)
        if [ "$(left)" -lt 35 ]; then
            row "bench $i" - - - 0 "not run (deadline): $cmd"
            continue
        fi
        t=$(now)
        echo "== bench $i: $cmd" | tee -a "$LOGDIR/bench.log"
        timeout -k 5 "$lim" bash -c "$cmd" >"$LOGDIR/bench.$i.tmp" 2>&1
        rc=$?
        cat "$LOGDIR/bench.$i.tmp" >>"$LOGDIR/bench.log"
        tail -n 6 "$LOGDIR/bench.$i.tmp"
        rm -f "$LOGDIR/bench.$i.tmp"
        if [ "$rc" -eq 0 ]; then
            row "bench $i" 1 0 0 $(($(now) - t)) "$(cut -c1-60 <<<"$cmd")"
        else
            row "bench $i" 0 1 0 $(($(now) - t)) "exit $rc: $(cut -c1-50 <<<"$cmd")"
        fi
    done < <(sed 's/;;/\n/g' <<<"$FORGE_BENCH")
fi

table
[ "$n_failed" -eq 0 ]
