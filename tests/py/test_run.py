"""`forge run` from the command line: greedy output of stories260K equals llama.cpp's golden
text, ids mode, -n 0, empty prompt, seeded sampling, and bad inputs (one-line error, exit 1 or
2, never a crash); plus a `forge bench --json` smoke test (no timing asserted). Finds the binary
through FORGE_BIN and the data through FORGE_SHARED."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_shared = Path(os.environ.get("FORGE_SHARED", "../shared"))
SHARED = _shared if _shared.is_absolute() else (REPO / _shared).resolve()
BIN = os.environ.get("FORGE_BIN", str(REPO / "build" / "forge"))
STORIES = SHARED / "models" / "stories260K.gguf"


def golden():
    path = SHARED / "golden" / "stories260K.json"
    assert path.exists(), f"missing {path} (FORGE_SHARED)"
    return json.loads(path.read_text())


# --device cpu first (a later --device wins): these tests check messages, and `--device auto` on a
# machine without a usable GPU adds a notice line to stderr
def run(*args, inp=None, timeout=60):
    return subprocess.run([BIN, "run", "--device", "cpu", *map(str, args)], capture_output=True, timeout=timeout,
                          input=inp)


def one_line_error(p, code):
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("forge run: "), lines
    assert p.stdout == b""
    return lines[0]


def test_greedy_text_matches_golden():
    case = golden()["cases"][0]
    p = run("-m", STORIES, "-p", case["prompt"], "-n", 48, "--temp", 0, "-t", 2)
    assert p.returncode == 0, p.stderr
    assert p.stdout == bytes.fromhex(case["greedy_text_hex"])
    assert b"tok/s" in p.stderr


def test_greedy_ids_match_golden_all_prompts():
    for case in golden()["cases"]:
        p = run("-m", STORIES, "-p", case["prompt"], "-n", 48, "--temp", 0, "--ids")
        assert p.returncode == 0, p.stderr
        ids = [int(x) for x in p.stdout.split()]
        eog = case["first_eog_index"]
        want = case["greedy_tokens"][: eog if eog is not None else 48]
        assert ids == want


def test_prompt_from_file(tmp_path):
    case = golden()["cases"][0]
    f = tmp_path / "prompt.txt"
    f.write_text(case["prompt"])
    p = run("-m", STORIES, "-f", f, "-n", 48, "--temp", 0)
    assert p.returncode == 0, p.stderr
    assert p.stdout == bytes.fromhex(case["greedy_text_hex"])


def test_n_zero_prints_nothing():
    p = run("-m", STORIES, "-p", "Once upon a time", "-n", 0)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""


def test_empty_prompt_generates_from_bos():
    case = golden()["cases"][2]
    assert case["prompt"] == ""
    p = run("-m", STORIES, "-p", "", "-n", 48, "--temp", 0, "--ids")
    assert p.returncode == 0, p.stderr
    assert [int(x) for x in p.stdout.split()] == case["greedy_tokens"]


def test_seeded_sampling_is_reproducible():
    args = ("-m", STORIES, "-p", "Once upon a time", "-n", 32, "--temp", 0.9, "--seed", 1234)
    a, b = run(*args), run(*args)
    assert a.returncode == 0 and b.returncode == 0
    assert a.stdout == b.stdout and len(a.stdout) > 0
    c = run("-m", STORIES, "-p", "Once upon a time", "-n", 32, "--temp", 0.9, "--seed", 99,
            "--top-k", 20, "--top-p", 0.9, "--min-p", 0.02, "--repeat-penalty", 1.1)
    assert c.returncode == 0, c.stderr


def test_context_full_stops():
    p = run("-m", STORIES, "-p", "Once upon a time", "-n", 100, "--temp", 0, "--ctx", 12, "--ids")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.split()) >= 1
    assert b"context full" in p.stderr


@pytest.mark.parametrize("args,code,needle", [
    (["-p", "x", "--bogus"], 2, "unknown option '--bogus'"),
    (["-p", "x", "-n", "-5"], 2, "-n expects an integer"),
    (["-p", "x", "-n", "many"], 2, "-n expects an integer"),
    (["-p", "x", "--temp", "-1"], 2, "--temp expects a number"),
    (["-p", "x", "--top-k", "abc"], 2, "--top-k expects an integer"),
    (["-p", "x", "--ctx", "0"], 2, "--ctx expects an integer"),
    ([], 2, "give exactly one of -p PROMPT or -f FILE"),
    (["-p", "x", "-f", "y"], 2, "give exactly one of -p PROMPT or -f FILE"),
    (["-p"], 2, "-p needs a value"),
    (["-p", "x", "--device", "tpu"], 1, "unknown backend 'tpu'"),
    (["-p", "Once upon a time, there was a little", "--ctx", "4"], 1,
     "the prompt has 10 tokens, more than the context (4"),
])
def test_bad_input(args, code, needle):
    p = run("-m", STORIES, *args)
    line = one_line_error(p, code)
    assert needle in line, line


def test_missing_model_and_file():
    line = one_line_error(run("-m", "/nonexistent/model.gguf", "-p", "x"), 1)
    assert "/nonexistent/model.gguf" in line
    line = one_line_error(run("-m", STORIES, "-f", "/nonexistent/prompt.txt"), 1)
    assert "/nonexistent/prompt.txt" in line
    line = one_line_error(run("-p", "x"), 2)
    assert "-m MODEL is required" in line
    line = one_line_error(run("-m", STORIES, "-f", "/"), 1)
    assert line == "forge run: /: cannot read: Is a directory"


def test_not_a_model(tmp_path):
    f = tmp_path / "junk.gguf"
    f.write_bytes(b"GGUF" + b"\xff" * 60)
    line = one_line_error(run("-m", f, "-p", "x"), 1)
    assert str(f) in line


# `forge bench` smoke test (no timing asserted: benchmarks are not tests)
def bench(*args):
    return subprocess.run([BIN, "bench", *map(str, args)], capture_output=True, timeout=60)


def test_bench_json():
    p = bench("-m", STORIES, "-p", 8, "-n", 4, "-r", 1, "-t", 1, "--json")
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    for k in ("prefill_tok_s", "decode_tok_s", "bytes_per_token", "mem_bandwidth_gb_s",
              "decode_bound_tok_s", "decode_fraction_of_bound"):
        assert k in j and j[k] > 0, (k, j)
    # all 2-D weights (stories260K is F32, untied) plus one embedding row
    assert j["bytes_per_token"] == 1037568
    assert j["n_prompt"] == 8 and j["n_gen"] == 4 and j["threads"] == 1
    assert j["kv_type"] == "f16" and j["skip_ops"] == 0


def test_bench_kv_type():
    # synth-llama: 2 layers x 2 kv heads x head_dim 64; K and V over 0 + (4 + 1) / 2 positions
    synth = SHARED / "models" / "synth" / "synth-llama-F16.gguf"
    kvb = {}
    for kt in ("f16", "q8_0"):
        p = bench("-m", synth, "-p", 8, "-n", 4, "-r", 1, "-t", 1, "--json", "--kv-type", kt)
        assert p.returncode == 0, p.stderr
        j = json.loads(p.stdout)
        assert j["kv_type"] == kt
        kvb[kt] = j["tg"][0]["kv_bytes_per_token"]
    assert kvb["f16"] == 2 * 2 * 2 * 64 * 2 * 2.5
    assert kvb["q8_0"] == 2 * 2 * 2 * 64 * 34 / 32 * 2.5
    p = bench("-m", synth, "-p", 8, "-n", 2, "-r", 1, "-t", 1, "--kv-type", "q8_0")
    assert p.returncode == 0, p.stderr
    assert "kv cache q8_0, 0.5 KB per token" in p.stdout.decode()


def test_bench_skip_ops():
    # the ops' share (benchmarks only): the run completes, the JSON names the bits left out
    for ops, bits in (("norm", 1), ("swiglu,attn", 6), ("attn,norm,swiglu", 7)):
        p = bench("-m", STORIES, "-p", 8, "-n", 4, "-r", 1, "-t", 1, "--json", "--skip-ops", ops)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["skip_ops"] == bits
    p = bench("-m", STORIES, "-p", 0, "-n", 4, "-r", 1, "-t", 1, "--skip-ops", "norm")
    assert p.returncode == 0 and "every result is wrong" in p.stderr.decode(), p.stderr


def test_run_kv_type():
    synth = SHARED / "models" / "synth" / "synth-llama-F16.gguf"
    out = {}
    for kt in ("f16", "q8_0"):
        p = run("-m", synth, "-p", "Once upon a time", "-n", 8, "--temp", 0, "--ids", "--kv-type", kt)
        assert p.returncode == 0, p.stderr
        out[kt] = p.stdout.decode().split()
        assert len(out[kt]) == 8, out[kt]
    # the 8-bit cache moves the synthetic model's logits far less than its margins (MANIFEST:
    # median top-1 minus top-5 logit 2.89): the same greedy tokens (measured on the CPU)
    assert out["q8_0"] == out["f16"]
    line = one_line_error(run("-m", STORIES, "-p", "x", "--kv-type", "q8_0"), 1)
    assert line == (f"forge run: {STORIES}: a q8_0 KV cache stores each head's K/V row in blocks of 32, but the "
                    "model's head_dim is 8: use --kv-type f16")
    line = one_line_error(run("-m", STORIES, "-p", "x", "--kv-type", "bf16"), 2)
    assert line == "forge run: --kv-type expects f16, q8_0 or f32, got 'bf16'"


@pytest.mark.parametrize("args,needle", [
    (["-p", "x"], "-p expects an integer"),
    (["-r", "0"], "-r expects an integer"),
    (["--what"], "unknown option '--what'"),
    (["-p", "0", "-n", "0"], "nothing to measure"),
    (["--kv-type", "q4"], "forge bench: --kv-type expects f16, q8_0 or f32, got 'q4'"),
    (["--skip-ops", "norm,rope"], "forge bench: --skip-ops: unknown op 'rope' (norm, swiglu, attn)"),
    (["--skip-ops", ","], "forge bench: --skip-ops: unknown op '' (norm, swiglu, attn)"),
    (["--skip-ops", ""], "forge bench: --skip-ops: empty list"),
])
def test_bench_bad_input(args, needle):
    p = bench("-m", STORIES, *args)
    assert p.returncode == 2
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
