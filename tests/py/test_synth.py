"""test_synth.py - `forge synth`: tiny presets of every architecture in several weight types
load in `forge info` with llama.cpp's tensor names and shapes; weights are not constant; the
output is deterministic per seed; --vocab-from copies the tokenizer; block-size fallbacks and
bad options behave."""
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_gguf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORGE = os.environ.get("FORGE_BIN", str(ROOT / "build" / "forge"))
SHARED = pathlib.Path(os.environ.get("FORGE_SHARED", str(ROOT.parent / "shared")))
if not SHARED.is_absolute():
    SHARED = (ROOT / SHARED).resolve()

TYPE_ID = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_k": 12, "q6_k": 14, "mxfp4": 39}
ARCHS = ["llama", "qwen2", "qwen3", "glm4"]


def synth(out, *args):
    r = subprocess.run([FORGE, "synth", "-o", str(out)] + [str(a) for a in args],
                       capture_output=True, timeout=120)
    return r


def info(path):
    r = subprocess.run([FORGE, "info", "-m", str(path)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode("utf-8", "replace")


def expected_tensors(arch, n_layer, tied):
    names = {"token_embd.weight", "output_norm.weight"}
    if not tied:
        names.add("output.weight")
    for i in range(n_layer):
        p = "blk.%d." % i
        names |= {p + n for n in ["attn_norm.weight", "attn_q.weight", "attn_k.weight",
                                  "attn_v.weight", "attn_output.weight", "ffn_norm.weight",
                                  "ffn_up.weight", "ffn_down.weight"]}
        if arch != "glm4":
            names.add(p + "ffn_gate.weight")
        if arch in ("qwen2", "glm4"):
            names |= {p + "attn_q.bias", p + "attn_k.bias", p + "attn_v.bias"}
        if arch == "qwen3":
            names |= {p + "attn_q_norm.weight", p + "attn_k_norm.weight"}
        if arch == "glm4":
            names |= {p + "post_attention_norm.weight", p + "post_ffw_norm.weight"}
    return names


def decode_floats(t):
    if t["type"] == 0:
        return np.frombuffer(t["data"], dtype="<f4")
    if t["type"] == 1:
        return np.frombuffer(t["data"], dtype="<f2").astype(np.float32)
    if t["type"] == 30:
        u = np.frombuffer(t["data"], dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32)
    return None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("wtype", list(TYPE_ID))
def test_synth_tiny(tmp_path, arch, wtype):
    out = tmp_path / ("tiny-%s-%s.gguf" % (arch, wtype))
    r = synth(out, "--preset", "tiny-" + arch, "--type", wtype, "--seed", 7)
    assert r.returncode == 0, r.stderr.decode()
    text = info(out)
    assert "architecture: %s\n" % arch in text
    kv, tensors = hostile_gguf.read_gguf(out)
    tied = arch in ("qwen2", "qwen3")
    names = {t["name"] for t in tensors}
    assert names == expected_tensors(arch, 2, tied)
    assert "tensors: %d\n" % len(tensors) in text
    assert kv["general.architecture"] == arch
    assert kv["%s.block_count" % arch] == 2
    assert kv["%s.embedding_length" % arch] == 256
    n_vocab = len(kv["tokenizer.ggml.tokens"])
    assert kv["%s.vocab_size" % arch] == n_vocab == 1024
    assert len(kv["tokenizer.ggml.scores"]) == len(kv["tokenizer.ggml.token_type"]) == n_vocab
    assert kv["tokenizer.ggml.model"] == "llama"
    head_dim = 128 if arch == "qwen3" else 64
    rot = head_dim // 2 if arch == "glm4" else head_dim
    assert kv["%s.rope.dimension_count" % arch] == rot
    if arch == "qwen3":
        assert kv["qwen3.attention.key_length"] == kv["qwen3.attention.value_length"] == 128
    by = {t["name"]: t for t in tensors}
    assert by["token_embd.weight"]["dims"] == [256, n_vocab]
    assert by["blk.0.attn_q.weight"]["dims"] == [256, 4 * head_dim]
    assert by["blk.0.attn_k.weight"]["dims"] == [256, 2 * head_dim]
    assert by["blk.0.attn_output.weight"]["dims"] == [4 * head_dim, 256]
    assert by["blk.1.ffn_down.weight"]["dims"] == [512, 256]
    assert by["blk.0.ffn_up.weight"]["dims"] == [256, 1024 if arch == "glm4" else 512]
    for t in tensors:
        if len(t["dims"]) == 1:
            assert t["type"] == 0, t["name"]  # norms and biases stay F32
        else:
            assert t["type"] == TYPE_ID[wtype], t["name"]
        data = t["data"]
        assert len(data) == t["size"] > 0
        assert len(set(data[:4096])) > 8, "%s looks constant" % t["name"]
        f = decode_floats(t)
        if f is not None:
            assert np.all(np.isfinite(f))
            assert f.std() > 0.01, t["name"]
    norm = decode_floats(by["blk.0.attn_norm.weight"])
    assert abs(norm.mean() - 1.0) < 0.02 and 0.03 < norm.std() < 0.07
    assert decode_floats(by["output_norm.weight"]).mean() > 3.0
    w = decode_floats(by["blk.0.ffn_down.weight"])
    if w is not None:  # std 1.28 / sqrt(n_in = 512)
        assert abs(w.std() - 1.28 / np.sqrt(512)) < 0.005
        assert abs(w.mean()) < 0.005


def test_synth_deterministic_and_seeded(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    assert synth(a, "--preset", "tiny-llama", "--type", "q4_k", "--seed", 3, "--threads", 1).returncode == 0
    assert synth(b, "--preset", "tiny-llama", "--type", "q4_k", "--seed", 3, "--threads", 2).returncode == 0
    assert synth(c, "--preset", "tiny-llama", "--type", "q4_k", "--seed", 4).returncode == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_synth_vocab_from(tmp_path):
    out = tmp_path / "v.gguf"
    src = SHARED / "models" / "stories260K.gguf"
    r = synth(out, "--arch", "qwen2", "--n-embd", 64, "--n-head", 4, "--n-head-kv", 2,
              "--n-ff", 128, "--vocab-from", src)
    assert r.returncode == 0, r.stderr.decode()
    kv, tensors = hostile_gguf.read_gguf(out)
    skv, _ = hostile_gguf.read_gguf(src)
    for k, v in skv.items():
        if k.startswith("tokenizer."):
            assert kv[k] == v, k
    by = {t["name"]: t for t in tensors}
    assert by["token_embd.weight"]["dims"] == [64, 512]
    assert kv["qwen2.vocab_size"] == 512
    assert kv["qwen2.rope.dimension_count"] == 16
    assert "qwen2.attention.key_length" not in kv


def test_synth_block_fallback(tmp_path):
    out = tmp_path / "f.gguf"
    # n_embd 320 is not a multiple of 256: rows of 320 fall back to q5_0, as llama.cpp does
    r = synth(out, "--arch", "llama", "--n-embd", 320, "--n-head", 5, "--n-head-kv", 5,
              "--n-ff", 512, "--type", "q4_k")
    assert r.returncode == 0, r.stderr.decode()
    assert b"stored as q5_0" in r.stderr
    _, tensors = hostile_gguf.read_gguf(out)
    by = {t["name"]: t for t in tensors}
    assert by["blk.0.attn_q.weight"]["type"] == 6   # q5_0: rows of 320
    assert by["blk.0.ffn_down.weight"]["type"] == 12  # q4_k: rows of 512
    # rows of 48 are not a multiple of 32 either: f16
    r = synth(out, "--arch", "llama", "--n-embd", 48, "--n-head", 2, "--n-head-kv", 1,
              "--n-ff", 64, "--type", "q8_0")
    assert r.returncode == 0, r.stderr.decode()
    _, tensors = hostile_gguf.read_gguf(out)
    by = {t["name"]: t for t in tensors}
    assert by["blk.0.attn_q.weight"]["type"] == 1
    assert by["blk.0.ffn_down.weight"]["type"] == 8


def test_synth_v2(tmp_path):
    out = tmp_path / "v2.gguf"
    assert synth(out, "--preset", "tiny-glm4", "--gguf-version", 2).returncode == 0
    assert "gguf version: 2" in info(out)


@pytest.mark.parametrize("args,code,msg", [
    (["--preset", "nope"], 1, "unknown preset 'nope'"),
    (["--preset", "tiny-llama", "--type", "q9_9"], 1, "unknown weight type 'q9_9'"),
    (["--arch", "gpt5"], 1, "unknown architecture 'gpt5'"),
    (["--arch", "llama", "--n-head", 4, "--n-head-kv", 3], 1, "not a multiple of n_head_kv"),
    (["--arch", "llama", "--n-vocab", 100], 1, "smaller than the built-in vocabulary"),
    (["--arch", "llama", "--n-embd", 0], 2, "--n-embd expects an integer"),
    (["--arch", "llama", "--n-head", 0], 2, "--n-head expects an integer in [1, 1024], got '0'"),
    (["--arch", "llama", "--n-head-kv", 0], 2, "--n-head-kv expects an integer in [1, 1024], got '0'"),
    (["--arch", "llama", "--head-dim", 7], 1, "head_dim 7 must be even (rope)"),
    (["--arch", "llama", "--n-embd", 30, "--n-head", 4], 1,
     "n_embd 30 is not a multiple of n_head 4 (give --head-dim)"),
    (["--arch", "llama", "--n-head", 4, "--n-head-kv", 8], 1, "n_head 4 is not a multiple of n_head_kv 8"),
    (["--arch", "llama", "--bogus"], 2, "unknown or incomplete option '--bogus'"),
    ([], 2, "give --preset NAME or --arch ARCH"),
])
def test_synth_errors(tmp_path, args, code, msg):
    out = tmp_path / "e.gguf"
    r = synth(out, *args)
    assert r.returncode == code
    err = r.stderr.decode()
    assert msg in err
    assert len(err.splitlines()) == 1 and err.startswith("forge synth: "), err
    assert not out.exists()


def test_synth_help():
    r = subprocess.run([FORGE, "synth", "--help"], capture_output=True)
    assert r.returncode == 0 and b"--preset" in r.stdout and b"llama3-8b" in r.stdout


@pytest.mark.parametrize("arch", ARCHS)
def test_synth_model_tokenizes_and_runs(tmp_path, arch):
    # The built-in vocabulary padded to the preset's n_vocab must stay loadable (unique
    # padding tokens), and every architecture's synthetic model must run end to end.
    out = tmp_path / ("run-%s.gguf" % arch)
    assert synth(out, "--preset", "tiny-" + arch, "--type", "q8_0", "--seed", 3).returncode == 0
    r = subprocess.run([FORGE, "tokenize", "-m", str(out), "-p", "Once upon a time"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    ids = [int(x) for x in r.stdout.split()]
    assert ids[0] == 1 and len(ids) >= 3
    r = subprocess.run([FORGE, "run", "-m", str(out), "-p", "Once upon a time", "-n", "8",
                        "--temp", "0", "--ids", "--threads", "2"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    gen = [int(x) for x in r.stdout.split()]
    assert 1 <= len(gen) <= 8
    assert all(0 <= t < 1024 for t in gen)
