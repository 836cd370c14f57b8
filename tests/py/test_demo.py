# test_demo.py - scripts/demo.sh (README command 1) does not fail for reasons of its own: a model
# whose `forge info` output is longer than a pipe holds (the script used to pipe it into `head`
# under pipefail and die of SIGPIPE), a port that is taken (it used to send its request to
# whatever listened there; now it says so and stops, without a request), and the server's
# readiness is awaited through its /health. The script runs from a copy in a temp dir with
# FORGE_DEMO_BIN (no build); tests/run.sh also runs it from a fresh `git clone`.
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import FORGE_BIN, REPO


@pytest.fixture
def demo_dir(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    return tmp_path


def run_demo(d, *args, env=None, timeout=180):
    e = {k: v for k, v in os.environ.items() if k != "FORGE_DEMO_PORT"}
    e.update({"FORGE_DEMO_BIN": str(FORGE_BIN), **(env or {})})
    return subprocess.run(["bash", str(d / "scripts" / "demo.sh"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


def test_demo_runs(demo_dir):
    r = run_demo(demo_dir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '"object":"text_completion"' in r.stdout and "== done" in r.stdout
    assert (demo_dir / "models" / "demo-tiny-llama-q8_0.gguf").exists()


def test_demo_long_info_output(demo_dir):
    # ~1000 tensors: `forge info` prints far more than a pipe buffer (64 KiB)
    m = demo_dir / "deep.gguf"
    s = subprocess.run([str(FORGE_BIN), "synth", "--arch", "llama", "--n-embd", "32", "--n-layer", "110",
                        "--n-ff", "64", "--n-head", "4", "--seed", "1", "-o", str(m)], capture_output=True,
                       timeout=120)
    assert s.returncode == 0, s.stderr
    info = subprocess.run([str(FORGE_BIN), "info", "-m", str(m)], capture_output=True, timeout=60)
    assert len(info.stdout) > 65536
    r = run_demo(demo_dir, m)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "== done" in r.stdout


def test_demo_port_taken(demo_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy.setblocking(False)
        port = busy.getsockname()[1]
        r = run_demo(demo_dir, env={"FORGE_DEMO_PORT": str(port)})
        assert r.returncode == 1, (r.returncode, r.stdout[-1000:], r.stderr[-1000:])
        assert f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
        assert "forge serve stopped before it was ready" in r.stderr
        assert "text_completion" not in r.stdout
        with pytest.raises(BlockingIOError):
            busy.accept()  # the demo sent nothing to whatever listened there
