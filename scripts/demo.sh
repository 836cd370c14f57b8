#!/usr/bin/env bash
# The demo (README command 1): installs what is missing, builds, synthesises a small model
# unless one is given, then shows the pipeline: info, tokenize, generate, and one request
# through the OpenAI-compatible server with curl.
#   bash scripts/demo.sh [MODEL.gguf]
# The server takes any free port (FORGE_DEMO_PORT=N asks for one: if it is taken, the demo
# says so and stops) and the request waits for the server's own /health. FORGE_DEMO_BIN=path
# uses an already built forge binary (no install, no build: what tests/run.sh does from a
# fresh clone). Exit status 0 only when every step, the HTTP request included, succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FORGE_DEMO_BIN:-}" ]; then
    FORGE="$FORGE_DEMO_BIN"
else
    bash scripts/install-deps.sh
    make -j"$(nproc)" >/dev/null
    FORGE=./build/forge
fi
MODEL="${1:-}"
if [ -z "$MODEL" ]; then
    mkdir -p models
    MODEL=models/demo-tiny-llama-q8_0.gguf
    echo "== forge synth --preset tiny-llama --type q8_0 -o $MODEL"
    "$FORGE" synth --preset tiny-llama --type q8_0 --seed 7 -o "$MODEL"
fi
echo
echo "== forge info -m $MODEL (first lines)"
# the whole output goes to a file first: `| head` would end forge with SIGPIPE (and, under
# pipefail, the demo with it) whenever the output is longer than the pipe holds
TMP=$(mktemp -d)
SERVER=""
cleanup() {
    if [ -n "$SERVER" ]; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
"$FORGE" info -m "$MODEL" >"$TMP/info.txt"
sed -n '1,40p' "$TMP/info.txt"
echo
PROMPT="Once upon a time, there was a little"
echo "== forge tokenize -m $MODEL -p \"$PROMPT\""
"$FORGE" tokenize -m "$MODEL" -p "$PROMPT"
echo
echo "== forge run -m $MODEL -p \"$PROMPT\" -n 32 --temp 0"
"$FORGE" run -m "$MODEL" -p "$PROMPT" -n 32 --temp 0
echo
echo
PORT="${FORGE_DEMO_PORT:-0}"
echo "== forge serve -m $MODEL --port $PORT (background), then one request with curl"
LOG="$TMP/serve.log"
"$FORGE" serve -m "$MODEL" --port "$PORT" --parallel 4 >"$LOG" 2>&1 &
SERVER=$!
# the port the server bound (it prints "listening on http://HOST:PORT" before loading), then
# its own readiness: /health answers 200 once the model is loaded
URL=""
for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER" 2>/dev/null; then
        wait "$SERVER" || true
        SERVER=""
        echo "demo: forge serve stopped before it was ready:" >&2
        sed 's/^/  /' "$LOG" >&2
        exit 1
    fi
    if [ -z "$URL" ]; then
        URL=$(sed -n '/^forge serve: listening on /{s|^forge serve: listening on \(http://[^ ]*\).*|\1|p;q;}' "$LOG")
    fi
    if [ -n "$URL" ] && curl -sf "$URL/health" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
if [ -z "$URL" ] || ! curl -sf "$URL/health" >/dev/null 2>&1; then
    echo "demo: forge serve was not ready after 30 s:" >&2
    sed 's/^/  /' "$LOG" >&2
    exit 1
fi
echo "(server ready at $URL)"
STATUS=$(curl -sS -o "$TMP/answer.json" -w '%{http_code}' "$URL/v1/completions" \
    -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"$PROMPT\", \"max_tokens\": 24, \"temperature\": 0}")
cat "$TMP/answer.json"
echo
if [ "$STATUS" != "200" ]; then
    echo "demo: the request failed with HTTP $STATUS" >&2
    exit 1
fi
echo "== done (the model has random weights, so its text is gibberish by design)"
