"""The numpy BERT reference (tests/py/bert_ref.py) on all-MiniLM-L6-v2: against
sentence-transformers' published output (token ids and the first six dimensions of four
sentences, from third-party suites that compare with sentence-transformers), against
sentence-transformers itself when the package (and torch) is installed (skipped loudly
otherwise: scripts/install-deps.sh does not install torch), paraphrases closer than unrelated
sentences; and the converted GGUF files read back (`gguf` package) and fed to the same
reference: F32 as the safetensors, F16 cosine >= 0.999, Q8_0 >= 0.99 per sentence; and
llama.cpp's llama-embedding on the converted files when FORGE_LLAMA_EMBEDDING names one."""
import numpy as np
import pytest

import bert_ref as R

# sentence-transformers' all-MiniLM-L6-v2 output, first six dimensions (published, float32)
PUBLISHED = {
    "This is an example sentence": ([101, 2023, 2003, 2019, 2742, 6251, 102],
                                    [0.06765693, 0.06349593, 0.04871314, 0.07930495, 0.03744806, 0.00265273]),
    "Each sentence is converted.": ([101, 2169, 6251, 2003, 4991, 1012, 102],
                                    [0.07853645, 0.08856265, -0.00209270, -0.00717247, -0.01252624, 0.01881747]),
    "": ([101, 102], [-0.11883835, 0.04829856, -0.00254805, -0.01101118, 0.05195070, 0.01029179]),
    "Café déjà vu — 東京": ([101, 7668, 2139, 3900, 24728, 1517, 1879, 1755, 102],
                           [0.05083271, 0.00967685, 0.09635572, -0.00997369, -0.01987603, 0.01692343]),
}

# (sentence, paraphrase, unrelated)
TRIPLES = [
    ("The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply today."),
    ("How do I reset my password?", "I forgot my password, how can I change it?", "The recipe needs two eggs."),
    ("The weather is lovely today.", "It is a beautiful sunny day.", "He plays the violin in an orchestra."),
    ("A man is playing a guitar.", "Someone is strumming a guitar.", "The train to Paris was delayed."),
    ("Python is a programming language.", "Python is a language for writing software.", "Elephants live in herds."),
]

SENTENCES = [s for t in TRIPLES for s in t] + list(PUBLISHED) + [
    "naïve café résumé, Crème Brûlée", "東京都 中华人民共和国 한국어", "😀 emoji and symbols $100 #tag",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),  # truncated to 256 tokens
]


@pytest.fixture(scope="module")
def ref(minilm_dir):
    return R.load_safetensors(minilm_dir)


@pytest.fixture(scope="module")
def ref_ids(minilm_dir, ref):
    return R.tokenize_hf(minilm_dir, SENTENCES, ref.max_seq)


@pytest.fixture(scope="module")
def ref_emb(ref, ref_ids):
    return ref.embed_many(ref_ids)


def test_config_from_files(ref):
    assert (ref.pooling, ref.normalize, ref.max_seq, ref.n_ctx) == (R.POOL_MEAN, True, 256, 512)
    assert (ref.n_layer, ref.n_head) == (6, 12)


def test_matches_published_output(minilm_dir, ref):
    texts = list(PUBLISHED)
    ids = R.tokenize_hf(minilm_dir, texts, ref.max_seq)
    assert ids == [PUBLISHED[t][0] for t in texts]
    got = ref.embed_many(ids)
    want = np.array([PUBLISHED[t][1] for t in texts])
    err = np.abs(got[:, :6] - want).max()
    print(f"max |reference - published| over 4 x 6 values: {err:.2e}")
    assert err < 1e-6
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-12)


def test_truncates_as_sentence_transformers(ref_ids):
    assert len(ref_ids[-1]) == 256 and ref_ids[-1][0] == 101 and ref_ids[-1][-1] == 102


def test_paraphrases_closer_than_unrelated(ref_emb):
    for i, (a, b, c) in enumerate(TRIPLES):
        ea, eb, ec = ref_emb[3 * i: 3 * i + 3]
        para, unrel = R.cosine(ea, eb), max(R.cosine(ea, ec), R.cosine(eb, ec))
        print(f"{a!r}: paraphrase {para:.3f}, unrelated {unrel:.3f}")
        assert para > 0.5 and unrel < 0.3 and para > unrel + 0.3


def test_same_text_same_vector_and_batch_free(ref, ref_ids, ref_emb):
    """One sequence at a time: the vector depends on the sequence only."""
    again = ref.embed(ref_ids[3])
    assert np.array_equal(again, ref_emb[3])


@pytest.mark.parametrize("typ,min_cos", [("f32", 1 - 1e-12), ("f16", 0.999), ("q8_0", 0.99)])
def test_gguf_reproduces_safetensors(minilm_gguf, ref, ref_ids, ref_emb, typ, min_cos):
    g = R.load_gguf(minilm_gguf(typ))
    assert (g.pooling, g.normalize, g.max_seq, g.n_layer, g.n_head) == (R.POOL_MEAN, True, 256, 6, 12)
    if typ == "f32":  # identical tensors; only eps went through float32 (1e-12 -> 9.9999999e-13)
        for k, v in ref.w.items():
            assert np.array_equal(g.w[k], v), k
    got = g.embed_many(ref_ids)
    cos = [R.cosine(a, b) for a, b in zip(ref_emb, got)]
    print(f"{typ}: min cosine to the safetensors reference {min(cos):.8f} over {len(cos)} sentences")
    assert min(cos) >= min_cos
    if typ == "f32":
        assert np.abs(got - ref_emb).max() < 1e-9


def test_sentence_transformers_exact(minilm_dir, ref_emb):
    """cosine >= 0.9999 per sentence to sentence-transformers' own encode() (float32 torch,
    batched with padding, its own tokenizer and truncation)."""
    try:
        from sentence_transformers import SentenceTransformer
    except Exception as e:  # not installed, or torch missing / broken
        pytest.skip(f"SKIPPED LOUDLY: sentence-transformers not importable ({type(e).__name__}: {e}); "
                    "the exact comparison with it did not run (pip install sentence-transformers to run it)")
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    st = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
    cos = [R.cosine(a, b) for a, b in zip(st, ref_emb)]
    print(f"min cosine reference vs sentence-transformers: {min(cos):.10f}, max |diff| "
          f"{np.abs(st - ref_emb).max():.2e}")
    assert min(cos) >= 0.9999
    assert np.abs(st - ref_emb).max() < 1e-5


@pytest.mark.parametrize("typ,min_cos", [("f32", 0.9999), ("q8_0", 0.99)])
def test_llama_cpp_embeds_converted_file(minilm_gguf, minilm_dir, ref, typ, min_cos):
    """llama.cpp loads the converted file and its embeddings agree with the reference
    (llama.cpp's GELU is the tanh approximation: cosine ~0.999998 in F32). Runs when
    FORGE_LLAMA_EMBEDDING names a llama.cpp `llama-embedding` binary; skipped loudly otherwise.
    Sentences without Hangul: llama.cpp keeps only the first jamo of a syllable (cosine 0.73)."""
    import json
    import os
    import subprocess

    exe = os.environ.get("FORGE_LLAMA_EMBEDDING")
    if not exe or not os.access(exe, os.X_OK):
        pytest.skip("SKIPPED LOUDLY: FORGE_LLAMA_EMBEDDING does not name a llama.cpp llama-embedding binary; "
                    "the llama.cpp cross-check did not run")
    texts = [s for t in TRIPLES for s in t] + ["Café déjà vu — 東京", "naïve café résumé, Crème Brûlée"]
    r = subprocess.run([exe, "-m", str(minilm_gguf(typ)), "-p", "<#>".join(texts), "--embd-separator", "<#>",
                        "--embd-output-format", "array", "-t", "2"], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    got = np.array(json.loads(r.stdout.decode()))
    want = ref.embed_many(R.tokenize_hf(minilm_dir, texts, ref.max_seq))
    cos = [R.cosine(a, b) for a, b in zip(want, got)]
    print(f"llama.cpp {typ}: min cosine to the reference {min(cos):.7f} over {len(cos)} sentences")
    assert len(cos) == len(texts) and min(cos) >= min_cos
