"""`forge tokenize` / `forge detokenize` at the command line: ids, --no-bos, --special,
--pieces, -f/stdin input, --escape, detokenize from arguments and stdin, exit codes and
one-line errors; and the llama-bpe / qwen2 pre-tokenizers (which have no vocabulary in the
shared data) split exactly as the published regexes do under Python's `regex` module."""
import json
import os
import subprocess

import pytest
import regex

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("FORGE_BIN", os.path.join(REPO, "build", "forge"))
SHARED = os.environ.get("FORGE_SHARED", os.path.join(REPO, "..", "shared"))
if not os.path.isabs(SHARED):
    SHARED = os.path.join(REPO, SHARED)
STORIES = os.path.join(SHARED, "models", "stories260K.gguf")
SPM = os.path.join(SHARED, "vocab", "ggml-vocab-llama-spm.gguf")
GPT2 = os.path.join(SHARED, "vocab", "ggml-vocab-gpt-2.gguf")
SEP = "\n__ggml_vocab_test__\n"

# Pre-tokenizer regex lists as llama.cpp's llama-vocab.cpp writes them (its std::regex
# adaptations included), applied the way it applies them: each regex to every piece left by
# the previous one, unmatched gaps kept as pieces.
CONTR = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
QWEN2 = [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
GPT4O = [r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + CONTR +
         r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + CONTR +
         r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
TEKKEN = [r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?"
          r"((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+"]
DEEPSEEK3 = [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
             r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
             r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
SEED_CODER = [CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"]
BAILING = [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"]
BLOOM = [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"]
VIKING = BLOOM + [r"\p{N}"]
STARCODER = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]
FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", STARCODER[1], "[0-9][0-9][0-9]"]
DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", STARCODER[1], r"\p{N}+", "[0-9][0-9][0-9]"]


def llama_split(patterns, text):
    pieces = [text]
    for p in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(p, piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def forge(*args, stdin=None):
    for p in (BIN, STORIES, SPM, GPT2):
        if not os.path.exists(p):
            pytest.fail(f"missing {p} (set FORGE_BIN / FORGE_SHARED)", pytrace=False)
    return subprocess.run([BIN, *args], input=stdin, capture_output=True, timeout=60)


def ids(r):
    assert r.returncode == 0, r.stderr.decode()
    return [int(x) for x in r.stdout.split()]


def test_tokenize_prompt_bos_and_no_bos():
    r = forge("tokenize", "-m", STORIES, "-p", "Once upon a time, there was a little")
    assert ids(r) == [1, 403, 407, 261, 378, 432, 383, 286, 261, 376]
    assert r.stdout.endswith(b"\n") and r.stdout.count(b"\n") == 1
    r = forge("tokenize", "-m", STORIES, "--no-bos", "-p", "Once upon a time, there was a little")
    assert ids(r) == [403, 407, 261, 378, 432, 383, 286, 261, 376]
    assert ids(forge("tokenize", "-m", STORIES, "-p", "")) == [1]


def test_tokenize_file_stdin_escape(tmp_path):
    text = "Hello\nworld \u00e9\U0001F389"
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode())
    a = ids(forge("tokenize", "-m", SPM, "-f", str(f)))
    b = ids(forge("tokenize", "-m", SPM, stdin=text.encode()))
    c = ids(forge("tokenize", "-m", SPM, "--escape", "-p", "Hello\\nworld \\xc3\\xa9\U0001F389"))
    d = ids(forge("tokenize", "-m", SPM, "-p", "Hello\\nworld"))  # no escapes without --escape
    assert a == b == c
    assert a[0] == 1 and 13 in a  # <0x0A>
    assert 13 not in d


def test_tokenize_special_and_pieces():
    plain = ids(forge("tokenize", "-m", SPM, "--no-bos", "-p", "<s>Hi</s>"))
    special = ids(forge("tokenize", "-m", SPM, "--no-bos", "--special", "-p", "<s>Hi</s>"))
    assert 1 not in plain and 2 not in plain
    assert special[0] == 1 and special[-1] == 2
    r = forge("tokenize", "-m", SPM, "--pieces", "-p", "Hi\n\U0001F389")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "1\t'<s>'"
    assert lines[1] == "6324\t' Hi'"
    assert "13\t'\\n'" in lines
    assert "243\t'\\xf0'" in lines  # byte tokens are escaped


def test_detokenize_args_stdin_special():
    r = forge("detokenize", "-m", SPM, "15043", "3186")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"Hello world"  # leading space of the first piece removed, no newline
    r = forge("detokenize", "-m", SPM, stdin=b"1 15043, 3186\n")
    assert r.stdout == b" Hello world"  # like llama.cpp: the BOS piece takes the strip
    r = forge("detokenize", "-m", SPM, "--special", "1", "15043")
    assert r.stdout == b"<s> Hello"
    r = forge("detokenize", "-m", GPT2, "15496", "837", "995")
    assert r.stdout == b"Hello, world"  # " ," cleaned as llama.cpp does for gpt-2
    r = forge("detokenize", "-m", GPT2, "--no-clean", "15496", "837", "995")
    assert r.stdout == b"Hello , world"
    # options after the ids (they used to be read as ids)
    r = forge("detokenize", "-m", GPT2, "15496", "837", "995", "--no-clean")
    assert r.returncode == 0 and r.stdout == b"Hello , world", r.stderr
    r = forge("detokenize", "1", "15043", "-m", SPM, "--special")
    assert r.returncode == 0 and r.stdout == b"<s> Hello", r.stderr


@pytest.mark.parametrize("args,code,msg", [
    (["tokenize", "-m", "/nonexistent.gguf", "-p", "x"], 1, "forge tokenize: /nonexistent.gguf"),
    (["tokenize", "-m", GPT2, "--pre", "nope", "-p", "x"], 1, "tokenizer.ggml.pre 'nope' is not a supported pre-tokenizer"),
    (["detokenize", "-m", SPM, "15043", "99999"], 1, "forge detokenize: detokenize: token id 99999 out of range [0, 32000)"),
    (["detokenize", "-m", SPM, "12x"], 1, "forge detokenize: '12x' is not a token id"),
    (["tokenize", "-m", SPM, "--words", "-p", "x"], 1, "has no pre-tokenizer"),
    # a pre-tokenizer that would be silently unused is an error
    (["tokenize", "-m", SPM, "--pre", "gpt-2", "-p", "x"], 1,
     "pre-tokenizer 'gpt-2' asked for, but the 'llama' tokenizer has no pre-tokenizers"),
    (["detokenize", "-m", SPM, "15043", "--bogus"], 2, "unknown or incomplete option '--bogus'"),
    (["tokenize", "-p", "x"], 2, "-m MODEL is required"),
    (["tokenize", "-m", SPM, "--bogus"], 2, "unknown or incomplete option '--bogus'"),
])
def test_errors(args, code, msg):
    r = forge(*args)
    assert r.returncode == code
    err = r.stderr.decode()
    assert err.count("\n") == 1, err
    assert msg in err, err


def test_help():
    for cmd in ("tokenize", "detokenize"):
        r = forge(cmd, "--help")
        assert r.returncode == 0 and b"usage: forge " + cmd.encode() in r.stdout


def split_strings():
    inp = open(os.path.join(SHARED, "vocab", "ggml-vocab-gpt-2.gguf.inp"), "rb").read().decode()
    strings = inp[: -len(SEP)].split(SEP)
    strings += [
        "I'M HERE, you'RE there; they'LL go",
        "Numbers 1234567 and 12.5% of 3,000,000",
        "tabs\t\tand  double  spaces   \n\n  end  ",
        "\u4e16\u754c\u3000\u4f60\u597d \uc548\ub155\ud558\uc138\uc694",
        "caf\u00e9 na\u00efve \u0393\u03b5\u03b9\u03ac \u043f\u0440\u0438\u0432\u0435\u0442",
        "emoji \U0001F389\U0001F600!! end\r\nwindows\rmac",
        "\u00a0nbsp\u2009thin\u2028line",
        "x = foo(bar)[0] -> {'k': \"v\"}  # comment",
        "\u0661\u0662\u0663 arabic digits \u00bd \u2163",
        "\u00c9COLE Stra\u00dfe McDonald's iPhone XMLHttpRequest \u00dcn\u00efc\u00f6d\u00e9 \u00c0B \u00e0b",
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u30ab\u30bf\u30ab\u30ca\u3002\u6f22\u5b57\uff01",
        "e\u0301 combining, \u0915\u094d\u0937 devanagari, a/b//c\n/x",
    ]
    return strings


@pytest.mark.parametrize("pre,patterns", [
    ("llama-bpe", LLAMA3), ("qwen2", QWEN2), ("gpt-4o", GPT4O), ("llama4", GPT4O),
    ("tekken", TEKKEN), ("deepseek-v3", DEEPSEEK3), ("seed-coder", SEED_CODER),
    ("bailingmoe", BAILING), ("bloom", BLOOM), ("viking", VIKING), ("glm4", LLAMA3),
    ("starcoder", STARCODER), ("falcon", FALCON), ("default", DEFAULT),
])
def test_pre_tokenizer_split_matches_regex(pre, patterns, tmp_path):
    strings = split_strings()
    f = tmp_path / "in.txt"
    f.write_bytes((SEP.join(strings) + SEP).encode())
    r = forge("tokenize", "-m", GPT2, "--pre", pre, "--words", "--batch-file", str(f))
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().split("\n")[:-1]
    assert len(lines) == len(strings)
    bad = []
    for s, line in zip(strings, lines):
        want = llama_split(patterns, s)
        assert "".join(want) == s
        if json.loads(line) != want:
            bad.append((s, json.loads(line), want))
    print(f"{pre}: {len(strings) - len(bad)}/{len(strings)} strings split as the regexes do")
    assert not bad, "\n".join(f"{s!r}: got {g} want {w}" for s, g, w in bad[:5])
