"""test_info.py - `forge info`: every shared model and vocab file opens and shows the right
architecture and tensor count; every hostile file from hostile_gguf.py (and every truncation of
a small valid file) exits with status 1, exactly one line on stderr, and no signal."""
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_gguf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORGE = os.environ.get("FORGE_BIN", str(ROOT / "build" / "forge"))
SHARED = pathlib.Path(os.environ.get("FORGE_SHARED", str(ROOT.parent / "shared")))
if not SHARED.is_absolute():
    SHARED = (ROOT / SHARED).resolve()

# (file, architecture, tensor count) per MANIFEST.md
MODELS = [("models/stories260K.gguf", "llama", 48)]
MODELS += [("models/synth/synth-llama-%s.gguf" % t, "llama", 20)
           for t in ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M",
                     "Q4_K_M", "Q5_K_M", "Q6_K"]]
MODELS += [("models/synth/synth-qwen2-F16.gguf", "qwen2", 26),
           ("models/synth/synth-qwen3-F16.gguf", "qwen3", 24)]
VOCABS = [("bert-bge", "bert"), ("deepseek-coder", "llama"), ("deepseek-llm", "llama"),
          ("falcon", "falcon"), ("gpt-2", "gpt2"), ("llama-spm", "llama"), ("mpt", "mpt"),
          ("refact", "refact"), ("starcoder", "starcoder2")]
VOCABS = [("vocab/ggml-vocab-%s.gguf" % v, a, 0) for v, a in VOCABS]


def run_info(path, timeout=30):
    return subprocess.run([FORGE, "info", "-m", str(path)], capture_output=True, timeout=timeout)


def test_shared_data_present():
    assert (SHARED / "models" / "MANIFEST.md").is_file(), "FORGE_SHARED=%s lacks the test data" % SHARED
    listed = {m[0] for m in MODELS + VOCABS}
    found = {str(p.relative_to(SHARED)) for p in SHARED.glob("models/**/*.gguf")}
    found |= {str(p.relative_to(SHARED)) for p in SHARED.glob("vocab/*.gguf")}
    assert found == listed, "shared files changed: %s" % sorted(found ^ listed)


@pytest.mark.parametrize("rel,arch,n_tensors", MODELS + VOCABS)
def test_info_shared(rel, arch, n_tensors):
    r = run_info(SHARED / rel)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    assert "architecture: %s\n" % arch in out
    assert "tensors: %d\n" % n_tensors in out
    assert "general.architecture" in out
    assert "parameters: " in out
    if n_tensors:
        assert "token_embd.weight" in out


def test_info_stories_details():
    out = run_info(SHARED / "models/stories260K.gguf").stdout.decode()
    assert "llama.embedding_length" in out and "= 64" in out
    # long arrays are abbreviated: first elements then the count
    line = [l for l in out.splitlines() if "tokenizer.ggml.tokens" in l][0]
    assert '"<unk>", "<s>", "</s>"' in line and "(512 total)" in line
    assert len(line) < 300
    assert "parameters: 292800 " in out  # "260K" counts without the embeddings


def test_info_help_and_usage():
    r = subprocess.run([FORGE, "info", "--help"], capture_output=True)
    assert r.returncode == 0 and b"usage: forge info" in r.stdout
    r = subprocess.run([FORGE, "info"], capture_output=True)
    assert r.returncode == 2


def check_refused(path, name):
    r = run_info(path)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 1, "%s: exit %d (stderr %r)" % (name, r.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), "%s: stderr %r" % (name, err)
    assert lines[0].startswith("forge info: "), "%s: %r" % (name, lines[0])
    return lines[0]


CASES = hostile_gguf.cases()


@pytest.mark.parametrize("name,data", CASES, ids=[c[0] for c in CASES])
def test_hostile(tmp_path, name, data):
    p = tmp_path / (name + ".gguf")
    p.write_bytes(data)
    line = check_refused(p, name)
    assert str(p) in line  # names the file


def test_hostile_messages(tmp_path):
    want = {
        "version_1": "GGUF version 1 is not supported (expected 2 or 3)",
        "wrong_magic": "not a GGUF file: magic is 'GGML'",
        "tensor_type_4": "type id 4 is retired",
        "tensor_type_77": "unknown type id 77",
        "alignment_3": "key 'general.alignment': expected a nonzero power of two, found 3",
        "duplicate_tensor_name": "tensor 'token_embd.weight': duplicate name",
        "tensor_offset_misaligned": "offset 8 is not a multiple of the alignment 32",
        "tensor_negative_dim": "ne[1] is -1, expected >= 0",
        "kv_count_2_62": "metadata count 4611686018427387904",
    }
    for name, data in CASES:
        if name in want:
            p = tmp_path / (name + ".gguf")
            p.write_bytes(data)
            assert want[name] in check_refused(p, name)


def test_valid_small_and_v2(tmp_path):
    for v in (2, 3):
        p = tmp_path / ("ok%d.gguf" % v)
        p.write_bytes(hostile_gguf.valid_small(v))
        r = run_info(p)
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "gguf version: %d" % v in out
        assert "tensors: 3" in out
        assert "a.nested" in out and "[[1, 2], [\"x\"], []]" in out


def test_truncation_every_byte(tmp_path):
    data = hostile_gguf.valid_small()
    p = tmp_path / "t.gguf"
    p.write_bytes(data)
    _, tensors = hostile_gguf.read_gguf(p)
    # the file is needed up to the end of the last tensor's data, not its trailing padding
    needed = len(data) - ((-tensors[-1]["size"]) % 32)
    assert needed > len(data) - 32
    for k in range(needed):
        p.write_bytes(data[:k])
        check_refused(p, "truncated at %d" % k)
    p.write_bytes(data[:needed])
    assert run_info(p).returncode == 0


def test_missing_and_directory(tmp_path):
    check_refused(tmp_path / "nope.gguf", "missing")
    check_refused(tmp_path, "directory")
