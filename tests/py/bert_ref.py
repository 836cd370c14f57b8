"""bert_ref.py - a short numpy reference of BERT (Hugging Face BertModel in eval mode; also
llama.cpp's nomic-bert: rotary positions, SwiGLU, fused QKV) and of
sentence-transformers' pooling (mean over the attention mask, CLS, last token) and L2
normalisation, computed in float64 from weights under llama.cpp's GGUF tensor names; the
oracle Forge's `bert` forward pass and `/v1/embeddings` are checked against.
Weights come from the Hugging Face safetensors (load_safetensors, names mapped as
scripts/convert_hf_bert.py maps them) or from a converted GGUF read back with the `gguf`
package (load_gguf: F32, F16 and Q8_0 dequantized). Token ids come from the model's own
tokenizer (tokenize_hf: the `tokenizers` library on tokenizer.json or vocab.txt, truncated
as sentence-transformers truncates). Not here: batching with padding (one sequence at a
time is exact: mean pooling then covers every token), torch. Used by tests/py/test_bert_*.py.
"""
import json
import math
from pathlib import Path

import numpy as np

POOL_NONE, POOL_MEAN, POOL_CLS, POOL_LAST = 0, 1, 2, 3  # llama.cpp's enum

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    """BERT's GELU, the exact erf form: x/2 (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rope_neox(x, base):
    """Rotary positions as llama.cpp's NEOX mode (nomic-bert): x [H][n][D], dims i and
    i + D/2 rotated by pos * base^(-2i/D)."""
    H, n, D = x.shape
    half = D // 2
    theta = np.arange(n, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(half) / D)  # [n][half]
    c, s = np.cos(theta), np.sin(theta)
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)


class Bert:
    """Hyper-parameters and float64 weights, by llama.cpp name, in PyTorch layout
    (Linear weights [out, in], embeddings [rows, n_embd]). arch "bert" (learned positions, GELU
    FFN with biases) or "nomic-bert" (rotary positions NEOX with rope_base, SwiGLU FFN
    down(silu(gate x) * up x)); q/k/v separate or fused (attn_qkv); absent biases are zero."""

    def __init__(self, weights, n_layer, n_head, eps, pooling=POOL_MEAN, normalize=True, max_seq=None,
                 arch="bert", rope_base=10000.0, n_ctx=None):
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.n_layer, self.n_head, self.eps = n_layer, n_head, eps
        self.pooling, self.normalize = pooling, normalize
        self.arch, self.rope_base = arch, rope_base
        self.n_ctx = self.w["position_embd.weight"].shape[0] if arch == "bert" else n_ctx
        self.max_seq = max_seq or self.n_ctx

    def hidden(self, ids, type_ids=None):
        """Last hidden state [n_tokens][n_embd] of one sequence (every token attends to all)."""
        w = self.w
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        if n == 0 or n > self.n_ctx:
            raise ValueError(f"sequence of {n} tokens: expected 1..{self.n_ctx}")
        tt = np.zeros(n, dtype=np.int64) if type_ids is None else np.asarray(type_ids, dtype=np.int64)
        x = w["token_embd.weight"][ids]
        if "position_embd.weight" in w:
            x = x + w["position_embd.weight"][:n]
        if "token_types.weight" in w:
            x = x + w["token_types.weight"][tt]
        x = layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"], self.eps)
        E = x.shape[1]
        H, D = self.n_head, E // self.n_head
        for i in range(self.n_layer):
            p = f"blk.{i}."

            def lin(t, v):
                b = w.get(p + t + ".bias")
                y = v @ w[p + t + ".weight"].T
                return y if b is None else y + b

            if p + "attn_qkv.weight" in w:
                qkv = lin("attn_qkv", x)
                qf, kf, vf = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
            else:
                qf, kf, vf = lin("attn_q", x), lin("attn_k", x), lin("attn_v", x)
            q = qf.reshape(n, H, D).transpose(1, 0, 2)  # [H][n][D]
            k = kf.reshape(n, H, D).transpose(1, 0, 2)
            v = vf.reshape(n, H, D).transpose(1, 0, 2)
            if self.arch == "nomic-bert":
                q, k = rope_neox(q, self.rope_base), rope_neox(k, self.rope_base)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(D)  # [H][n][n], no causal mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(n, E)
            x = layer_norm(lin("attn_output", a) + x, w[p + "attn_output_norm.weight"],
                           w[p + "attn_output_norm.bias"], self.eps)
            if self.arch == "nomic-bert":
                g = lin("ffn_gate", x)
                f = lin("ffn_down", g / (1.0 + np.exp(-g)) * lin("ffn_up", x))
            else:
                f = lin("ffn_down", gelu(lin("ffn_up", x)))
            x = layer_norm(f + x, w[p + "layer_output_norm.weight"], w[p + "layer_output_norm.bias"], self.eps)
        return x

    def pool(self, h):
        if self.pooling == POOL_MEAN:
            e = h.mean(axis=0)
        elif self.pooling == POOL_CLS:
            e = h[0]
        elif self.pooling == POOL_LAST:
            e = h[-1]
        else:
            raise ValueError("pooling 'none' gives one vector per token: use hidden()")
        if self.normalize:
            e = e / max(np.linalg.norm(e), 1e-12)  # torch.nn.functional.normalize
        return e

    def embed(self, ids):
        return self.pool(self.hidden(ids))

    def embed_many(self, seqs):
        return np.stack([self.embed(s) for s in seqs])


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _st_config(d):
    """pooling, normalize, max_seq_length from sentence-transformers' files in d."""
    d = Path(d)
    pooling, normalize, max_seq = POOL_NONE, False, None
    mpath = d / "modules.json"
    if mpath.is_file():
        for m in json.loads(mpath.read_text()):
            if m["type"].endswith("Pooling"):
                pc = json.loads((d / m["path"] / "config.json").read_text())
                if pc.get("pooling_mode_mean_tokens"):
                    pooling = POOL_MEAN
                elif pc.get("pooling_mode_cls_token"):
                    pooling = POOL_CLS
                elif pc.get("pooling_mode_lasttoken"):
                    pooling = POOL_LAST
            elif m["type"].endswith("Normalize"):
                normalize = True
    sb = d / "sentence_bert_config.json"
    if sb.is_file():
        max_seq = json.loads(sb.read_text()).get("max_seq_length")
    return pooling, normalize, max_seq


def load_safetensors(d):
    """Bert from a Hugging Face directory, tensors renamed as the converter renames them."""
    import sys

    from safetensors.numpy import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import convert_hf_bert as conv

    d = Path(d)
    cfg = json.loads((d / "config.json").read_text())
    w = {}
    for k, v in load_file(str(d / "model.safetensors")).items():
        n = conv.gguf_name(k, cfg["num_hidden_layers"])
        if n is not None:
            w[n] = v
    pooling, normalize, max_seq = _st_config(d)
    return Bert(w, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg.get("layer_norm_eps", 1e-12),
                pooling, normalize, max_seq)


def gguf_tensors(path):
    """{name: float32 ndarray in PyTorch layout} of a GGUF file (F32, F16, Q8_0, ...)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))  # ne is innermost first
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(shape)
    return out, r


def load_gguf(path):
    """Bert from a converted GGUF file (hyper-parameters and pooling from its metadata)."""
    w, r = gguf_tensors(path)

    def kv(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = kv("general.architecture")
    return Bert(w, kv(f"{arch}.block_count"), kv(f"{arch}.attention.head_count"),
                kv(f"{arch}.attention.layer_norm_epsilon"), kv(f"{arch}.pooling_type", POOL_NONE),
                kv("sentence_transformers.normalize", False), kv("sentence_transformers.max_seq_length"),
                arch=arch, rope_base=kv(f"{arch}.rope.freq_base", 10000.0), n_ctx=kv(f"{arch}.context_length"))


def hf_tokenizer(d, max_seq=None):
    """The model's own tokenizer (`tokenizers`), no padding, truncated to max_seq tokens
    ([CLS] and [SEP] included) as sentence-transformers truncates."""
    from tokenizers import Tokenizer

    d = Path(d)
    if (d / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    else:
        from tokenizers import BertWordPieceTokenizer

        tok = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True)
    tok.no_padding()
    if max_seq:
        tok.enable_truncation(max_seq)
    else:
        tok.no_truncation()
    return tok


def tokenize_hf(d, texts, max_seq=None):
    tok = hf_tokenizer(d, max_seq)
    return [e.ids for e in tok.encode_batch(list(texts))]
