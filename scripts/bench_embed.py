#!/usr/bin/env python3
"""bench_embed.py - the inputs and the PyTorch baseline for the embedding throughput target.

  gen   --words TEXT -n 10000 -o sentences.txt     sentences of ~20 WordPiece tokens, seeded
  ids   --forge BIN -m MODEL.gguf -i sentences.txt -o ids.txt
                                                   the token ids Forge gives each sentence
  torch --ids ids.txt [--device cuda|cpu] [--dtype fp16|fp32] [--batch-sizes 32,64,...]
        [--layers 6 --hidden 384 --heads 12 --ff 1536 --vocab 30522]
                                                   a BERT encoder of that shape in PyTorch
                                                   (transformers' BertModel with SDPA attention
                                                   when installed, else the same math in plain
                                                   torch), sentences sorted by length and padded
                                                   per batch as sentence-transformers does, mean
                                                   pooling and L2 normalisation; prints
                                                   sentences/s per batch size and the best.
  st    --model-dir HF_DIR -i sentences.txt [--device cuda|cpu] [--dtype fp16|fp32] [--batch-sizes ...]
                                                   sentence-transformers' own encode() (tokenizer
                                                   included) on a model directory; without
                                                   model.safetensors, random weights of the
                                                   config's shape are written there first.

The baseline times the model only (the ids are given), so it is an upper bound on
sentence-transformers' encode(), which also tokenizes. Speed does not depend on the weights'
values: random weights of the model's shape are used.
"""
import argparse
import random
import re
import subprocess
import sys
import time


def cmd_gen(a):
    text = open(a.words, encoding="utf-8", errors="replace").read().lower()
    words = sorted(set(re.findall(r"[a-z]+", text)))
    rng = random.Random(a.seed)
    with open(a.output, "w", encoding="utf-8") as f:
        for _ in range(a.n):
            k = rng.randint(14, 18)
            s = " ".join(rng.choice(words) for _ in range(k))
            f.write(s[0].upper() + s[1:] + ".\n")


def cmd_ids(a):
    lines = open(a.input, encoding="utf-8").read().splitlines()
    tmp = a.output + ".inp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n__ggml_vocab_test__\n".join(lines))
    r = subprocess.run([a.forge, "tokenize", "-m", a.model, "--batch-file", tmp], capture_output=True,
                       text=True, check=True)
    out = r.stdout.splitlines()
    if len(out) != len(lines):
        sys.exit(f"bench_embed ids: {len(out)} id lines for {len(lines)} sentences")
    with open(a.output, "w") as f:
        f.write("\n".join(out) + "\n")
    n = [len(x.split()) for x in out]
    print(f"{len(n)} sentences, {sum(n)} tokens, {sum(n) / len(n):.1f} per sentence (min {min(n)}, max {max(n)})")


def torch_encoder(torch, a, dev, dt):
    try:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                         num_attention_heads=a.heads, intermediate_size=a.ff, max_position_embeddings=512,
                         attn_implementation="sdpa")
        m = BertModel(cfg, add_pooling_layer=False).to(dev, dt).eval()
        return "transformers BertModel (sdpa)", lambda ids, mask: m(input_ids=ids, attention_mask=mask).last_hidden_state
    except ImportError:
        pass
    F = torch.nn.functional
    g = torch.Generator().manual_seed(1)

    def p(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(dev, dt)

    E, H, L = a.hidden, a.heads, a.layers
    tok, pos, typ = p(a.vocab, E), p(512, E), p(2, E)
    ln = lambda: (torch.ones(E, device=dev, dtype=dt), torch.zeros(E, device=dev, dtype=dt))
    ln_e = ln()
    layers = [dict(qkv=p(3 * E, E), bqkv=p(3 * E), o=p(E, E), bo=p(E), ln1=ln(), up=p(a.ff, E), bup=p(a.ff),
                   dn=p(E, a.ff), bdn=p(E), ln2=ln()) for _ in range(L)]

    def run(ids, mask):
        B, T = ids.shape
        x = tok[ids] + pos[:T] + typ[0]
        x = F.layer_norm(x, (E,), *ln_e, eps=1e-12)
        am = mask[:, None, None, :].bool()
        for w in layers:
            q, k, v = F.linear(x, w["qkv"], w["bqkv"]).view(B, T, 3, H, E // H).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=am).transpose(1, 2).reshape(B, T, E)
            x = F.layer_norm(x + F.linear(o, w["o"], w["bo"]), (E,), *w["ln1"], eps=1e-12)
            f = F.linear(F.gelu(F.linear(x, w["up"], w["bup"])), w["dn"], w["bdn"])
            x = F.layer_norm(x + f, (E,), *w["ln2"], eps=1e-12)
        return x

    return "plain torch (sdpa)", run


def cmd_torch(a):
    import torch

    dev = torch.device(a.device)
    dt = torch.float16 if a.dtype == "fp16" else torch.float32
    if a.threads:
        torch.set_num_threads(a.threads)
    seqs = [[int(t) for t in l.split()] for l in open(a.ids) if l.strip()]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    name, enc = torch_encoder(torch, a, dev, dt)
    print(f"torch {torch.__version__}, {name}, {a.device} {a.dtype}, threads {torch.get_num_threads()}, "
          f"{len(seqs)} sentences, {sum(map(len, seqs))} tokens")

    def encode_all(bs):
        out = []
        for s in range(0, len(order), bs):
            batch = [seqs[i] for i in order[s:s + bs]]
            T = max(map(len, batch))
            ids = torch.zeros(len(batch), T, dtype=torch.long)
            mask = torch.zeros(len(batch), T, dtype=torch.long)
            for r, b in enumerate(batch):
                ids[r, :len(b)] = torch.tensor(b)
                mask[r, :len(b)] = 1
            ids, mask = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
            h = enc(ids, mask)
            m = mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu())
        return out

    best = (0.0, 0)
    with torch.inference_mode():
        for bs in [int(x) for x in a.batch_sizes.split(",")]:
            encode_all(bs)  # warm-up: kernels chosen, memory pooled
            if a.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            encode_all(bs)
            if a.device == "cuda":
                torch.cuda.synchronize()
            dt_s = time.perf_counter() - t0
            rate = len(seqs) / dt_s
            print(f"  batch {bs:5d}: {dt_s:8.3f} s  {rate:10.1f} sentences/s")
            best = max(best, (rate, bs))
    print(f"best: {best[0]:.1f} sentences/s at batch {best[1]}")


def cmd_st(a):
    import os

    import torch
    from sentence_transformers import SentenceTransformer

    if a.threads:
        torch.set_num_threads(a.threads)
    if not os.path.exists(os.path.join(a.model_dir, "model.safetensors")):
        from transformers import BertConfig, BertModel

        torch.manual_seed(1)
        BertModel(BertConfig.from_pretrained(a.model_dir), add_pooling_layer=False).save_pretrained(a.model_dir)
    m = SentenceTransformer(a.model_dir, device=a.device)
    if a.dtype == "fp16":
        m = m.half()
    sents = open(a.input, encoding="utf-8").read().splitlines()
    import sentence_transformers

    print(f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, {a.device} {a.dtype}, "
          f"threads {torch.get_num_threads()}, {len(sents)} sentences")
    best = (0.0, 0)
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        m.encode(sents[:2000], batch_size=bs, normalize_embeddings=True)  # warm-up
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        e = m.encode(sents, batch_size=bs, normalize_embeddings=True)
        if a.device == "cuda":
            torch.cuda.synchronize()
        dt_s = time.perf_counter() - t0
        rate = len(sents) / dt_s
        print(f"  batch {bs:5d}: {dt_s:8.3f} s  {rate:10.1f} sentences/s  ({e.shape[0]} x {e.shape[1]})")
        best = max(best, (rate, bs))
    print(f"best: {best[0]:.1f} sentences/s at batch {best[1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    g = sp.add_parser("gen")
    g.add_argument("--words", required=True)
    g.add_argument("-n", type=int, default=10000)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("-o", "--output", required=True)
    i = sp.add_parser("ids")
    i.add_argument("--forge", required=True)
    i.add_argument("-m", "--model", required=True)
    i.add_argument("-i", "--input", required=True)
    i.add_argument("-o", "--output", required=True)
    t = sp.add_parser("torch")
    t.add_argument("--ids", required=True)
    t.add_argument("--device", default="cuda")
    t.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--batch-sizes", default="32,64,128,256,512,1024")
    for k, v in dict(layers=6, hidden=384, heads=12, ff=1536, vocab=30522).items():
        t.add_argument(f"--{k}", type=int, default=v)
    st = sp.add_parser("st")
    st.add_argument("--model-dir", required=True)
    st.add_argument("-i", "--input", required=True)
    st.add_argument("--device", default="cuda")
    st.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    st.add_argument("--threads", type=int, default=0)
    st.add_argument("--batch-sizes", default="32,64,128,256,512,1024")
    a = ap.parse_args()
    {"gen": cmd_gen, "ids": cmd_ids, "torch": cmd_torch, "st": cmd_st}[a.cmd](a)


if __name__ == "__main__":
    main()
