"""`forge embed` on all-MiniLM-L6-v2 (converted at test time by scripts/convert_hf_bert.py)
against the numpy reference computed from the Hugging Face safetensors (tests/py/bert_ref.py):
cosine per sentence >= 0.9999 in F32, >= 0.999 in F16, >= 0.99 in Q8_0 on the CPU; batch
invariance (an input alone and among 255 others); sentence-transformers' tokenization,
special-token strings in the text included ([SEP] in a text is the special token, as Hugging
Face's tokenizer takes it); truncation only when asked (--truncate: the first 255 tokens and
[SEP], as sentence-transformers truncates); refusals: a model without pooling, an empty input
list, an encoder asked to generate. The GPU against the CPU when FORGE_DEVICE / a GPU is at hand
(SKIPPED loudly otherwise: the lead runs them)."""
import json
import subprocess

import numpy as np
import pytest

import bert_ref as R
from conftest import FORGE_BIN
from test_bert_ref import SENTENCES

# special-token strings in text (sentence-transformers / Hugging Face match them), odd spacing
EXTRA = [
    "first part [SEP] second part",
    "[CLS] already has a cls",
    "a [MASK] in the middle",
    "  leading and trailing spaces  ",
    "tab\tseparated\twords",
]
TEXTS = SENTENCES + EXTRA  # the last of SENTENCES is 400+ tokens: --truncate


def forge_embed(model, texts, *args, device="cpu", check=True):
    r = subprocess.run([str(FORGE_BIN), "embed", "-m", str(model), "--json", "--device", device, *args],
                       input="\n".join(texts) + "\n", capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
        return np.array([json.loads(line) for line in r.stdout.splitlines()], dtype=np.float64)
    return r


@pytest.fixture(scope="module")
def ref(minilm_dir):
    return R.load_safetensors(minilm_dir)


@pytest.fixture(scope="module")
def ref_emb(minilm_dir, ref):
    return ref.embed_many(R.tokenize_hf(minilm_dir, TEXTS, ref.max_seq))


@pytest.mark.parametrize("typ,min_cos", [("f32", 0.9999), ("f16", 0.999), ("q8_0", 0.99)])
def test_cpu_matches_reference(minilm_gguf, ref_emb, typ, min_cos):
    got = forge_embed(minilm_gguf(typ), TEXTS, "--truncate")
    assert got.shape == ref_emb.shape
    cos = [R.cosine(a, b) for a, b in zip(got, ref_emb)]
    print(f"forge embed {typ} (cpu): min cosine {min(cos):.9f}, mean {np.mean(cos):.9f}, "
          f"max |diff| {np.abs(got - ref_emb).max():.2e} over {len(cos)} sentences")
    assert min(cos) >= min_cos
    if typ == "f32":
        assert np.abs(got - ref_emb).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # sentence_transformers.normalize


def test_batch_invariance(minilm_gguf):
    """The same input alone, and at position 100 among 255 others of varied lengths (several
    steps of --batch-tokens 2048, other sequences before and after it in its step): max |diff|
    <= 1e-6 per element (F32 on the CPU: only the summation order of a GEMM tile can differ)."""
    model = minilm_gguf("f32")
    target = "The quick brown fox jumps over the lazy dog, again and again."
    others = [f"sentence number {i}: " + " ".join(["word"] * (i % 37)) for i in range(255)]
    alone = forge_embed(model, [target])[0]
    batch = others[:100] + [target] + others[100:]
    many = forge_embed(model, batch)
    assert many.shape == (256, alone.shape[0])
    d = np.abs(many[100] - alone).max()
    print(f"batch invariance: max |diff| {d:.2e}")
    assert d <= 1e-6
    # and the others are themselves (a step's sequences do not see one another)
    again = forge_embed(model, others[:3] + others[250:])
    assert np.abs(again[:3] - many[:3]).max() <= 1e-6 and np.abs(again[3:] - many[251:]).max() <= 1e-6


def test_text_output_and_prompts(minilm_gguf):
    model = minilm_gguf("f32")
    r = subprocess.run([str(FORGE_BIN), "embed", "-m", str(model), "--device", "cpu", "-p", "Hello world",
                        "-p", "Goodbye"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [[float(x) for x in line.split()] for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(len(v) == 384 for v in rows)
    js = forge_embed(model, ["Hello world", "Goodbye"])
    assert np.array_equal(np.array(rows), js)  # %.9g both ways: the same floats


def test_too_long_needs_truncate(minilm_dir, minilm_gguf, ref):
    model = minilm_gguf("f32")
    long_text = " ".join(["word"] * 300)
    r = forge_embed(model, ["short", long_text], check=False)
    assert r.returncode == 1
    assert "input 2 has 302 tokens, the model takes at most 256" in r.stderr, r.stderr
    got = forge_embed(model, ["short", long_text], "--truncate")
    want = ref.embed_many(R.tokenize_hf(minilm_dir, ["short", long_text], 256))  # HF: 255 tokens + [SEP]
    assert min(R.cosine(a, b) for a, b in zip(got, want)) >= 0.9999


def test_empty_lines_and_empty_input(minilm_gguf, ref):
    model = minilm_gguf("f32")
    got = forge_embed(model, ["", "x", ""])  # empty lines are inputs: [CLS] [SEP]
    assert got.shape[0] == 3
    assert R.cosine(got[0], ref.embed([101, 102])) >= 0.9999
    r = subprocess.run([str(FORGE_BIN), "embed", "-m", str(model), "--device", "cpu"], input="",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "no input" in r.stderr


def test_model_without_pooling_refused(minilm_dir, tmp_path):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import convert_hf_bert

    out = tmp_path / "minilm-nopool.gguf"
    convert_hf_bert.convert(minilm_dir, out, "f16", pooling_arg="none", log=lambda *a: None)
    r = forge_embed(out, ["hello"], check=False)
    assert r.returncode == 1
    assert "bert.pooling_type is absent or 0 (none)" in r.stderr, r.stderr


def test_encoder_cannot_generate(minilm_gguf):
    r = subprocess.run([str(FORGE_BIN), "run", "-m", str(minilm_gguf("f32")), "--device", "cpu", "-p", "hi",
                        "-n", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "it has no logits to generate text from" in r.stderr, r.stderr


@pytest.mark.parametrize("typ,min_cos", [("f32", 0.9999), ("f16", 0.999), ("q8_0", 0.99)])
def test_cuda_matches_cpu_and_reference(minilm_gguf, ref_emb, typ, min_cos):
    """CUDA against the CPU and the reference (the same thresholds as the CPU's). Runs where
    a GPU is usable; SKIPPED loudly otherwise."""
    model = minilm_gguf(typ)
    r = forge_embed(model, TEXTS, "--truncate", device="cuda", check=False)
    if r.returncode != 0 and ("forge embed: cuda: " in r.stderr or "built without CUDA" in r.stderr):
        pytest.skip(f"SKIPPED LOUDLY: no usable GPU for forge embed --device cuda ({r.stderr.strip()[-200:]}); "
                    "the GPU embedding comparison did not run")
    assert r.returncode == 0, r.stderr[-3000:]
    gpu = np.array([json.loads(line) for line in r.stdout.splitlines()], dtype=np.float64)
    cpu = forge_embed(model, TEXTS, "--truncate")
    c_ref = [R.cosine(a, b) for a, b in zip(gpu, ref_emb)]
    c_cpu = [R.cosine(a, b) for a, b in zip(gpu, cpu)]
    print(f"forge embed {typ} (cuda): min cosine to the reference {min(c_ref):.9f}, to the CPU {min(c_cpu):.9f}")
    assert min(c_ref) >= min_cos and min(c_cpu) >= min_cos
