#!/usr/bin/env bash
# tests/run.sh - runs every suite and ends with one line "N passed, N failed".
#   1. C unit/golden suites (cmocka binaries build/tests/test_*), each test counted;
#   2. Python suites (pytest tests/py: CLI, tokenizer vectors, server with real clients);
#   3. the demo (scripts/demo.sh) from a fresh git clone, with the binary built here;
#   4. fuzz targets (libFuzzer + ASan/UBSan) for a bounded time each (FORGE_FUZZ_SECONDS);
# plus counted build checks: clang -Werror, hipcc -Werror over the GPU backend, and the NCCL
# communicator of tensor parallelism (nvcc against nccl.h, a probe linked to libnccl); the CUDA
# sample kernel and the rmsnorm into an activation type run in the SIMT emulator against the
# reference sampler and quantizers; and the unit tests
# again under ASan+UBSan (make asan).
# Test data comes from FORGE_SHARED (default ../shared); its absence is a failure, not a skip.
set -u
cd "$(dirname "$0")/.."
export FORGE_SHARED="${FORGE_SHARED:-../shared}"
BUILD="${BUILD:-build}"
export BUILD
FUZZ_SECONDS="${FORGE_FUZZ_SECONDS:-45}"
passed=0
failed=0
skipped=0
failures=()

if [ ! -f "$FORGE_SHARED/models/MANIFEST.md" ]; then
    echo "tests: FORGE_SHARED=$FORGE_SHARED does not hold the shared test data (models/MANIFEST.md)"
    echo "0 passed, 1 failed"
    exit 1
fi

jobs=$(nproc 2>/dev/null || echo 2)
if ! make -j"$jobs" BUILD="$BUILD" tests; then
    echo "tests: build failed"
    echo "0 passed, 1 failed"
    exit 1
fi

export FORGE_BIN="${FORGE_BIN:-$(cd "$BUILD" && pwd)/forge}"

echo "== C suites"
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    log="$BUILD/tests/$(basename "$t").log"
    "$t" >"$log" 2>&1
    rc=$?
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    k=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1 # crashed or failed outside a test
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + k))
    printf '%-32s %4d passed %4d failed %4d skipped\n' "$(basename "$t")" "$p" "$f" "$k"
    if [ "$k" -ne 0 ]; then
        grep -m1 '^SKIP' "$log" || true
    fi
    if [ "$f" -ne 0 ]; then
        failures+=("$(basename "$t")")
        tail -n 40 "$log"
    fi
done

if ls "$BUILD"/tests/host/test_* >/dev/null 2>&1; then
    echo "== host replays of GPU kernels"
    for t in "$BUILD"/tests/host/test_*; do
        case "$t" in *.log) continue ;; esac # a previous run's log
        if "$t" >"$t.log" 2>&1; then
            passed=$((passed + 1))
            echo "$(basename "$t"): $(tail -n 1 "$t.log")"
        else
            failed=$((failed + 1))
            failures+=("$(basename "$t")")
            tail -n 20 "$t.log"
        fi
    done
fi

# emu NAME SCRIPT WHAT: a CUDA source run in the SIMT emulator (32- and 64-wide warps), counted
# as one suite; its "test_NAME_emu: warp ... differ" lines are the result
emu() {
    echo "== the CUDA $3 in the SIMT emulator (tests/emu/$2, 32- and 64-wide warps)"
    if bash "tests/emu/$2" >"$BUILD/emu-$1.log" 2>&1; then
        passed=$((passed + 1))
        grep "^test_$1_emu: warp .*differ" "$BUILD/emu-$1.log"
    else
        failed=$((failed + 1))
        failures+=("emu $1")
        tail -n 20 "$BUILD/emu-$1.log"
    fi
}
emu sample run_sample.sh "sample kernel"
emu norm run_norm.sh "rmsnorm into an activation type"

echo "== clang build (-Wall -Wextra -Werror)"
if command -v clang >/dev/null 2>&1; then
    if make -j"$jobs" CC=clang CUDA=0 BUILD="$BUILD/clang" "$BUILD/clang/forge" >"$BUILD/clang-build.log" 2>&1; then
        passed=$((passed + 1))
        echo "clang build: ok"
    else
        failed=$((failed + 1))
        failures+=("clang build")
        grep -E 'error|warning' "$BUILD/clang-build.log" | head -n 20
    fi
fi

echo "== HIP compile check (hipcc, every src/backend/cuda/*.cu for gfx90a and gfx1030, -Werror)"
if command -v hipcc >/dev/null 2>&1; then
    # Compile only (no AMD GPU here): the cuda module's objects through the Makefile's HIP=1
    # rule, both architectures in one hipcc call per file, files in parallel.
    n_cu=$(ls src/backend/cuda/*.cu 2>/dev/null | wc -l)
    if make -j"$jobs" HIP=1 HIP_ARCHS="gfx90a gfx1030" BUILD="$BUILD/hip" "$BUILD/hip/lib/libfg_cuda.a" \
        >"$BUILD/hip-build.log" 2>&1; then
        passed=$((passed + 1))
        echo "hip build: ok ($n_cu files, gfx90a gfx1030)"
    else
        failed=$((failed + 1))
        failures+=("hip build")
        grep -E 'error:|warning:' "$BUILD/hip-build.log" | head -n 20
    fi
else
    # CI must prove the HIP build: a missing compiler is a failure, not a skip
    failed=$((failed + 1))
    failures+=("hip build")
    echo "hip build: hipcc not found (scripts/install-deps.sh --test installs it)"
fi

echo "== NCCL build check (comm_nccl.cu with nvcc against nccl.h, a probe linked to libnccl)"
if command -v nvcc >/dev/null 2>&1; then
    # CUDA=1 on the command line: also when this run's tree is CPU-only (CUDA=0 in the environment)
    if make CUDA=1 BUILD="$BUILD/nccl" nccl-check >"$BUILD/nccl-build.log" 2>&1; then
        passed=$((passed + 1))
        tail -n 1 "$BUILD/nccl-build.log"
    else
        failed=$((failed + 1))
        failures+=("nccl build")
        grep -E 'error|nccl-check' "$BUILD/nccl-build.log" | head -n 20
    fi
else
    echo "nccl build: not checked (no nvcc on PATH)"
fi

if [ "${FORGE_SKIP_ASAN:-0}" != "1" ]; then
    echo "== unit tests under ASan+UBSan (make asan)"
    make asan >"$BUILD/asan.log" 2>&1
    while read -r name verdict; do
        case "$verdict" in
        ok) passed=$((passed + 1)) ;;
        FAILED) failed=$((failed + 1)); failures+=("asan $name") ;;
        esac
    done < <(grep -E '^test_[a-z_0-9]+ +(ok|FAILED)$' "$BUILD/asan.log")
    n_ok=$(grep -cE '^test_[a-z_0-9]+ +ok$' "$BUILD/asan.log")
    n_bad=$(grep -cE '^test_[a-z_0-9]+ +FAILED$' "$BUILD/asan.log")
    echo "asan: $n_ok suites clean, $n_bad failed"
    if [ "$n_ok" -eq 0 ] || [ "$n_bad" -ne 0 ]; then
        [ "$n_ok" -eq 0 ] && { failed=$((failed + 1)); failures+=("asan build"); }
        tail -n 40 "$BUILD/asan.log"
    fi
fi

if ls tests/py/test_*.py >/dev/null 2>&1; then
    echo "== Python suites"
    log="$BUILD/tests/pytest.log"
    python3 -m pytest -q -rs -p no:cacheprovider tests/py >"$log" 2>&1
    rc=$?
    tail -n 30 "$log"
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$log" | tail -n 1)
    p=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    e=$(grep -oE '[0-9]+ error' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    f=$((f + e))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    k=$(grep -oE '[0-9]+ skipped' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + k)) # the reasons are in the summary above (-rs)
    [ "$f" -ne 0 ] && failures+=("pytest")
fi

# README command 1 as a new user runs it: scripts/demo.sh from a fresh clone of the committed
# tree (with the binary built above, FORGE_DEMO_BIN, so that it takes seconds)
echo "== demo from a fresh clone"
demo_tmp=$(mktemp -d)
demo_log="$BUILD/tests/demo.log"
if git clone -q "$(pwd)" "$demo_tmp/forge" >"$demo_log" 2>&1 &&
    FORGE_DEMO_BIN="$FORGE_BIN" bash "$demo_tmp/forge/scripts/demo.sh" >>"$demo_log" 2>&1; then
    passed=$((passed + 1))
    echo "demo: ok"
else
    failed=$((failed + 1))
    failures+=("demo")
    tail -n 30 "$demo_log"
fi
rm -rf "$demo_tmp"

if [ "${FORGE_SKIP_FUZZ:-0}" != "1" ] && ls tests/fuzz/fuzz_*.c >/dev/null 2>&1; then
    echo "== Fuzz targets (${FUZZ_SECONDS}s each)"
    if make -j"$jobs" BUILD="$BUILD" fuzz >"$BUILD/fuzz-build.log" 2>&1; then
        for fz in "$BUILD"/fuzz/fuzz_*; do
            [ -f "$fz" ] && [ -x "$fz" ] || continue # not a previous run's .corpus / .log
            name=$(basename "$fz")
            corpus="$BUILD/fuzz/$name.corpus"
            mkdir -p "$corpus"
            seeds="tests/fuzz/corpus/${name#fuzz_}"
            "$fz" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$corpus" \
                ${seeds:+$( [ -d "$seeds" ] && echo "$seeds")} >"$BUILD/fuzz/$name.log" 2>&1
            if [ $? -eq 0 ]; then
                passed=$((passed + 1))
                echo "$name: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$BUILD/fuzz/$name.log" | grep -oE '[0-9]+' || echo '?') runs)"
            else
                failed=$((failed + 1))
                failures+=("$name")
                tail -n 40 "$BUILD/fuzz/$name.log"
            fi
        done
    else
        tail -n 40 "$BUILD/fuzz-build.log"
        failed=$((failed + 1))
        failures+=("fuzz build")
    fi
fi

[ "${#failures[@]}" -gt 0 ] && echo "failing: ${failures[*]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
