"""scripts/convert_hf_bert.py: all-MiniLM-L6-v2 (from the PyPI package) converted to F32, F16
and Q8_0 GGUF files with llama.cpp's `bert` names (checked against the `gguf` package's own
tables and the shared llama.cpp vocabulary file), tensor types as llama.cpp chooses them,
Q8_0 bit-identical to llama.cpp's quantizer, F32 bit-identical to the safetensors, Forge
reading the files; a small random BERT for shapes and for the refusals (nomic-bert, missing
or misshapen tensors, unsupported pooling and modules)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import gguf
from safetensors.numpy import load_file, save_file

from conftest import FORGE_BIN, FORGE_SHARED, REPO
import bert_ref

sys.path.insert(0, str(REPO / "scripts"))
import convert_hf_bert as conv  # noqa: E402

SEED = 14


def fields(path):
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}, r


@pytest.mark.parametrize("typ", ["f32", "f16", "q8_0"])
def test_metadata(minilm_gguf, typ):
    kv, r = fields(minilm_gguf(typ))
    want = {
        "general.architecture": "bert", "general.name": "all-MiniLM-L6-v2",
        "general.file_type": {"f32": 0, "f16": 1, "q8_0": 7}[typ], "general.quantization_version": 2,
        "bert.context_length": 512, "bert.embedding_length": 384, "bert.feed_forward_length": 1536,
        "bert.block_count": 6, "bert.attention.head_count": 12, "bert.attention.causal": False,
        "bert.pooling_type": 1, "sentence_transformers.max_seq_length": 256,
        "sentence_transformers.normalize": True,
        "tokenizer.ggml.model": "bert", "tokenizer.ggml.pre": "default", "tokenizer.ggml.token_type_count": 2,
        "tokenizer.ggml.bos_token_id": 101, "tokenizer.ggml.cls_token_id": 101,
        "tokenizer.ggml.seperator_token_id": 102, "tokenizer.ggml.unknown_token_id": 100,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.mask_token_id": 103,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_sep_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.normalizer.lowercase": True, "tokenizer.ggml.normalizer.strip_accents": True,
    }
    for k, v in want.items():
        assert kv.get(k) == v, f"{k}: {kv.get(k)!r}, expected {v!r}"
    assert kv["bert.attention.layer_norm_epsilon"] == pytest.approx(1e-12, rel=1e-6)
    # llama.cpp's constants name these keys
    K = gguf.Keys
    for key in (K.LLM.CONTEXT_LENGTH, K.LLM.EMBEDDING_LENGTH, K.LLM.FEED_FORWARD_LENGTH, K.LLM.BLOCK_COUNT,
                K.Attention.HEAD_COUNT, K.Attention.LAYERNORM_EPS, K.Attention.CAUSAL, K.LLM.POOLING_TYPE):
        assert key.format(arch="bert") in kv
    for key in (K.Tokenizer.MODEL, K.Tokenizer.LIST, K.Tokenizer.TOKEN_TYPE, K.Tokenizer.TOKEN_TYPE_COUNT,
                K.Tokenizer.BOS_ID, K.Tokenizer.SEP_ID, K.Tokenizer.UNK_ID, K.Tokenizer.PAD_ID,
                K.Tokenizer.MASK_ID, K.Tokenizer.ADD_BOS, K.Tokenizer.ADD_SEP):
        assert key in kv
    assert kv["bert.pooling_type"] == gguf.PoolingType.MEAN


def test_vocabulary_as_llama_cpp(minilm_gguf):
    """The phantom-space token list is the one llama.cpp's converter wrote for the same
    (bert-base-uncased) vocabulary in the shared test file, token for token, but for the
    [unusedN] tokens: the older converter that made that file kept every "[...]" token bare,
    today's keeps only control tokens bare ("▁[unused0]"); WordPiece can produce neither
    ("[" is punctuation), so tokenization is the same."""
    kv, _ = fields(minilm_gguf("f32"))
    ref, _ = fields(FORGE_SHARED / "vocab" / "ggml-vocab-bert-bge.gguf")
    ours, theirs = kv["tokenizer.ggml.tokens"], ref["tokenizer.ggml.tokens"]
    assert len(ours) == len(theirs) == 30522
    diff = [(a, b) for a, b in zip(ours, theirs) if a != b]
    assert len(diff) == 994 and all(a == "\u2581" + b and b.startswith("[unused") for a, b in diff), diff[:5]
    assert kv["tokenizer.ggml.token_type"] == ref["tokenizer.ggml.token_type"]
    toks = kv["tokenizer.ggml.tokens"]
    assert toks[101] == "[CLS]" and toks[7592] == "\u2581hello" and toks[2015] == "s"  # "##s"


def test_tensor_names_as_llama_cpp(minilm_gguf, minilm_dir):
    """Every safetensors name maps to the name gguf-py's TensorNameMap gives (llama.cpp's
    converter uses it), and the file holds exactly the expected tensors."""
    n_layer = 6
    tmap = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, n_layer)
    kept = set()
    for k in load_file(str(minilm_dir / "model.safetensors")):
        ours = conv.gguf_name(k, n_layer)
        if ours is None:
            assert k == "embeddings.position_ids" or k.startswith("pooler.")
            continue
        assert tmap.get_name(k, try_suffixes=(".weight", ".bias")) == ours, k
        kept.add(ours)
    allowed = set()
    for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.BERT]:
        for i in range(n_layer):
            allowed.add(gguf.TENSOR_NAMES[t].format(bid=i))
    _, r = fields(minilm_gguf("f32"))
    names = [t.name for t in r.tensors]
    assert len(names) == 101 == len(kept)
    assert set(names) == kept
    assert all(n.rsplit(".", 1)[0] in allowed for n in names)


@pytest.mark.parametrize("typ", ["f32", "f16", "q8_0"])
def test_tensor_types(minilm_gguf, typ):
    """As llama.cpp's converter: 1-D tensors, position and token-type embeddings F32."""
    _, r = fields(minilm_gguf(typ))
    Q = gguf.GGMLQuantizationType
    big = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[typ]
    for t in r.tensors:
        keep = len(t.shape) == 1 or t.name.startswith(("position_embd", "token_types"))
        assert t.tensor_type == (Q.F32 if keep else big), t.name


def test_f32_tensors_bit_exact(minilm_gguf, minilm_dir):
    st = {conv.gguf_name(k, 6): v for k, v in load_file(str(minilm_dir / "model.safetensors")).items()}
    w, _ = bert_ref.gguf_tensors(minilm_gguf("f32"))
    for n, v in w.items():
        assert np.array_equal(v, st[n]), n


def test_q8_0_as_llama_cpp(minilm_gguf, minilm_dir):
    """Q8_0 blocks bit-identical to gguf-py's quantizer (llama.cpp's reference in numpy):
    on the model's weights as written in the file, and on random data with exact halves
    (round half away from zero) and all-zero blocks."""
    st = {conv.gguf_name(k, 6): v for k, v in load_file(str(minilm_dir / "model.safetensors")).items()}
    _, r = fields(minilm_gguf("q8_0"))
    n_q = 0
    for t in r.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            want = gguf.quants.quantize(st[t.name], gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(np.asarray(t.data).reshape(want.shape), want), t.name
            n_q += 1
    assert n_q == 37
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[0, :32] = 0  # zero block
    x[1, :32] = np.arange(-16, 16, dtype=np.float32) + 0.5  # d = amax / 127 = 1: exact halves
    x[1, 0] = 127.0
    ours = conv.quantize_q8_0(x)
    assert np.array_equal(ours, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0))
    back = conv.dequantize_q8_0(ours, 256)
    assert np.array_equal(back, gguf.quants.dequantize(ours, gguf.GGMLQuantizationType.Q8_0))
    assert np.abs(back - x).max() <= np.abs(x).max() / 127  # within one step
    assert conv.round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -2.5], np.float32)).tolist() == [1, 2, 3, -1, -3]


@pytest.mark.parametrize("typ", ["f32", "q8_0"])
def test_forge_reads_the_file(minilm_gguf, typ):
    path = minilm_gguf(typ)
    r = subprocess.run([str(FORGE_BIN), "info", "-m", str(path)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "architecture: bert" in out and "tensors: 101" in out
    assert "sentence_transformers.max_seq_length" in out
    r = subprocess.run([str(FORGE_BIN), "tokenize", "-m", str(path), "-p", "This is an example sentence"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["101", "2023", "2003", "2019", "2742", "6251", "102"]


# ---- a small random BERT

VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "the", "a",
         "##ing", "!", ",", "."] + [f"w{i}" for i in range(25)]


def tiny_tokenizer_json(lowercase=True, added=()):
    return {"normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                           "strip_accents": None, "lowercase": lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": {t: i for i, t in enumerate(VOCAB)}},
            "added_tokens": [{"id": i, "content": t, "special": sp, "normalized": False} for i, t, sp in added]}


def tiny_bert(d, n_ff=40, n_layer=2, pooling="mean", normalize=True, extra_cfg=None, drop=None, bad_shape=None,
              modules=None, tokenizer_json=None, n_vocab=None):
    """A random BERT directory: n_embd 32, 4 heads, n_ff not a multiple of 32 by default."""
    rng = np.random.default_rng(SEED)
    E, V, P = 32, n_vocab or len(VOCAB), 16
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": E, "num_hidden_layers": n_layer,
           "num_attention_heads": 4, "intermediate_size": n_ff, "max_position_embeddings": P, "vocab_size": V,
           "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    cfg.update(extra_cfg or {})
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    if tokenizer_json is not None:
        (d / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "unk_token": "[UNK]",
                                                         "cls_token": "[CLS]", "sep_token": "[SEP]"}))
    t = {"embeddings.word_embeddings.weight": (V, E), "embeddings.position_embeddings.weight": (P, E),
         "embeddings.token_type_embeddings.weight": (2, E), "embeddings.LayerNorm.weight": (E,),
         "embeddings.LayerNorm.bias": (E,), "pooler.dense.weight": (E, E), "pooler.dense.bias": (E,)}
    for i in range(n_layer):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + n + ".weight"], t[p + n + ".bias"] = (E, E), (E,)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + n + ".weight"], t[p + n + ".bias"] = (E,), (E,)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = (n_ff, E), (n_ff,)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = (E, n_ff), (E,)
    if bad_shape:
        t[bad_shape] = tuple(s + 1 for s in t[bad_shape])
    arrays = {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in t.items() if k != drop}
    for k in arrays:
        if k.endswith("LayerNorm.weight"):
            arrays[k] += 1
    save_file(arrays, str(d / "model.safetensors"))
    mods = modules if modules is not None else (
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        + ([{"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
           if normalize else []))
    if pooling is not None:
        (d / "modules.json").write_text(json.dumps(mods))
        (d / "1_Pooling").mkdir(exist_ok=True)
        modes = {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls",
                 "pooling_mode_lasttoken": pooling == "last", "pooling_mode_max_tokens": pooling == "max"}
        (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": E, **modes}))
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": False}))
    return d


def test_tiny_model_round_trip(tmp_path):
    """n_ff = 40: Q8_0 needs rows of 32, so ffn_down (rows of 40) falls back to F16 as in
    llama.cpp; every file reproduces the safetensors reference; pooling and normalisation
    come from the file."""
    d = tiny_bert(tmp_path / "hf", pooling="cls", normalize=False)
    ids = [[3, 6, 7, 12, 4], [3, 9, 10, 20, 21, 22, 8, 4], [3, 4]]
    ref = bert_ref.load_safetensors(d)
    assert ref.pooling == bert_ref.POOL_CLS and not ref.normalize and ref.max_seq == 12
    want = ref.embed_many(ids)
    assert np.allclose(want[0], ref.hidden(ids[0])[0])
    for typ, tol in (("f32", 1e-9), ("f16", 1e-3), ("q8_0", 1e-2)):
        out = conv.convert(d, tmp_path / f"tiny-{typ}.gguf", typ)
        kv, r = fields(out)
        assert kv["bert.pooling_type"] == 2 and kv["sentence_transformers.normalize"] is False
        assert kv["sentence_transformers.max_seq_length"] == 12
        types = {t.name: t.tensor_type for t in r.tensors}
        if typ == "q8_0":
            assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
            assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
        got = bert_ref.load_gguf(out).embed_many(ids)
        for a, b in zip(want, got):
            assert 1 - bert_ref.cosine(a, b) <= tol, (typ, bert_ref.cosine(a, b))


def test_pooling_override_and_absent(tmp_path):
    d = tiny_bert(tmp_path / "hf", pooling=None)
    kv, _ = fields(conv.convert(d, tmp_path / "none.gguf", "f32"))
    assert "bert.pooling_type" not in kv  # as llama.cpp: no sentence-transformers config, no key
    assert kv["sentence_transformers.normalize"] is False
    assert "sentence_transformers.max_seq_length" not in kv
    kv, _ = fields(conv.convert(d, tmp_path / "last.gguf", "f32", pooling_arg="last"))
    assert kv["bert.pooling_type"] == 3


def test_tokenizer_json_flags_and_added_tokens(tmp_path):
    """BertNormalizer's flags from tokenizer.json (cased: strip_accents null follows lowercase
    false); added tokens past vocab.txt kept at their ids (control if special, else
    user-defined); rows without a token are [PADn] (unused), as llama.cpp writes them."""
    n = len(VOCAB)
    tj = tiny_tokenizer_json(lowercase=False, added=[(1, "[unused0]", False), (n, "<extra>", False),
                                                     (n + 1, "<ctl>", True)])
    d = tiny_bert(tmp_path / "hf", tokenizer_json=tj, n_vocab=n + 3)
    kv, _ = fields(conv.convert(d, tmp_path / "t.gguf", "f32"))
    assert kv["tokenizer.ggml.normalizer.lowercase"] is False
    assert kv["tokenizer.ggml.normalizer.strip_accents"] is False
    toks, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert toks[n:] == ["<extra>", "<ctl>", f"[PAD{n + 2}]"] and types[n:] == [4, 3, 5]
    assert toks[:7] == ["[PAD]", "\u2581[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581hello"]
    assert toks[8] == "s" and types[:4] == [3, 1, 3, 3]
    bad = tiny_tokenizer_json(added=[(7, "<x>", True)])  # id 7 is "world" in vocab.txt
    d = tiny_bert(tmp_path / "bad", tokenizer_json=bad)
    with pytest.raises(conv.ConvertError, match="added token '<x>' has id 7, vocab.txt has 'world' there"):
        conv.convert(d, tmp_path / "bad.gguf", "f32")


@pytest.mark.parametrize("case,message", [
    ("nomic", "only plain BERT"),
    ("gelu_new", "hidden_act 'gelu_new'"),
    ("relative", "position_embedding_type"),
    ("missing", "missing tensors: blk.1.ffn_up.bias"),
    ("shape", "blk.0.attn_q.weight): shape (33, 33), expected (32, 32)"),
    ("max_pooling", "pooling modes ['pooling_mode_max_tokens']"),
    ("dense", "module 'sentence_transformers.models.Dense' is not supported"),
])
def test_converter_refuses(tmp_path, case, message):
    kw = {
        "nomic": {"extra_cfg": {"architectures": ["NomicBertModel"], "model_type": "nomic_bert"}},
        "gelu_new": {"extra_cfg": {"hidden_act": "gelu_new"}},
        "relative": {"extra_cfg": {"position_embedding_type": "relative_key"}},
        "missing": {"drop": "encoder.layer.1.intermediate.dense.bias"},
        "shape": {"bad_shape": "encoder.layer.0.attention.self.query.weight"},
        "max_pooling": {"pooling": "max"},
        "dense": {"modules": [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                              {"idx": 1, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]},
    }[case]
    d = tiny_bert(tmp_path / "hf", **kw)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_hf_bert.py"), str(d), "-o",
                        str(tmp_path / "out.gguf")], capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert err.startswith("convert_hf_bert: ") and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.gguf").exists()
