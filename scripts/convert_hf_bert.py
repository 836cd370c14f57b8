#!/usr/bin/env python3
"""convert_hf_bert.py - converts a Hugging Face BERT directory (config.json, model.safetensors,
vocab.txt, tokenizer_config.json / tokenizer.json, and sentence-transformers' modules.json,
1_Pooling/config.json, sentence_bert_config.json, 2_Normalize) into a GGUF file with
llama.cpp's `bert` tensor and metadata names, so llama.cpp loads it as well as Forge.

  python3 scripts/convert_hf_bert.py HF_DIR -o OUT.gguf [--type f32|f16|q8_0] [--name NAME]
                                     [--pooling mean|cls|last|none]

Written with llama.cpp's own GGUF writer (the `gguf` PyPI package: the file layout is the
reference implementation's by construction), numpy and the `safetensors` package; no torch.
Types as llama.cpp's convert_hf_to_gguf.py chooses them: 1-D tensors (norms, biases) and the
position and token-type embeddings stay F32; the other 2-D weights are F32, F16 or Q8_0 (rows
not a multiple of 32 fall back to F16, as llama.cpp does). Q8_0 is llama.cpp's reference
quantizer: per block of 32, d = amax / 127 (stored as f16), q = round-half-away(x / d).
Not here: nomic-bert / jina / RoBERTa variants (refused by name), a torch checkpoint
(pytorch_model.bin), BF16 source weights. The keys are listed in docs/EMBEDDINGS.md.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

# llama.cpp's enum values (gguf-py constants), repeated here so --help works without gguf
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # LlamaFileType ALL_F32, MOSTLY_F16, MOSTLY_Q8_0
QK8_0 = 32
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5  # gguf TokenType
PHANTOM = "\u2581"


class ConvertError(Exception):
    pass


def fail(msg):
    raise ConvertError(msg)


def load_json(path, required=False):
    if not path.is_file():
        if required:
            fail(f"{path}: not found")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")


# --- Q8_0, as ggml's quantize_row_q8_0_ref (and gguf-py's quants.Q8_0)

def round_half_away(x):
    """roundf(): halves away from zero (numpy's round is to even)."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def quantize_q8_0(x):
    """[rows, n] float32 (n % 32 == 0) -> [rows, n / 32 * 34] uint8: f16 d, then 32 int8."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    blocks = x.reshape(-1, QK8_0)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = round_half_away(blocks * inv).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), qs.view(np.uint8)], axis=1)
    return out.reshape(rows, n // QK8_0 * (2 + QK8_0))


def dequantize_q8_0(q, n):
    """Inverse of quantize_q8_0 for tests: [rows, n/32*34] uint8 -> [rows, n] float32."""
    b = np.ascontiguousarray(q).reshape(-1, 2 + QK8_0)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * b[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(-1, n)


# --- the Hugging Face directory

def read_hparams(d):
    cfg = load_json(d / "config.json", required=True)
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if model_type != "bert" or any(a.startswith(("NomicBert", "JinaBert", "Roberta", "XLMRoberta")) for a in archs):
        fail(f"{d / 'config.json'}: model_type {model_type!r}, architectures {archs}: only plain BERT "
             "(model_type 'bert': BERT, MiniLM, BGE, E5) is converted here")
    need = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "vocab_size"]
    missing = [k for k in need if not isinstance(cfg.get(k), int) or cfg[k] <= 0]
    if missing:
        fail(f"{d / 'config.json'}: missing or not a positive integer: {', '.join(missing)}")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        fail(f"{d / 'config.json'}: hidden_size {cfg['hidden_size']} is not a multiple of "
             f"num_attention_heads {cfg['num_attention_heads']}")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":  # BERT's GELU is the erf form; the tanh approximation is "gelu_new"
        fail(f"{d / 'config.json'}: hidden_act {act!r}: only 'gelu' (erf form) is supported")
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
        fail(f"{d / 'config.json'}: position_embedding_type {pos!r}: only 'absolute' is supported")
    return {
        "n_embd": cfg["hidden_size"], "n_layer": cfg["num_hidden_layers"],
        "n_head": cfg["num_attention_heads"], "n_ff": cfg["intermediate_size"],
        "n_ctx": cfg["max_position_embeddings"], "n_vocab": cfg["vocab_size"],
        "n_type": cfg.get("type_vocab_size", 2), "eps": float(cfg.get("layer_norm_eps", 1e-12)),
    }


def read_tokenizer(d, n_vocab):
    """-> tokens (phantom-space form), token types, special ids, normalizer flags."""
    vpath = d / "vocab.txt"
    if not vpath.is_file():
        fail(f"{vpath}: not found (a WordPiece vocabulary, one token a line)")
    with open(vpath, encoding="utf-8") as f:
        vocab = f.read().split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    if len(vocab) > n_vocab:
        fail(f"{vpath}: {len(vocab)} tokens, more than config.json's vocab_size {n_vocab}")
    if len(set(vocab)) != len(vocab):
        fail(f"{vpath}: duplicate tokens")
    tj = load_json(d / "tokenizer.json")
    tc = load_json(d / "tokenizer_config.json") or {}
    stm = load_json(d / "special_tokens_map.json") or {}

    # special tokens: tokenizer.json's added tokens marked special, and the *_token names
    special = set()
    added = {}  # id -> (text, type) for added tokens past vocab.txt
    if tj:
        model = tj.get("model") or {}
        if model.get("type") != "WordPiece":
            fail(f"{d / 'tokenizer.json'}: model type {model.get('type')!r}, expected WordPiece")
        if model.get("continuing_subword_prefix", "##") != "##":
            fail(f"{d / 'tokenizer.json'}: continuing_subword_prefix {model['continuing_subword_prefix']!r}, expected '##'")
        if model.get("max_input_chars_per_word", 100) != 100:
            fail(f"{d / 'tokenizer.json'}: max_input_chars_per_word {model['max_input_chars_per_word']}: "
                 "Forge's WordPiece uses Hugging Face's default, 100")
        tv = model.get("vocab") or {}
        for i, t in enumerate(vocab):
            if tv and tv.get(t) != i:
                fail(f"{d / 'tokenizer.json'}: token {t!r} has id {tv.get(t)} there, {i} in vocab.txt")
        for a in tj.get("added_tokens") or []:
            i, content = a.get("id"), a.get("content")
            if not isinstance(i, int) or not isinstance(content, str) or not 0 <= i < n_vocab:
                fail(f"{d / 'tokenizer.json'}: added token {content!r} with id {i!r} (vocab_size {n_vocab})")
            if i < len(vocab) and vocab[i] != content:
                fail(f"{d / 'tokenizer.json'}: added token {content!r} has id {i}, vocab.txt has {vocab[i]!r} there")
            if i >= len(vocab):  # a token past vocab.txt: kept as it is, as llama.cpp keeps added tokens
                added[i] = (content, TOKEN_CONTROL if a.get("special") else TOKEN_USER_DEFINED)
            if a.get("special"):
                special.add(content)
    for k, v in (tc.get("added_tokens_decoder") or {}).items():
        if isinstance(v, dict) and v.get("special"):
            special.add(v.get("content"))

    def name_of(key, default):
        v = tc.get(key, stm.get(key, default))
        if isinstance(v, dict):
            v = v.get("content")
        return v

    names = {k: name_of(k + "_token", dflt) for k, dflt in
             (("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("mask", "[MASK]"))}
    ids = {}
    by_text = {t: i for i, t in enumerate(vocab)}
    by_text.update({t: i for i, (t, _) in added.items()})
    for k, v in names.items():
        if v not in by_text:
            fail(f"{vpath}: the {k} token {v!r} is not in the vocabulary")
        ids[k] = by_text[v]
        special.add(v)

    # BertNormalizer options; strip_accents None follows lowercase (as in HF)
    lowercase, strip_accents = tc.get("do_lower_case", True), tc.get("strip_accents")
    if tj and tj.get("normalizer"):
        nm = tj["normalizer"]
        if nm.get("type") != "BertNormalizer":
            fail(f"{d / 'tokenizer.json'}: normalizer {nm.get('type')!r}, expected BertNormalizer")
        for k in ("clean_text", "handle_chinese_chars"):
            if nm.get(k, True) is not True:
                fail(f"{d / 'tokenizer.json'}: normalizer {k} = {nm[k]!r}: Forge always does it")
        lowercase, strip_accents = nm.get("lowercase", True), nm.get("strip_accents")
    if tj and (tj.get("pre_tokenizer") or {}).get("type") not in (None, "BertPreTokenizer"):
        fail(f"{d / 'tokenizer.json'}: pre_tokenizer {tj['pre_tokenizer'].get('type')!r}, expected BertPreTokenizer")
    if not tc.get("tokenize_chinese_chars", True):
        fail(f"{d / 'tokenizer_config.json'}: tokenize_chinese_chars false: Forge always splits them")
    if strip_accents is None:
        strip_accents = lowercase

    # llama.cpp's phantom-space vocabulary: control tokens as they are, "##x" -> "x", "x" -> "▁x"
    tokens, types = [], []
    for t in vocab:
        if t in special:
            tokens.append(t)
            types.append(TOKEN_CONTROL)
        else:
            tokens.append(t[2:] if t.startswith("##") else PHANTOM + t)
            types.append(TOKEN_NORMAL)
    for i in range(len(vocab), n_vocab):  # added tokens; embedding rows without a token
        t, typ = added.get(i, (f"[PAD{i}]", TOKEN_UNUSED))
        tokens.append(t)
        types.append(typ)
    if len(set(tokens)) != len(tokens):
        seen, dup = set(), None
        for t in tokens:
            if t in seen:
                dup = t
                break
            seen.add(t)
        fail(f"{vpath}: two tokens map to {dup!r} in llama.cpp's phantom-space form")
    return tokens, types, ids, bool(lowercase), bool(strip_accents)


def read_sentence_transformers(d, pooling_arg):
    """-> (pooling type or None, normalize, max_seq_length or None, do_lower_case)."""
    modules = load_json(d / "modules.json")
    pooling, normalize = None, False
    if modules:
        for m in modules:
            typ = m.get("type", "")
            if typ.endswith("models.Pooling"):
                pc = load_json(d / m.get("path", "") / "config.json", required=True)
                modes = [k for k in ("pooling_mode_mean_tokens", "pooling_mode_cls_token",
                                     "pooling_mode_lasttoken", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
                         if pc.get(k)]
                if len(modes) != 1 or modes[0] not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token",
                                                      "pooling_mode_lasttoken"):
                    fail(f"{d / m.get('path', '') / 'config.json'}: pooling modes {modes}: exactly one of "
                         "mean, CLS or last token is supported (llama.cpp's pooling types)")
                pooling = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                           "pooling_mode_lasttoken": "last"}[modes[0]]
            elif typ.endswith("models.Normalize"):
                normalize = True
            elif typ.endswith("models.Transformer"):
                pass
            else:
                fail(f"{d / 'modules.json'}: module {typ!r} is not supported (Transformer, Pooling, "
                     "Normalize only)")
    if pooling_arg:
        pooling = pooling_arg
    sb = load_json(d / "sentence_bert_config.json") or {}
    max_seq = sb.get("max_seq_length")
    if max_seq is not None and (not isinstance(max_seq, int) or max_seq <= 0):
        fail(f"{d / 'sentence_bert_config.json'}: max_seq_length {max_seq!r} is not a positive integer")
    return pooling, normalize, max_seq, bool(sb.get("do_lower_case", False))


# --- tensors

def gguf_name(hf, n_layer):
    """Hugging Face name -> llama.cpp name; None for tensors llama.cpp drops."""
    n = hf
    for p in ("bert.", "model."):
        if n.startswith(p):
            n = n[len(p):]
    if n.endswith(".gamma"):
        n = n[:-6] + ".weight"
    elif n.endswith(".beta"):
        n = n[:-5] + ".bias"
    if n == "embeddings.position_ids" or n.startswith(("pooler.", "cls.")):
        return None
    fixed = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    if n in fixed:
        return fixed[n]
    parts = n.split(".")
    if len(parts) >= 5 and parts[0] == "encoder" and parts[1] == "layer" and parts[2].isdigit():
        bid = int(parts[2])
        rest = ".".join(parts[3:-1])
        kind = parts[-1]
        blk = {
            "attention.self.query": "attn_q", "attention.self.key": "attn_k",
            "attention.self.value": "attn_v", "attention.output.dense": "attn_output",
            "attention.output.LayerNorm": "attn_output_norm", "intermediate.dense": "ffn_up",
            "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
        }.get(rest)
        if blk and bid < n_layer and kind in ("weight", "bias"):
            return f"blk.{bid}.{blk}.{kind}"
    fail(f"tensor {hf!r}: no llama.cpp name for it")


def expected_shapes(hp):
    """llama.cpp name -> shape in PyTorch order (outermost first)."""
    E, F = hp["n_embd"], hp["n_ff"]
    s = {"token_embd.weight": (hp["n_vocab"], E), "position_embd.weight": (hp["n_ctx"], E),
         "token_types.weight": (hp["n_type"], E), "token_embd_norm.weight": (E,), "token_embd_norm.bias": (E,)}
    for i in range(hp["n_layer"]):
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            s[f"blk.{i}.{t}.weight"] = (E, E)
            s[f"blk.{i}.{t}.bias"] = (E,)
        for t in ("attn_output_norm", "layer_output_norm"):
            s[f"blk.{i}.{t}.weight"] = (E,)
            s[f"blk.{i}.{t}.bias"] = (E,)
        s[f"blk.{i}.ffn_up.weight"] = (F, E)
        s[f"blk.{i}.ffn_up.bias"] = (F,)
        s[f"blk.{i}.ffn_down.weight"] = (E, F)
        s[f"blk.{i}.ffn_down.bias"] = (E,)
    return s


def load_tensors(d):
    """-> {hf name: float32 ndarray}: model.safetensors or the shards of its index."""
    from safetensors import safe_open
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({d / f for f in (load_json(index) or {}).get("weight_map", {}).values()})
    else:
        fail(f"{d}: no model.safetensors (or model.safetensors.index.json)")
    out = {}
    for path in files:
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                try:
                    t = f.get_tensor(k)
                except TypeError as e:  # numpy has no bfloat16
                    fail(f"{path}: tensor {k!r}: {e} (BF16 sources are not supported)")
                if t.dtype in (np.float16, np.float32, np.float64):
                    t = t.astype(np.float32)
                out[k] = t
    return out


def out_type(name, shape, want):
    """'f32' | 'f16' | 'q8_0' for one tensor, as llama.cpp's converter decides."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or name.startswith(("position_embd.", "token_types.")):
        return "f32"
    if want == "q8_0" and shape[-1] % QK8_0 != 0:
        return "f16"
    return want


# --- write

def convert(hf_dir, outfile, typ="f16", name=None, pooling_arg=None, log=print):
    import gguf

    d = Path(hf_dir)
    hp = read_hparams(d)
    tokens, types, ids, lowercase, strip_accents = read_tokenizer(d, hp["n_vocab"])
    pooling, normalize, max_seq, st_lower = read_sentence_transformers(d, pooling_arg)
    if st_lower and not lowercase:  # sentence-transformers lowercases before the tokenizer
        lowercase = True
    if max_seq is not None and max_seq > hp["n_ctx"]:
        fail(f"{d / 'sentence_bert_config.json'}: max_seq_length {max_seq} exceeds "
             f"max_position_embeddings {hp['n_ctx']}")

    shapes = expected_shapes(hp)
    tensors = {}
    for k, v in load_tensors(d).items():
        n = gguf_name(k, hp["n_layer"])
        if n is None:
            continue
        if n in tensors:
            fail(f"tensor {k!r}: {n} given twice")
        if n not in shapes:
            fail(f"tensor {k!r} ({n}): not part of the bert architecture")
        if tuple(v.shape) != shapes[n]:
            fail(f"tensor {k!r} ({n}): shape {tuple(v.shape)}, expected {shapes[n]}")
        if v.dtype != np.float32:
            fail(f"tensor {k!r}: dtype {v.dtype}, expected a float type")
        if not np.isfinite(v).all():
            fail(f"tensor {k!r}: non-finite values")
        tensors[n] = v
    missing = [n for n in shapes if n not in tensors]
    if missing:
        fail(f"{d}: missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")

    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(outfile), "bert")
    w.add_name(name or d.resolve().name)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_block_count(hp["n_layer"])
    w.add_head_count(hp["n_head"])
    w.add_layer_norm_eps(hp["eps"])
    w.add_causal_attention(False)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(POOLING[pooling]))
    w.add_file_type(FILE_TYPE[typ])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # Forge's keys (docs/EMBEDDINGS.md): sentence-transformers' truncation length and whether
    # it L2-normalises (a Normalize module); llama.cpp ignores both
    if max_seq is not None:
        w.add_uint32("sentence_transformers.max_seq_length", max_seq)
    w.add_bool("sentence_transformers.normalize", normalize)

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")  # llama.cpp ignores the pre-tokenizer for WordPiece
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(hp["n_type"])
    w.add_bos_token_id(ids["cls"])  # llama.cpp's name for [CLS]
    w.add_uint32("tokenizer.ggml.cls_token_id", ids["cls"])  # the older name, for older readers
    w.add_sep_token_id(ids["sep"])
    w.add_unk_token_id(ids["unk"])
    w.add_pad_token_id(ids["pad"])
    w.add_mask_token_id(ids["mask"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    w.add_add_eos_token(False)
    w.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    w.add_bool("tokenizer.ggml.normalizer.strip_accents", strip_accents)

    counts = {}
    for n in shapes:  # llama.cpp's order: embeddings, then block by block
        v = tensors[n]
        t = out_type(n, v.shape, typ)
        counts[t] = counts.get(t, 0) + 1
        if t == "f32":
            w.add_tensor(n, v)
        elif t == "f16":
            w.add_tensor(n, v.astype(np.float16))
        else:
            q = quantize_q8_0(v.reshape(-1, v.shape[-1]))
            w.add_tensor(n, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log(f"{outfile}: bert, {hp['n_layer']} layers, n_embd {hp['n_embd']}, {len(tokens)} tokens, "
        f"pooling {pooling or 'none'}{', normalized' if normalize else ''}, max_seq_length "
        f"{max_seq if max_seq is not None else '-'}, tensors {counts}")
    return outfile


def main(argv=None):
    ap = argparse.ArgumentParser(description="Hugging Face BERT directory -> GGUF (llama.cpp's bert names)")
    ap.add_argument("hf_dir", help="directory with config.json, model.safetensors, vocab.txt, ...")
    ap.add_argument("-o", "--outfile", required=True, help="output .gguf path")
    ap.add_argument("--type", choices=sorted(FILE_TYPE), default="f16",
                    help="type of the 2-D weights (default f16; norms, biases, position and "
                         "token-type embeddings stay f32)")
    ap.add_argument("--name", help="general.name (default: the directory's name)")
    ap.add_argument("--pooling", choices=sorted(POOLING),
                    help="override the pooling type (default: from sentence-transformers' config; "
                         "none written when there is none)")
    a = ap.parse_args(argv)
    try:
        convert(a.hf_dir, a.outfile, a.type, a.name, a.pooling)
    except ConvertError as e:
        print(f"convert_hf_bert: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
