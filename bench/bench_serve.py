#!/usr/bin/env python3
# bench_serve.py - HTTP benchmark of `forge serve` (or any OpenAI-compatible server): streams
# greedy completions at several concurrency levels (default 1, 4, 16) and reports aggregate
# generated tokens/s, time to first token and per-token latency percentiles (p50/p90/p99).
# Not a test (no assertions). Used for docs/PERF.md.
#
#   bench/bench_serve.py --url http://127.0.0.1:8080            # a running server
#   bench/bench_serve.py --model ../shared/models/stories260K.gguf  # starts forge serve itself
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_stream(url, body, headers):
    """Returns (ttft_s, [inter-token gaps s], completion_tokens). Speaks HTTP/1.0 over a raw
    socket so that every SSE line is timed when it arrives (no client-side buffering)."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    t0 = time.perf_counter()
    ttft, last, gaps, usage, n_chunks = None, None, [], None, 0
    with socket.create_connection((host, int(port)), timeout=600) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        f = sock.makefile("rb")
        status = f.readline().split()
        if len(status) < 2 or status[1] != b"200":
            raise RuntimeError(f"HTTP {status}: {f.read(2000)!r}")
        for raw in f:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            if not ev.get("choices") or not ev["choices"][0].get("text"):
                continue
            now = time.perf_counter()
            n_chunks += 1
            if ttft is None:
                ttft = now - t0
            else:
                gaps.append(now - last)
            last = now
    return ttft, gaps, (usage or {}).get("completion_tokens", n_chunks)


def run_level(url, conc, n_requests, body, headers):
    ttfts, gaps, tokens, lock = [], [], [0], threading.Lock()
    todo = list(range(n_requests))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            t, g, n = one_stream(url, body, headers)
            with lock:
                if t is not None:
                    ttfts.append(t)
                gaps.extend(g)
                tokens[0] += n

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": conc,
        "requests": n_requests,
        "completion_tokens": tokens[0],
        "wall_s": round(wall, 4),
        "tokens_per_s": round(tokens[0] / wall, 2),
        "ttft_ms": {f"p{p}": round(pct(ttfts, p) * 1e3, 3) for p in (50, 90, 99)},
        "itl_ms": {f"p{p}": round(pct(gaps, p) * 1e3, 3) for p in (50, 90, 99)},
        "itl_mean_ms": round(statistics.fmean(gaps) * 1e3, 3) if gaps else None,
    }


def start_server(args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forge = os.environ.get("FORGE_BIN", str(REPO / "build" / "forge"))
    cmd = [forge, "serve", "-m", args.model, "--port", str(port), "--parallel", str(max(args.concurrency))]
    cmd += args.server_args
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench_serve: {' '.join(cmd)} exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("bench_serve: server not ready within 120 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", help="base URL of a running server")
    ap.add_argument("--model", help="GGUF to serve (starts FORGE_BIN serve on a free port)")
    ap.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                    help="extra flags for forge serve (last on the line)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=0, help="requests per level (default 4 x concurrency)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt", default="Once upon a time, there was a little")
    ap.add_argument("--api-key", default=os.environ.get("FORGE_API_KEY"))
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    if not args.url and not args.model:
        ap.error("give --url or --model")
    proc = None
    if args.model:
        proc, args.url = start_server(args)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = {"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    try:
        one_stream(args.url, {**body, "max_tokens": 8}, headers)  # warm-up
        results = []
        print(f"{'conc':>4} {'reqs':>5} {'tokens':>7} {'tok/s':>9} {'ttft p50/p90/p99 ms':>24} "
              f"{'itl p50/p90/p99 ms':>24}")
        for c in args.concurrency:
            r = run_level(args.url, c, args.requests or 4 * c, body, headers)
            results.append(r)
            t, i = r["ttft_ms"], r["itl_ms"]
            print(f"{c:>4} {r['requests']:>5} {r['completion_tokens']:>7} {r['tokens_per_s']:>9.1f} "
                  f"{t['p50']:>8.2f}/{t['p90']:.2f}/{t['p99']:.2f} {i['p50']:>10.3f}/{i['p90']:.3f}/{i['p99']:.3f}")
        out = {"url": args.url, "max_tokens": args.max_tokens, "prompt": args.prompt, "levels": results}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
