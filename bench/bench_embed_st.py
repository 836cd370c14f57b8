#!/usr/bin/env python3
"""bench_embed_st.py - sentence-transformers' throughput on the embedding workload (issue 14,
docs/PERF.md), to set beside `forge embed --timing` on the same machine: encode() of every line
of a file (bench/embed_sentences.py) at several batch sizes, the best reported. Needs
sentence-transformers and torch (not test dependencies: install them in a throwaway venv).

    python3 bench/bench_embed_st.py HF_DIR /tmp/sentences.txt [--device cpu|cuda] [--fp16]
        [--batch 16,32,64,128,256] [--threads N] [--compare forge.jsonl]

--compare: the min cosine between its vectors and `forge embed --json` output of the same file.
A HF_DIR without model.safetensors (the config and tokenizer files only, e.g. carried to a GPU
machine without the 90 MB of weights) gets random weights of the config's shape first: the
speed does not depend on the values (--compare then means nothing).
"""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("file")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    ap.add_argument("--batch", default="16,32,64,128,256")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--compare", help="forge embed --json output of the same file")
    a = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    if a.threads:
        torch.set_num_threads(a.threads)
    import os

    if not os.path.exists(os.path.join(a.model_dir, "model.safetensors")):
        from transformers import AutoConfig, AutoModel

        torch.manual_seed(1)
        AutoModel.from_config(AutoConfig.from_pretrained(a.model_dir)).save_pretrained(a.model_dir)
        print(f"{a.model_dir}: no model.safetensors, random weights of its config's shape written")
    texts = open(a.file).read().splitlines()
    model = SentenceTransformer(a.model_dir, device=a.device)
    if a.fp16:
        model.half()
    model.encode(texts[:256], batch_size=32)  # warm-up
    best = None
    for bs in [int(x) for x in a.batch.split(",")]:
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb = model.encode(texts, batch_size=bs, convert_to_numpy=True)
        if a.device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rate = len(texts) / dt
        print(f"sentence-transformers {a.device}{' fp16' if a.fp16 else ''} batch {bs}: {len(texts)} sentences in "
              f"{dt:.2f} s = {rate:.1f} sentences/s (torch {torch.__version__}, {torch.get_num_threads()} threads)",
              flush=True)
        if best is None or rate > best[1]:
            best = (bs, rate, emb)
    print(f"best: batch {best[0]}, {best[1]:.1f} sentences/s")
    if a.compare:
        got = np.array([json.loads(x) for x in open(a.compare)], dtype=np.float64)
        ref = best[2].astype(np.float64)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"forge vs sentence-transformers: min cosine {cos.min():.7f}, mean {cos.mean():.7f} over {len(cos)}")


if __name__ == "__main__":
    main()
