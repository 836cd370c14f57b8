"""WordPiece as the model was trained: `forge tokenize` on all-MiniLM-L6-v2 converted to GGUF
against the model's own tokenizer (Hugging Face `tokenizers` on its tokenizer.json, what
sentence-transformers runs), on curated strings (accents, CJK, Hangul, scripts with spacing
marks, punctuation, long words, control characters, emoji) and on every code point whose
Unicode category has not changed since Unicode 3.2 (so that the library's older Unicode
tables and Forge's agree on it; see docs/EMBEDDINGS.md for the newer ones). Also: the shared
llama.cpp vectors (ggml-vocab-bert-bge) agree with the library on every case."""
import os
import subprocess
import unicodedata

import pytest

from conftest import FORGE_BIN, FORGE_SHARED
from bert_ref import hf_tokenizer

SEP = "\n__ggml_vocab_test__\n"

CURATED = [
    "Hello World!", "  leading and   inner   spaces  ", "tab\tseparated\nlines\r\nhere",
    # accents, precomposed and decomposed; Vietnamese with stacked marks
    "naïve café résumé", "Crème Brûlée à la carte", "cafe\u0301 na\u0131\u0308ve", "Cửa Việt Tiếng Việt",
    "İstanbul'da ılık", "Straße STRASSE ß ẞ", "ΣΑΣ ΟΔΟΣ σας", "Ελληνικά κείμενα με τόνους",
    # CJK (split per character), kana, Hangul (jamo after decomposition), compatibility ideographs
    "東京都 中华人民共和国", "日本語のテキストとカタカナ", "한국어 텍스트 입니다", "\uf900\uf901\uf902",
    "\U00020000\U0002a6d6", "\u3000全角スペース\u3000",
    # scripts with spacing (Mc) and nonspacing (Mn) marks, right-to-left scripts
    "नमस्ते दुनिया", "தமிழ் மொழி", "สวัสดีชาวโลก", "Привет, мир!", "مرحبا بالعالم", "שָׁלוֹם עוֹלָם",
    # punctuation and symbols: ASCII symbols split, others stay in words
    "e-mail u.s.a. $100.00 50% #tag @user (a+b)*c=d", "don't can't won't", "x²+y³ ①②③ ⅫⅧ ⓐⓑ",
    "a—b–c «quoted» „low“ ‘single’", "¿Qué? ¡Sí! …", "§1 ¶2 † ‡ • ‰", "Ｆｕｌｌｗｉｄｔｈ！",
    # emoji, ZWJ sequences, variation selectors, skin tones
    "😀 👍🏽 👨\u200d👩\u200d👧 ❤️ 🇫🇷", "this is 🦙.cpp",
    # control and format characters, U+FFFD, NUL, odd white space
    "a\x00b", "a\x07b\x1bc", "hello\x0bworld\x0cagain", "a\x85b", "a\u200bb\u200cc\u200dd", "\ufeffbom",
    "a\u2028b\u2029c", "a\u00a0b\u2009c\u202fd", "a\ue000b", "\ufffd", "a\x7fb",
    # long words: 100 characters still pieced, 101 one [UNK]; counted after normalization
    "a" * 100, "a" * 101, "é" * 100, "e\u0301" * 100, "한" * 33, "한" * 34,
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis", "ab" * 60,
    # U+2581 (llama.cpp's phantom space) inside and around words
    "x\u2581y", "\u2581", "\u2581\u2581a", "a\u2581",
    # look-alikes of special tokens (not parsed without --special)
    "[unused0] [cls]x [sep] ##ing #", "",
]


def forge_tokenize(model, texts, *flags):
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"forge-bert-tok-{os.getpid()}.inp")
    with open(path, "w", encoding="utf-8") as f:
        f.write(SEP.join(texts) + SEP)
    try:
        r = subprocess.run([str(FORGE_BIN), "tokenize", "-m", str(model), "--batch-file", path, *flags],
                           capture_output=True, timeout=300)
    finally:
        os.unlink(path)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().split("\n")
    assert lines[-1] == ""
    return [[int(x) for x in line.split()] for line in lines[:-1]]


def compare(model, hf, texts, add_special=True, flags=()):
    got = forge_tokenize(model, texts, *(() if add_special else ("--no-bos",)), *flags)
    want = hf.encode_batch(texts, add_special_tokens=add_special)
    assert len(got) == len(texts)
    return [(i, t, g, w.ids, w.tokens) for i, (t, g, w) in enumerate(zip(texts, got, want)) if g != w.ids]


def test_curated_strings_match_hf(minilm_gguf, minilm_dir):
    hf = hf_tokenizer(minilm_dir)
    bad = compare(minilm_gguf("f32"), hf, CURATED)
    print(f"{len(CURATED) - len(bad)}/{len(CURATED)} curated strings tokenize as Hugging Face's tokenizer")
    details = "\n".join(f"  {t[:40]!r}: forge {g[:12]} hf {w[:12]} {tk[:12]}" for _, t, g, w, tk in bad[:8])
    assert not bad, f"{len(bad)} strings differ:\n{details}"


def stable_code_points():
    """Every code point whose category is the same in Unicode 3.2 and in Python's tables
    (Forge's tables are generated from the same Python), unassigned ones thinned out."""
    old = unicodedata.ucd_3_2_0
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat != old.category(c):
            continue
        if cat == "Cn" and cp % 97:
            continue
        out.append(cp)
    return out


@pytest.mark.parametrize("fmt", ["{}", "x{}y", "A{}{}B"])
def test_every_code_point_matches_hf(minilm_gguf, minilm_dir, fmt):
    hf = hf_tokenizer(minilm_dir)
    cps = stable_code_points()
    texts = [fmt.format(chr(c), chr(c)) for c in cps]
    bad = compare(minilm_gguf("f32"), hf, texts, add_special=False)
    print(f"{fmt!r}: {len(cps) - len(bad)}/{len(cps)} code points tokenize as Hugging Face's tokenizer")
    details = "\n".join(f"  U+{cps[i]:04X} {t!r}: forge {g} hf {w} {tk}" for i, t, g, w, tk in bad[:10])
    assert not bad, f"{len(bad)} code points differ:\n{details}"


def test_special_tokens_in_text(minilm_gguf, minilm_dir):
    """Hugging Face always matches special tokens in input text; Forge does with --special
    (parse_special), and without it tokenizes them as text."""
    hf = hf_tokenizer(minilm_dir)
    texts = ["[CLS] hello [SEP] world [MASK] [PAD] [UNK]", "x[SEP]y", "[sep] is not special"]
    assert not compare(minilm_gguf("f32"), hf, texts, flags=("--special",))
    plain = forge_tokenize(minilm_gguf("f32"), ["x[SEP]y"])[0]
    assert plain == [101, 1060, 1031, 19802, 1033, 1061, 102]  # [CLS] x [ sep ] y [SEP]


def test_shared_vectors_agree_with_hf(minilm_dir):
    """llama.cpp's WordPiece test vectors (ggml-vocab-bert-bge, the same uncased vocabulary)
    and Hugging Face's tokenizer agree on every case, so following Hugging Face keeps them
    passing (tests/py/test_vocab.py checks Forge against the .out file)."""
    vocab = FORGE_SHARED / "vocab" / "ggml-vocab-bert-bge.gguf"
    inp = (vocab.parent / (vocab.name + ".inp")).read_bytes().decode()
    out = (vocab.parent / (vocab.name + ".out")).read_text().split("\n")[:-1]
    texts = inp[: -len(SEP)].split(SEP)
    assert len(texts) == len(out)
    hf = hf_tokenizer(minilm_dir)
    got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    bad = [(t, g, o) for t, g, o in zip(texts, got, out) if g != [int(x) for x in o.split()]]
    assert not bad, f"llama.cpp and Hugging Face differ on {len(bad)} cases: {bad[:3]}"
