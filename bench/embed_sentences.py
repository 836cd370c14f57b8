#!/usr/bin/env python3
"""embed_sentences.py - the embedding throughput workload (issue 14, docs/PERF.md): N English
sentences of about 20 tokens each ([CLS] and [SEP] included, all-MiniLM-L6-v2's WordPiece),
one per line, made from fixed word lists with a fixed seed, so that every run and every
machine embeds the same text.

    python3 bench/embed_sentences.py -n 10000 -o /tmp/sentences.txt [--model-dir HF_DIR]

With --model-dir (a Hugging Face directory with tokenizer.json) it prints the token counts.
Then: build/forge embed -m MINILM.gguf -f /tmp/sentences.txt --timing > /dev/null, and
bench/bench_embed_st.py for sentence-transformers on the same file.
"""
import argparse
import random

SUBJECTS = ["The old fisherman", "A young engineer", "My neighbour's cat", "The city council", "Our small team",
            "The quiet librarian", "A tired student", "The new manager", "Her younger brother", "The local bakery",
            "An experienced pilot", "The research group", "A curious child", "The night guard", "Their best friend"]
VERBS = ["repaired", "painted", "described", "carried", "discovered", "ordered", "cleaned", "measured",
         "photographed", "rebuilt", "explained", "delivered", "borrowed", "tested", "organised"]
OBJECTS = ["the wooden bridge", "a broken bicycle", "three large boxes of books", "the garden fence",
           "an ancient map", "the kitchen window", "a silver teapot", "the morning newspaper", "two heavy chairs",
           "the blue umbrella", "a set of old letters", "the school's computer", "a bag of ripe apples"]
PLACES = ["near the river", "before the storm", "after lunch on Sunday", "in the crowded market",
          "at the edge of town", "during the long winter", "behind the train station", "under the bright lights",
          "next to the museum", "on a rainy afternoon"]
TAILS = ["without any help", "for the first time", "with great care", "as everyone watched", "in record time",
         "while singing quietly", "to everyone's surprise", "once again"]


def sentences(n, seed=20240614):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
        s += " " + rng.choice(TAILS)
        if rng.random() < 0.5:
            s += ", " + rng.choice(["then went home", "and nobody noticed", "which took an hour",
                                    "so we were late", "and it worked"])
        out.append(s + ".")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--model-dir", help="Hugging Face directory: print token statistics")
    a = ap.parse_args()
    s = sentences(a.n)
    with open(a.out, "w") as f:
        f.write("\n".join(s) + "\n")
    if a.model_dir:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(f"{a.model_dir}/tokenizer.json")
        tok.no_padding()
        lens = [len(e.ids) for e in tok.encode_batch(s)]
        print(f"{len(s)} sentences, tokens per sentence: mean {sum(lens) / len(lens):.1f}, min {min(lens)}, "
              f"max {max(lens)}, total {sum(lens)}")


if __name__ == "__main__":
    main()
