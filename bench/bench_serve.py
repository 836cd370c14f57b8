#!/usr/bin/env python3
# bench_serve.py - HTTP benchmark of `forge serve` (or any OpenAI-compatible server): streams
# greedy completions at several concurrency levels (default 1, 4, 16) and reports aggregate
# generated tokens/s, time to first token and per-token latency percentiles (p50/p90/p99), and
# the mean GPU utilisation while each level ran (nvidia-smi, where there is one).
# Shared-prefix mode (--shared-prefix N): every request is a chat whose N-token system prompt
# is the same for all users (each has its own user message), the prefix warmed by one request
# first; --ab-prefix-cache runs it against `forge serve` with and without --no-prefix-cache
# and compares TTFT and the outputs. Not a test (no assertions). Used for docs/PERF.md.
#
#   bench/bench_serve.py --url http://127.0.0.1:8080            # a running server
#   bench/bench_serve.py --model ../shared/models/stories260K.gguf  # starts forge serve itself
#   bench/bench_serve.py --model M.gguf --shared-prefix 1000 --concurrency 64 --ab-prefix-cache
import argparse
import itertools
import json
import os
import shutil
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


def chunk_text(ev):
    c = ev["choices"][0]
    return c.get("text") or (c.get("delta") or {}).get("content") or ""


def one_stream(url, body, headers, path="/v1/completions", out=None):
    """Returns (ttft_s, [inter-token gaps s], completion_tokens). Speaks HTTP/1.0 over a raw
    socket so that every SSE line is timed when it arrives (no client-side buffering).
    out (a dict), when given, receives the text and the usage."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    t0 = time.perf_counter()
    ttft, last, gaps, usage, n_chunks, text = None, None, [], None, 0, []
    with socket.create_connection((host, int(port)), timeout=1800) as sock:
        sock.sendall(f"POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n"
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
            if not ev.get("choices") or not chunk_text(ev):
                continue
            text.append(chunk_text(ev))
            now = time.perf_counter()
            n_chunks += 1
            if ttft is None:
                ttft = now - t0
            else:
                gaps.append(now - last)
            last = now
    n_tokens = (usage or {}).get("completion_tokens", n_chunks)
    if out is not None:
        out["text"], out["usage"] = "".join(text), usage
        # time per output token after the first: the request's mean inter-token latency, which
        # does not depend on how the tokens were grouped into chunks (a token whose bytes do not
        # yet form a character sends nothing: synthesised vocabularies are mostly byte pieces)
        out["tpot"] = (sum(gaps) / (n_tokens - 1)) if ttft is not None and n_tokens > 1 else None
    return ttft, gaps, n_tokens


def run_level(url, conc, n_requests, body, headers, make_request=None):
    """make_request(i) -> (path, body) for request i (default: body on /v1/completions)."""
    ttfts, gaps, tpots, tokens, lock = [], [], [], [0], threading.Lock()
    todo = list(range(n_requests))
    outs = [None] * n_requests

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            path, b = make_request(i) if make_request else ("/v1/completions", body)
            out = {}
            t, g, n = one_stream(url, b, headers, path, out)
            with lock:
                if t is not None:
                    ttfts.append(t)
                gaps.extend(g)
                if out.get("tpot") is not None:
                    tpots.append(out["tpot"])
                tokens[0] += n
                outs[i] = out

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
        "tpot_ms": {f"p{p}": round(pct(tpots, p) * 1e3, 3) for p in (50, 90, 99)},
        "outputs": outs,
    }


# ---- shared-prefix chat workload
def system_prompt(url, headers, n_tokens, text_path):
    """A system message of about n_tokens tokens (as the server's chat template renders and
    tokenizes it, measured with /apply-template), cut from the words of text_path."""
    words = Path(text_path).read_text().split()
    while len(words) < 4 * n_tokens:
        words = words + words

    def n_tok(k):
        r = requests.post(url + "/apply-template", headers=headers, timeout=60,
                          json={"messages": [{"role": "system", "content": " ".join(words[:k])}]})
        r.raise_for_status()
        return len(r.json()["tokens"])

    lo, hi = 1, 4 * n_tokens  # the most words whose rendering is <= n_tokens tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tok(mid) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]), n_tok(lo)


def user_message(i):
    return f"User {i} asks: tell me a story about the number {i * 7919 % 1000}."


def shared_prefix_run(url, headers, args, system, n_sys):
    def make(i):
        return "/v1/chat/completions", {
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user_message(i)}],
            "max_tokens": args.max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}

    # warm-up: the shared prefix is computed (and cached, when the server caches) once
    one_stream(url, {**make(10 ** 6)[1], "max_tokens": 2}, headers, "/v1/chat/completions")
    results = []
    for c in args.concurrency:
        n = args.requests or c
        r = run_level(url, c, n, None, headers, make)
        cached = [((o or {}).get("usage") or {}).get("prompt_tokens_details", {}).get("cached_tokens", 0) for o in r["outputs"]]
        prompt = [((o or {}).get("usage") or {}).get("prompt_tokens", 0) for o in r["outputs"]]
        r["system_prompt_tokens"] = n_sys
        r["prompt_tokens_mean"] = round(statistics.fmean(prompt), 1) if prompt else None
        r["cached_tokens_mean"] = round(statistics.fmean(cached), 1) if cached else None
        results.append(r)
    return results


class GpuUtil:
    """Mean GPU utilisation (%, nvidia-smi sampled every 200 ms) while a level runs; None
    without nvidia-smi (no NVIDIA GPU, or another server)."""

    def __init__(self):
        self.vals, self.proc = [], None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", os.environ.get("FORGE_BENCH_GPU", "0"), "-lms", "200"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.vals.append(float(line.strip()))
            except ValueError:
                pass

    def stop(self):
        if not self.proc:
            return None
        self.proc.terminate()
        self.proc.wait(10)
        return round(statistics.fmean(self.vals), 1) if self.vals else None


def print_header(extra=""):
    print(f"{'conc':>4} {'reqs':>5} {'tokens':>7} {'tok/s':>9} {'ttft p50/p90/p99 ms':>24} "
          f"{'itl p50/p90/p99 ms':>24} {'tpot p50/p90/p99 ms':>24}{extra}")


def print_row(r, extra=""):
    t, i, q = r["ttft_ms"], r["itl_ms"], r["tpot_ms"]
    print(f"{r['concurrency']:>4} {r['requests']:>5} {r['completion_tokens']:>7} {r['tokens_per_s']:>9.1f} "
          f"{t['p50']:>8.2f}/{t['p90']:.2f}/{t['p99']:.2f} {i['p50']:>10.3f}/{i['p90']:.3f}/{i['p99']:.3f} "
          f"{q['p50']:>10.3f}/{q['p90']:.3f}/{q['p99']:.3f}{extra}")


def start_server(args, extra=()):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forge = os.environ.get("FORGE_BIN", str(REPO / "build" / "forge"))
    cmd = [forge, "serve", "-m", args.model, "--port", str(port), "--parallel", str(max(args.concurrency))]
    cmd += args.server_args + list(extra)
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


def main_shared_prefix(args, headers):
    text = args.prefix_text or str(Path(os.environ.get("FORGE_SHARED", REPO / ".." / "shared")) / "text" / "stories-a.txt")
    modes = [("cache", ()), ("no cache", ("--no-prefix-cache",))] if args.ab_prefix_cache else [("", ())]
    runs = {}
    for name, extra in modes:
        proc, url = (start_server(args, extra) if args.model else (None, args.url))
        try:
            system, n_sys = system_prompt(url, headers, args.shared_prefix, text)
            if name:
                print(f"== {name}: forge serve {' '.join(args.server_args + list(extra))}")
            print(f"shared system prompt: {n_sys} tokens (rendered); {args.max_tokens} tokens per answer")
            print_header(f" {'cached/prompt tokens':>22}")
            runs[name] = shared_prefix_run(url, headers, args, system, n_sys)
            for r in runs[name]:
                print_row(r, f" {r['cached_tokens_mean']:>10}/{r['prompt_tokens_mean']}")
        finally:
            if proc:
                proc.terminate()
                proc.wait(60)
    out = {"mode": "shared_prefix", "shared_prefix_tokens": args.shared_prefix, "max_tokens": args.max_tokens,
           "runs": runs}
    if args.ab_prefix_cache:
        cmp = []
        for a, b in zip(runs["cache"], runs["no cache"]):
            same = sum(1 for x, y in zip(a["outputs"], b["outputs"]) if x and y and x["text"] == y["text"])
            ratio = b["ttft_ms"]["p50"] / a["ttft_ms"]["p50"] if a["ttft_ms"]["p50"] > 0 else float("nan")
            cmp.append({"concurrency": a["concurrency"], "identical_outputs": same, "requests": a["requests"],
                        "ttft_p50_ratio": round(ratio, 2),
                        "tokens_per_s_ratio": round(a["tokens_per_s"] / b["tokens_per_s"], 2)})
            print(f"concurrency {a['concurrency']}: TTFT p50 {b['ttft_ms']['p50']:.1f} ms without the cache, "
                  f"{a['ttft_ms']['p50']:.1f} ms with it ({ratio:.1f}x lower); tokens/s {a['tokens_per_s']:.1f} vs "
                  f"{b['tokens_per_s']:.1f}; identical outputs {same}/{a['requests']}")
        out["comparison"] = cmp
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


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
    ap.add_argument("--prompt-tokens", type=int, default=0, metavar="N",
                    help="send prompts of N token ids (ids 50..449, valid in any vocabulary of 450 or "
                         "more; each request its own, so the prefix cache shares nothing) instead of "
                         "--prompt: a fixed prompt length whatever the tokenizer")
    ap.add_argument("--api-key", default=os.environ.get("FORGE_API_KEY"))
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--shared-prefix", type=int, default=0, metavar="N",
                    help="chat workload: an N-token system prompt shared by all requests, each with its "
                         "own user message; --requests defaults to the concurrency (one per user)")
    ap.add_argument("--prefix-text", help="text the system prompt is cut from (default: "
                    "$FORGE_SHARED/text/stories-a.txt)")
    ap.add_argument("--ab-prefix-cache", action="store_true",
                    help="with --model and --shared-prefix: run with and without --no-prefix-cache and compare")
    args = ap.parse_args()
    if not args.url and not args.model:
        ap.error("give --url or --model")
    if args.ab_prefix_cache and not (args.model and args.shared_prefix):
        ap.error("--ab-prefix-cache needs --model and --shared-prefix")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.shared_prefix:
        return main_shared_prefix(args, headers)
    proc = None
    if args.model:
        proc, args.url = start_server(args)
    prompt = [50 + (i * 37) % 400 for i in range(args.prompt_tokens)] if args.prompt_tokens > 0 else args.prompt
    body = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    n_sent = itertools.count()

    def token_request(i):
        # --prompt-tokens: every request its own ids (ids 50..449, the first two from a request
        # counter), so that the prefix cache shares nothing and each prompt is prefilled
        k = next(n_sent)
        ids = [50 + (j * 37 + k * 101) % 400 for j in range(args.prompt_tokens)]
        ids[0] = 50 + k % 400
        if len(ids) > 1:
            ids[1] = 50 + (k // 400) % 400
        return "/v1/completions", {**body, "prompt": ids}

    make = token_request if args.prompt_tokens > 0 else None
    try:
        one_stream(args.url, {**body, "max_tokens": 8}, headers)  # warm-up
        results = []
        print_header(f" {'gpu%':>5}")
        for c in args.concurrency:
            util = GpuUtil()
            r = run_level(args.url, c, args.requests or 4 * c, body, headers, make)
            r["gpu_util_pct"] = util.stop()
            r.pop("outputs")
            results.append(r)
            print_row(r, f" {r['gpu_util_pct'] if r['gpu_util_pct'] is not None else '-':>5}")
        out = {"url": args.url, "max_tokens": args.max_tokens, "prompt": prompt, "levels": results}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
