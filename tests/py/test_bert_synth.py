"""The encoder variants all-MiniLM-L6-v2 does not exercise, on small random-weight GGUF files
written here with the `gguf` package (llama.cpp's tensor and key names, the MiniLM WordPiece
vocabulary): nomic-bert (rotary positions NEOX with its freq_base, SwiGLU FFN, the fused
attn_qkv, no biases, mean pooling without normalisation) and bert with a fused attn_qkv and
CLS / last-token pooling; `forge embed` against the numpy reference (bert_ref.py) on the same
file: cosine >= 0.9999 per sentence in F32 (0.999 for F16 weights). Also model-check refusals
for tensors of the wrong architecture and a reranker's pooling type."""
import subprocess
import sys

import numpy as np
import pytest

import bert_ref as R
from conftest import FORGE_BIN, REPO

E, H, F, L = 64, 4, 128, 2
TEXTS = ["The cat sits on the mat.", "A much longer sentence about nothing in particular, with commas, "
         "numbers like 42 and words that are split into several pieces: unbelievably.", "x", "",
         "first [SEP] second", "東京 café"]


def write_model(path, minilm_dir, arch, fused_qkv=True, pooling=1, normalize=False, typ="f32", seed=1,
                extra_tensor=None):
    import gguf

    sys.path.insert(0, str(REPO / "scripts"))
    import convert_hf_bert as conv

    rng = np.random.default_rng(seed)
    tokens, types, ids, lower, strip = conv.read_tokenizer(minilm_dir, 30522)
    V = len(tokens)

    def rnd(*shape, s=0.2):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"token_embd.weight": rnd(V, E, s=0.5), "token_types.weight": rnd(2, E),
         "token_embd_norm.weight": 1 + rnd(E, s=0.1), "token_embd_norm.bias": rnd(E, s=0.1)}
    if arch == "bert":
        t["position_embd.weight"] = rnd(512, E, s=0.3)
    for i in range(L):
        p = f"blk.{i}."
        if fused_qkv:
            t[p + "attn_qkv.weight"] = rnd(3 * E, E)
            if arch == "bert":
                t[p + "attn_qkv.bias"] = rnd(3 * E, s=0.1)
        else:
            for k in "qkv":
                t[p + f"attn_{k}.weight"] = rnd(E, E)
                t[p + f"attn_{k}.bias"] = rnd(E, s=0.1)
        t[p + "attn_output.weight"] = rnd(E, E)
        if arch == "bert":
            t[p + "attn_output.bias"] = rnd(E, s=0.1)
        t[p + "attn_output_norm.weight"] = 1 + rnd(E, s=0.1)
        t[p + "attn_output_norm.bias"] = rnd(E, s=0.1)
        t[p + "ffn_up.weight"] = rnd(F, E)
        t[p + "ffn_down.weight"] = rnd(E, F)
        if arch == "bert":
            t[p + "ffn_up.bias"] = rnd(F, s=0.1)
            t[p + "ffn_down.bias"] = rnd(E, s=0.1)
        else:
            t[p + "ffn_gate.weight"] = rnd(F, E)
        t[p + "layer_output_norm.weight"] = 1 + rnd(E, s=0.1)
        t[p + "layer_output_norm.bias"] = rnd(E, s=0.1)
    if extra_tensor:
        t[extra_tensor] = rnd(E)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"synthetic-{arch}")
    w.add_context_length(512 if arch == "bert" else 2048)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_block_count(L)
    w.add_head_count(H)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    if pooling is not None:
        w.add_uint32(f"{arch}.pooling_type", pooling)
    if arch == "nomic-bert":
        w.add_rope_freq_base(1000.0)
    if normalize:
        w.add_bool("sentence_transformers.normalize", True)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_bos_token_id(ids["cls"])
    w.add_sep_token_id(ids["sep"])
    w.add_unk_token_id(ids["unk"])
    w.add_pad_token_id(ids["pad"])
    w.add_mask_token_id(ids["mask"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    w.add_add_eos_token(False)
    w.add_bool("tokenizer.ggml.normalizer.lowercase", lower)
    w.add_bool("tokenizer.ggml.normalizer.strip_accents", strip)
    for n, v in t.items():
        w.add_tensor(n, v.astype(np.float16) if typ == "f16" and v.ndim == 2 and "embd" not in n
                     and "types" not in n else v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def embed(path, texts, check=True):
    import json

    r = subprocess.run([str(FORGE_BIN), "embed", "-m", str(path), "--json", "--device", "cpu", "-f", "-"],
                       input="\n".join(texts) + "\n", capture_output=True, text=True, timeout=300)
    if not check:
        return r
    assert r.returncode == 0, r.stderr[-3000:]
    return np.array([json.loads(x) for x in r.stdout.splitlines()], dtype=np.float64)


CASES = [  # arch, fused qkv, pooling, normalize, weight type, min cosine
    ("nomic-bert", True, R.POOL_MEAN, False, "f32", 0.9999),
    ("nomic-bert", True, R.POOL_MEAN, True, "f16", 0.999),
    ("bert", True, R.POOL_CLS, True, "f32", 0.9999),
    ("bert", False, R.POOL_LAST, False, "f32", 0.9999),
]


@pytest.mark.parametrize("arch,fused,pooling,normalize,typ,min_cos", CASES)
def test_synthetic_encoder(tmp_path, minilm_dir, arch, fused, pooling, normalize, typ, min_cos):
    path = write_model(tmp_path / f"{arch}.gguf", minilm_dir, arch, fused, pooling, normalize, typ)
    ref = R.load_gguf(path)
    assert ref.arch == arch and ref.pooling == pooling
    want = ref.embed_many(R.tokenize_hf(minilm_dir, TEXTS))
    got = embed(path, TEXTS)
    cos = [R.cosine(a, b) for a, b in zip(got, want)]
    print(f"{arch} fused={fused} pooling={pooling} {typ}: min cosine {min(cos):.9f}, "
          f"max |diff| {np.abs(got - want).max():.2e}")
    assert got.shape == want.shape and min(cos) >= min_cos
    if normalize:
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    else:
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("arch,extra,message", [
    ("bert", "blk.0.attn_norm.weight", "tensor 'blk.0.attn_norm.weight' is not used by architecture 'bert' "
                                       "(it is llama's)"),
    ("nomic-bert", "position_embd.weight", "tensor 'position_embd.weight' is not used by architecture "
                                           "'nomic-bert' (it is bert's)"),
    ("nomic-bert", "blk.1.ffn_up.bias", "tensor 'blk.1.ffn_up.bias' is not used by architecture 'nomic-bert' "
                                        "(it is bert's)"),
])
def test_foreign_tensor_refused(tmp_path, minilm_dir, arch, extra, message):
    path = write_model(tmp_path / "m.gguf", minilm_dir, arch, extra_tensor=extra)
    r = embed(path, ["hi"], check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_rank_pooling_refused(tmp_path, minilm_dir):
    path = write_model(tmp_path / "rank.gguf", minilm_dir, "bert", pooling=4)
    r = embed(path, ["hi"], check=False)
    assert r.returncode == 1
    assert "bert.pooling_type = 4 (rank: a reranker's classification head) is not supported" in r.stderr, r.stderr
