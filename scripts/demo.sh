#!/usr/bin/env bash
# The demo (README command 1): installs what is missing, builds, synthesises a small model
# unless one is given, then shows the pipeline: info, tokenize, generate, and one request
# through the OpenAI-compatible server with curl.
#   bash scripts/demo.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
make -j"$(nproc)" >/dev/null
FORGE=./build/forge
MODEL="${1:-}"
if [ -z "$MODEL" ]; then
    mkdir -p models
    MODEL=models/demo-tiny-llama-q8_0.gguf
    echo "== forge synth --preset tiny-llama --type q8_0 -o $MODEL"
    $FORGE synth --preset tiny-llama --type q8_0 --seed 7 -o "$MODEL"
fi
echo
echo "== forge info -m $MODEL (first lines)"
$FORGE info -m "$MODEL" | head -n 40
echo
PROMPT="Once upon a time, there was a little"
echo "== forge tokenize -m $MODEL -p \"$PROMPT\""
$FORGE tokenize -m "$MODEL" -p "$PROMPT"
echo
echo "== forge run -m $MODEL -p \"$PROMPT\" -n 32 --temp 0"
$FORGE run -m "$MODEL" -p "$PROMPT" -n 32 --temp 0
echo
echo
PORT="${FORGE_DEMO_PORT:-18080}"
echo "== forge serve -m $MODEL --port $PORT (background), then one request with curl"
$FORGE serve -m "$MODEL" --port "$PORT" --parallel 4 >build/demo-serve.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"$PROMPT\", \"max_tokens\": 24, \"temperature\": 0}"
echo
echo "== done (the model has random weights, so its text is gibberish by design)"
