"""test_model_files.py - valid GGUF files that are inconsistent models: a small synth llama
(f32, 1 layer) is rewritten with one thing wrong (key missing, of the wrong type or out of
range; heads that don't divide; tensor missing or of the wrong shape/type; tokenizer arrays of
different lengths; NaN in a norm; rope factors of 0) and `forge run` must exit 1 with one
line naming the key or tensor, never crash; a model that disagrees with itself (tensors beyond
block_count, another architecture's tensors, tensors no layer reads, rope.dimension_count 0,
NaN/inf in any weight including quantized block scales, token types out of range) likewise.
Also: files the loader must accept (rope_freqs,
no-BOS vocabularies, out-of-range special ids falling back as llama.cpp does) and a few
`forge run` prompt/context edge cases on the same model. FORGE_BIN, FORGE_SHARED."""
import copy
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_gguf as hg  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("FORGE_BIN", str(REPO / "build" / "forge"))
A = "llama."


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    p = d / "small.gguf"
    r = subprocess.run([BIN, "synth", "-o", str(p), "--arch", "llama", "--type", "f32",
                        "--n-embd", "32", "--n-layer", "1", "--n-ff", "64", "--n-head", "4",
                        "--n-head-kv", "2", "--n-vocab", "894", "--ctx", "64"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kvs, ts = hg.read_typed(p)
    return d, kvs, ts


def setkv(kvs, key, t, v):
    for e in kvs:
        if e[0] == key:
            e[1], e[2] = t, v
            return
    kvs.append([key, t, v])


def delkv(kvs, key):
    kvs[:] = [e for e in kvs if e[0] != key]


def tensor(ts, name):
    return [t for t in ts if t["name"] == name][0]


def f32(n, v):
    return struct.pack("<%df" % n, *([v] * n))


def reshape(name, dims):
    def f(k, ts):
        t = tensor(ts, name)
        t["dims"] = dims
        n = 1
        for x in dims:
            n *= x
        t["data"] = f32(n, 0.5)
    return f


def add_rope_freqs(n, v):
    return lambda k, ts: ts.append(dict(name="rope_freqs.weight", dims=[n], type=0, data=f32(n, v)))


def nan_norm(k, ts):
    tensor(ts, "blk.0.ffn_norm.weight")["data"] = f32(31, 1.0) + f32(1, float("nan"))


def q8_norm(k, ts):
    t = tensor(ts, "blk.0.attn_norm.weight")
    t["type"], t["data"] = 8, b"\0" * 34


def longer_vocab(k, ts):
    e = [x for x in k if x[0] == "tokenizer.ggml.tokens"][0]
    e[2] = (hg.STR, e[2][1] + [b"extra%d" % i for i in range(6)])


def to_qwen2(k, ts, biases):
    """The llama file as qwen2 (the same tensors) with the given layer-0 biases (name[:len])."""
    setkv(k, "general.architecture", hg.STR, "qwen2")
    for e in list(k):
        if e[0].startswith("llama."):
            setkv(k, "qwen2." + e[0][6:], e[1], e[2])
    for b in biases:
        name, _, n = b.partition(":")
        n = int(n) if n else (32 if name == "attn_q.bias" else 16)
        ts.append(dict(name="blk.0." + name, dims=[n], type=0, data=f32(n, 0.25)))


def no_output(k, ts):
    ts.remove(tensor(ts, "output.weight"))


def extra_tensor(name, n):
    return lambda k, ts: ts.append(dict(name=name, dims=[n], type=0, data=f32(n, 1.0)))


def second_block(k, ts):
    """blk.1.* copies of blk.0.* while block_count stays 1."""
    for t in [t for t in ts if t["name"].startswith("blk.0.")]:
        ts.append(dict(t, name="blk.1." + t["name"][6:]))


def token_type(i, v):
    def f(k, ts):
        e = [x for x in k if x[0] == "tokenizer.ggml.token_type"][0]
        types = list(e[2][1])
        types[i] = v
        e[2] = (hg.I32, types)
    return f


def nan_matrix(k, ts):
    t = tensor(ts, "blk.0.ffn_down.weight")
    t["data"] = t["data"][:4 * 100] + struct.pack("<f", float("nan")) + t["data"][4 * 101:]


# (name, mutation, message after "<path>: ")
REFUSED = [
    ("no_ctx", lambda k, t: delkv(k, A + "context_length"), "key 'llama.context_length' not found"),
    ("no_eps", lambda k, t: delkv(k, A + "attention.layer_norm_rms_epsilon"),
     "key 'llama.attention.layer_norm_rms_epsilon' not found"),
    ("n_head_0", lambda k, t: setkv(k, A + "attention.head_count", hg.U32, 0),
     "key 'llama.attention.head_count': expected a value in [1, 65536], found 0"),
    ("n_head_kv_0", lambda k, t: setkv(k, A + "attention.head_count_kv", hg.U32, 0),
     "key 'llama.attention.head_count_kv': expected a value in [1, 65536], found 0"),
    ("n_head_kv_3", lambda k, t: setkv(k, A + "attention.head_count_kv", hg.U32, 3),
     "llama.attention.head_count (4) is not a multiple of llama.attention.head_count_kv (3)"),
    ("n_head_3", lambda k, t: setkv(k, A + "attention.head_count", hg.U32, 3),
     "llama.attention.head_count (3) is not a multiple of llama.attention.head_count_kv (2)"),
    ("n_head_not_dividing_embd", lambda k, t: [setkv(k, A + "attention.head_count", hg.U32, 3),
                                                setkv(k, A + "attention.head_count_kv", hg.U32, 3)],
     "llama.embedding_length (32) is not a multiple of llama.attention.head_count (3)"),
    ("key_length_0", lambda k, t: setkv(k, A + "attention.key_length", hg.U32, 0),
     "key 'llama.attention.key_length': expected a value in [1, 512], found 0"),
    ("key_length_1024", lambda k, t: setkv(k, A + "attention.key_length", hg.U32, 1024),
     "key 'llama.attention.key_length': expected a value in [1, 512], found 1024"),
    ("head_size_1024", lambda k, t: [setkv(k, A + "embedding_length", hg.U32, 1024),
                                     setkv(k, A + "attention.head_count", hg.U32, 1),
                                     setkv(k, A + "attention.head_count_kv", hg.U32, 1)],
     "head size llama.embedding_length / llama.attention.head_count = 1024 exceeds the supported 512"),
    ("key_length_16", lambda k, t: setkv(k, A + "attention.key_length", hg.U32, 16),
     "tensor 'blk.0.attn_q.weight': expected shape [32, 64], found [32, 32]"),
    ("rot_odd", lambda k, t: setkv(k, A + "rope.dimension_count", hg.U32, 7),
     "llama.rope.dimension_count: expected an even number, found 7"),
    ("rot_gt_head", lambda k, t: setkv(k, A + "rope.dimension_count", hg.U32, 16),
     "key 'llama.rope.dimension_count': expected a value in [0, 8], found 16"),
    ("embd_mismatch", lambda k, t: setkv(k, A + "embedding_length", hg.U32, 64),
     "tensor 'token_embd.weight': expected shape [64, 894], found [32, 894]"),
    ("n_layer_0", lambda k, t: setkv(k, A + "block_count", hg.U32, 0),
     "key 'llama.block_count': expected a value in [1, 4096], found 0"),
    ("n_layer_1e9", lambda k, t: setkv(k, A + "block_count", hg.U32, 10 ** 9),
     "key 'llama.block_count': expected a value in [1, 4096], found 1000000000"),
    ("n_layer_2", lambda k, t: setkv(k, A + "block_count", hg.U32, 2),
     "tensor 'blk.1.attn_norm.weight' not found"),
    ("block_count_str", lambda k, t: setkv(k, A + "block_count", hg.STR, "1"),
     "key 'llama.block_count': expected an integer, found string"),
    ("block_count_f32", lambda k, t: setkv(k, A + "block_count", hg.F32, 1.0),
     "key 'llama.block_count': expected an integer, found float32"),
    ("ctx_0", lambda k, t: setkv(k, A + "context_length", hg.U32, 0),
     "key 'llama.context_length': expected a value in [1, 2147483647], found 0"),
    ("vocab_size", lambda k, t: setkv(k, A + "vocab_size", hg.U32, 5),
     "vocabulary size mismatch: the tokenizer has 894 tokens, 'llama.vocab_size' is 5"),
    ("eps_neg", lambda k, t: setkv(k, A + "attention.layer_norm_rms_epsilon", hg.F32, -1.0),
     "key 'llama.attention.layer_norm_rms_epsilon': expected a value in (0, 1), found -1"),
    ("eps_nan", lambda k, t: setkv(k, A + "attention.layer_norm_rms_epsilon", hg.F32, float("nan")),
     "key 'llama.attention.layer_norm_rms_epsilon': expected a finite number, found nan"),
    ("base_0", lambda k, t: setkv(k, A + "rope.freq_base", hg.F32, 0.0),
     "key 'llama.rope.freq_base': expected a positive number, found 0"),
    ("base_inf", lambda k, t: setkv(k, A + "rope.freq_base", hg.F32, float("inf")),
     "key 'llama.rope.freq_base': expected a finite number, found inf"),
    ("scale_neg", lambda k, t: setkv(k, A + "rope.scaling.factor", hg.F32, -2.0),
     "llama.rope.scaling.factor: expected >= 0, found -2"),
    ("yarn", lambda k, t: setkv(k, A + "rope.scaling.type", hg.STR, "yarn"),
     "llama.rope.scaling.type 'yarn' is not supported (none, linear)"),
    ("moe", lambda k, t: setkv(k, A + "expert_count", hg.U32, 8),
     "llama.expert_count = 8: mixture-of-experts models are not supported"),
    ("arch", lambda k, t: setkv(k, "general.architecture", hg.STR, "gpt9"),
     "unsupported architecture 'gpt9' (supported: llama, qwen2, qwen3, glm4, bert, nomic-bert)"),
    ("arch_u32", lambda k, t: setkv(k, "general.architecture", hg.U32, 1),
     "key 'general.architecture': expected string, found uint32"),
    ("no_tokens", lambda k, t: delkv(k, "tokenizer.ggml.tokens"), "key 'tokenizer.ggml.tokens' not found"),
    ("scores_short", lambda k, t: setkv(k, "tokenizer.ggml.scores", hg.ARR, (hg.F32, [0.0] * 10)),
     "key 'tokenizer.ggml.scores': expected 894 scores, found 10"),
    ("types_short", lambda k, t: setkv(k, "tokenizer.ggml.token_type", hg.ARR, (hg.I32, [1] * 10)),
     "key 'tokenizer.ggml.token_type': expected 894 token types, found 10"),
    ("tokens_longer", longer_vocab, "key 'tokenizer.ggml.scores': expected 900 scores, found 894"),
    ("bos_str", lambda k, t: setkv(k, "tokenizer.ggml.bos_token_id", hg.STR, "1"),
     "key 'tokenizer.ggml.bos_token_id': expected an integer, found string"),
    ("no_embd", lambda k, t: t.remove(tensor(t, "token_embd.weight")), "tensor 'token_embd.weight' not found"),
    ("no_gate", lambda k, t: t.remove(tensor(t, "blk.0.ffn_gate.weight")),
     "tensor 'blk.0.ffn_gate.weight' not found"),
    ("q_shape", reshape("blk.0.attn_q.weight", [32, 16]),
     "tensor 'blk.0.attn_q.weight': expected shape [32, 32], found [32, 16]"),
    ("k_transposed", reshape("blk.0.attn_k.weight", [16, 32]),
     "tensor 'blk.0.attn_k.weight': expected shape [32, 16], found [16, 32]"),
    ("norm_2d", reshape("blk.0.attn_norm.weight", [16, 2]),
     "tensor 'blk.0.attn_norm.weight': expected shape [32], found [16, 2]"),
    ("embd_rows", reshape("token_embd.weight", [32, 893]),
     "vocabulary size mismatch: the tokenizer has 894 tokens, 'token_embd.weight' has 893 rows"),
    ("output_rows", reshape("output.weight", [32, 10]),
     "tensor 'output.weight': expected shape [32, 894], found [32, 10]"),
    ("norm_q8_0", q8_norm, "tensor 'blk.0.attn_norm.weight': expected type f32, found q8_0"),
    ("norm_nan", nan_norm, "tensor 'blk.0.ffn_norm.weight': element 31 is nan, expected a finite number"),
    ("rope_freqs_len", add_rope_freqs(3, 1.0), "tensor 'rope_freqs.weight': expected shape [4], found [3]"),
    ("rope_freqs_0", add_rope_freqs(4, 0.0),
     "tensor 'rope_freqs.weight': element 0 is 0, expected a positive finite number"),
    ("qwen2_one_bias", lambda k, t: to_qwen2(k, t, ["attn_k.bias"]), "tensor 'blk.0.attn_q.bias' not found"),
    # a model that disagrees with itself
    ("rot_0", lambda k, t: setkv(k, A + "rope.dimension_count", hg.U32, 0),
     "key 'llama.rope.dimension_count' is 0: expected an even number in [2, 8] (the head size)"),
    ("blocks_beyond_count", second_block,
     "tensor 'blk.1.attn_norm.weight' belongs to block 1, but llama.block_count is 1"),
    ("qwen3_tensor_in_llama", extra_tensor("blk.0.attn_q_norm.weight", 8),
     "tensor 'blk.0.attn_q_norm.weight' is not used by architecture 'llama' (it is qwen3's): "
     "the file's general.architecture and its tensors disagree"),
    ("glm4_tensor_in_llama", extra_tensor("blk.0.post_ffw_norm.weight", 32),
     "tensor 'blk.0.post_ffw_norm.weight' is not used by architecture 'llama' (it is glm4's): "
     "the file's general.architecture and its tensors disagree"),
    ("unused_layer_tensor", extra_tensor("blk.0.ffn_extra.weight", 32),
     "tensor 'blk.0.ffn_extra.weight' is not used by architecture 'llama' (nor on its list of "
     "optional tensors): a model with tensors no layer reads is refused"),
    ("unused_global_tensor", extra_tensor("pos_embd.weight", 32),
     "tensor 'pos_embd.weight' is not used by architecture 'llama' (nor on its list of "
     "optional tensors): a model with tensors no layer reads is refused"),
    ("nan_in_matrix", nan_matrix,
     "tensor 'blk.0.ffn_down.weight': element 100 is nan: a model with non-finite weights is refused"),
    ("token_type_7", token_type(5, 7),
     "key 'tokenizer.ggml.token_type': token 5 has type 7, expected 0..6 (undefined, normal, "
     "unknown, control, user-defined, unused, byte)"),
    ("token_type_neg", token_type(0, -1),
     "key 'tokenizer.ggml.token_type': token 0 has type -1, expected 0..6 (undefined, normal, "
     "unknown, control, user-defined, unused, byte)"),
    ("qwen2_bias_shape", lambda k, t: to_qwen2(k, t, ["attn_q.bias", "attn_v.bias", "attn_k.bias:32"]),
     "tensor 'blk.0.attn_k.bias': expected shape [16], found [32]"),
]


def write(base, name, mutate):
    d, kvs, ts = base
    kvs, ts = copy.deepcopy(kvs), copy.deepcopy(ts)
    mutate(kvs, ts)
    p = d / (name + ".gguf")
    p.write_bytes(hg.rebuild(kvs, ts))
    return p


def forge_run(*args):  # --device cpu: no "no usable GPU" notice line before the one-line error
    return subprocess.run([BIN, "run", "--device", "cpu", *map(str, args)], capture_output=True, timeout=60)


@pytest.mark.parametrize("name,mutate,msg", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(base, name, mutate, msg):
    p = write(base, name, mutate)
    r = forge_run("-m", p, "-p", "hello", "-n", "2", "--temp", "0")
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    assert r.stdout == b""
    assert err == "forge run: %s: %s\n" % (p, msg)


ACCEPTED = [
    ("unchanged", lambda k, t: None, 5),
    ("tied", no_output, 5),
    ("rope_freqs", add_rope_freqs(4, 2.0), 5),
    ("no_bos", lambda k, t: setkv(k, "tokenizer.ggml.add_bos_token", hg.BOOL, 0), 4),
    # llama.cpp keeps the default id when a special id is out of range
    ("bos_out_of_range", lambda k, t: setkv(k, "tokenizer.ggml.bos_token_id", hg.U32, 100000), 5),
    ("eos_negative", lambda k, t: setkv(k, "tokenizer.ggml.eos_token_id", hg.I32, -5), 5),
    ("qwen2_no_biases", lambda k, t: to_qwen2(k, t, []), 5),
    ("qwen2_biases", lambda k, t: to_qwen2(k, t, ["attn_q.bias", "attn_k.bias", "attn_v.bias"]), 5),
    ("ctx_2_31", lambda k, t: setkv(k, A + "context_length", hg.U32, 2 ** 31 - 1), 5),
]


@pytest.mark.parametrize("name,mutate,n_prompt", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted(base, name, mutate, n_prompt):
    p = write(base, name, mutate)
    r = forge_run("-m", p, "-p", "hello world", "-n", "3", "--temp", "0", "--ids")
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()]
    assert len(ids) == 3 and all(0 <= i < 894 for i in ids)
    assert ("prompt %d tokens" % n_prompt) in r.stderr.decode()


def test_nonfinite_weights_refused_at_load(base):
    # an infinite embedding used to surface only as non-finite logits at the first step
    def inf_embd(k, ts):
        tensor(ts, "token_embd.weight")["data"] = f32(32 * 894, float("inf"))
    p = write(base, "inf_embd", inf_embd)
    r = forge_run("-m", p, "-p", "hello", "-n", "2", "--temp", "0")
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode() == (f"forge run: {p}: tensor 'token_embd.weight': element 0 is inf: "
                                 "a model with non-finite weights is refused\n")


# weight type -> (synth --type, block bytes, byte offset of the first f16 scale, elements per
# unit): a NaN/inf put into one block's scale (or one element) of blk.0.attn_q.weight
SCALE_CASES = [
    ("f16", "f16", 2, 0, 1, "element 300 is inf", 0x7C00),
    ("bf16", "bf16", 2, 0, 1, "element 300 is nan", 0x7FC1),
    ("q8_0", "q8_0", 34, 0, 32, "block 300 (elements 9600..9631) has scale d = nan", 0x7E00),
    ("q4_0", "q4_0", 18, 0, 32, "block 300 (elements 9600..9631) has scale d = -inf", 0xFC00),
    ("q4_k_dmin", "q4_k", 144, 2, 256, "block 30 (elements 7680..7935) has scale dmin = inf", 0x7C00),
    ("q6_k", "q6_k", 210, 208, 256, "block 30 (elements 7680..7935) has scale d = nan", 0x7E00),
]


@pytest.mark.parametrize("name,stype,bb,off,per,msg,bits", SCALE_CASES, ids=[c[0] for c in SCALE_CASES])
def test_nonfinite_quantized_weights_refused(tmp_path, name, stype, bb, off, per, msg, bits):
    src = tmp_path / "m.gguf"
    r = subprocess.run([BIN, "synth", "-o", str(src), "--arch", "llama", "--type", stype,
                        "--n-embd", "256", "--n-layer", "1", "--n-ff", "512", "--n-head", "4",
                        "--n-vocab", "894", "--ctx", "64", "--seed", "3"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kvs, ts = hg.read_typed(src)
    t = tensor(ts, "blk.0.attn_q.weight")
    unit = 300 if per in (1, 32) else 30
    at = unit * bb + off
    t["data"] = t["data"][:at] + struct.pack("<H", bits) + t["data"][at + 2:]
    p = tmp_path / (name + ".gguf")
    p.write_bytes(hg.rebuild(kvs, ts))
    ok = forge_run("-m", src, "-p", "hello", "-n", "1", "--temp", "0")
    assert ok.returncode == 0, ok.stderr  # the unchanged file loads
    r = forge_run("-m", p, "-p", "hello", "-n", "1", "--temp", "0")
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode() == (f"forge run: {p}: tensor 'blk.0.attn_q.weight': {msg}: a model "
                                 "with non-finite weights is refused\n")


def test_prompt_at_context_edges(base):
    p = write(base, "edges", lambda k, t: None)
    # "hello world foo" is 7 tokens with BOS
    r = forge_run("-m", p, "-p", "hello world foo", "-c", "6", "-n", "2")
    assert r.returncode == 1
    assert r.stderr.decode() == ("forge run: the prompt has 7 tokens, more than the context "
                                 "(6; see --ctx)\n")
    # exactly full: one token comes from the last prompt position, then the context is full
    r = forge_run("-m", p, "-p", "hello world foo", "-c", "7", "-n", "5", "--temp", "0", "--ids")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 1
    assert "context full (7 tokens)" in r.stderr.decode()
    # a prompt over many KV pages (16 tokens each), prefilled in chunks, then generation
    text = "the quick brown fox jumps over the lazy dog. " * 40
    r = forge_run("-m", p, "-p", text, "-c", "2048", "-n", "3", "--temp", "0", "--ids")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 3
