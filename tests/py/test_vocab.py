"""Tokenizer test vectors: every $FORGE_SHARED/vocab/ggml-vocab-*.gguf with its .inp/.out
(llama.cpp's test-tokenizer-0 format) must tokenize exactly (no BOS/EOS, no special-token
parsing), and byte-exact round trips detokenize(tokenize(s)) == s must hold for the lossless
tokenizers (SentencePiece and byte-level BPE; WordPiece is lossy). Missing data fails.
One `forge tokenize --batch-file` / `forge detokenize --batch-file` call per vocabulary."""
import glob
import os
import struct
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("FORGE_BIN", os.path.join(REPO, "build", "forge"))
SHARED = os.environ.get("FORGE_SHARED", os.path.join(REPO, "..", "shared"))
if not os.path.isabs(SHARED):
    SHARED = os.path.join(REPO, SHARED)
SEP = b"\n__ggml_vocab_test__\n"
VOCABS = sorted(glob.glob(os.path.join(SHARED, "vocab", "ggml-vocab-*.gguf")))


def read_model_name(path):
    """tokenizer.ggml.model of a GGUF file (a minimal metadata walk)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF", path
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def rstr():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n)

        def skip(t):
            if t == 8:
                rstr()
            elif t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                if et in sizes:
                    f.seek(sizes[et] * n, 1)
                else:
                    for _ in range(n):
                        skip(et)
            else:
                f.seek(sizes[t], 1)

        for _ in range(n_kv):
            key = rstr().decode()
            (t,) = struct.unpack("<I", f.read(4))
            if key == "tokenizer.ggml.model" and t == 8:
                return rstr().decode()
            skip(t)
    return None


def load_case(vocab):
    inp = open(vocab + ".inp", "rb").read()
    out = open(vocab + ".out", "rb").read().decode().split("\n")
    assert inp.endswith(SEP), f"{vocab}.inp does not end with the separator"
    strings = inp[: -len(SEP)].split(SEP)
    assert out[-1] == "", f"{vocab}.out does not end with a newline"
    expected = [line.split() for line in out[:-1]]
    assert len(strings) == len(expected), f"{vocab}: {len(strings)} strings vs {len(expected)} .out lines"
    return strings, expected


def run(args, **kw):
    return subprocess.run([BIN] + args, capture_output=True, timeout=120, **kw)


def test_vocab_data_present():
    assert os.path.exists(BIN), f"forge binary not found: {BIN}"
    assert VOCABS, f"no vocabularies under {SHARED}/vocab (set FORGE_SHARED)"


@pytest.mark.parametrize("vocab", VOCABS, ids=[os.path.basename(v) for v in VOCABS])
def test_vocab_vectors(vocab):
    strings, expected = load_case(vocab)
    r = run(["tokenize", "-m", vocab, "--no-bos", "--batch-file", vocab + ".inp"])
    assert r.returncode == 0, r.stderr.decode()
    got = r.stdout.decode().split("\n")
    assert got[-1] == ""
    got = [line.split() for line in got[:-1]]
    assert len(got) == len(expected)
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    print(f"{os.path.basename(vocab)}: {len(expected) - len(bad)}/{len(expected)} strings match")
    details = "\n".join(f"  #{i} {strings[i][:40]!r}: got {got[i][:12]} want {expected[i][:12]}" for i in bad[:5])
    assert not bad, f"{len(bad)} of {len(expected)} strings differ:\n{details}"


@pytest.mark.parametrize("vocab", VOCABS, ids=[os.path.basename(v) for v in VOCABS])
def test_vocab_round_trip(vocab, tmp_path):
    model = read_model_name(vocab)
    assert model is not None, f"{vocab}: no tokenizer.ggml.model"
    strings, _ = load_case(vocab)
    r = run(["tokenize", "-m", vocab, "--no-bos", "--batch-file", vocab + ".inp"])
    assert r.returncode == 0, r.stderr.decode()
    ids = tmp_path / "ids.txt"
    ids.write_bytes(r.stdout)
    r = run(["detokenize", "-m", vocab, "--no-clean", "--batch-file", str(ids)])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.endswith(SEP)
    texts = r.stdout[: -len(SEP)].split(SEP)
    assert len(texts) == len(strings)
    if model == "bert":  # WordPiece is lossy (lowercase, no accents): spot check only
        assert texts[strings.index(b"Hello world")] == b" hello world"
        return
    bad = [i for i, (a, b) in enumerate(zip(strings, texts)) if a != b]
    print(f"{os.path.basename(vocab)}: {len(strings) - len(bad)}/{len(strings)} round trips exact")
    details = "\n".join(f"  #{i} {strings[i][:40]!r} -> {texts[i][:40]!r}" for i in bad[:5])
    assert not bad, f"{len(bad)} round trips differ:\n{details}"


LONG = [b"a" * 20000, "\u4e2d\u6587".encode() * 10000, b"!" * 20000, b" " * 20000 + b"x",
        b"\n" * 20000, "\u00fc".encode() * 20000, b"1" * 20000]


@pytest.mark.parametrize("vocab", VOCABS, ids=[os.path.basename(v) for v in VOCABS])
def test_vocab_long_runs(vocab, tmp_path):
    """Runs of 20,000 of one character tokenize (a greedy regex group once ran out of PCRE2's
    JIT stack at ~10,000 letters with deepseek-llm) and round-trip for lossless tokenizers."""
    inp = tmp_path / "long.inp"
    inp.write_bytes(SEP.join(LONG) + SEP)
    r = run(["tokenize", "-m", vocab, "--no-bos", "--batch-file", str(inp)])
    assert r.returncode == 0, r.stderr.decode()
    ids = tmp_path / "ids.txt"
    ids.write_bytes(r.stdout)
    assert len(r.stdout.split(b"\n")) == len(LONG) + 1
    if read_model_name(vocab) == "bert":
        return
    r = run(["detokenize", "-m", vocab, "--no-clean", "--batch-file", str(ids)])
    assert r.returncode == 0, r.stderr.decode()
    texts = r.stdout[: -len(SEP)].split(SEP)
    assert texts == LONG
