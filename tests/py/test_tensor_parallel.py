"""--tensor-parallel N from the command line and the server (stories260K: n_head 8, n_head_kv 4,
n_ff 172 shard 2 and 4 ways): `forge run` greedy ids equal llama.cpp's golden at N = 2 and 4;
N = 3 is refused in one line naming the key; `forge serve --tensor-parallel 2` answers 24
concurrent streaming greedy requests with the texts an unsharded server gives one at a time,
and is idle afterwards; `forge bench --tensor-parallel 2 --json` runs. The ranks are CPU thread
groups here; FORGE_TP_DEVICE=cuda runs the same on GPUs (N of them)."""
import json
import os
import subprocess

import pytest

from conftest import FORGE_BIN, FORGE_SHARED
from test_server_load import prompts, run_threads, sequential, stream_one, wait_idle

DEVICE = os.environ.get("FORGE_TP_DEVICE", "cpu")
STORIES = FORGE_SHARED / "models" / "stories260K.gguf"


def golden():
    return json.loads((FORGE_SHARED / "golden" / "stories260K.json").read_text())


def run(*args, timeout=120):
    # FORGE_VERBOSE=1: the load's memory line (it names the tensor-parallel size) off a terminal too
    return subprocess.run([str(FORGE_BIN), "run", "--device", DEVICE, *map(str, args)], capture_output=True,
                          timeout=timeout, env={**os.environ, "FORGE_VERBOSE": "1"})


@pytest.mark.parametrize("tp", [2, 4])
def test_run_greedy_ids_match_golden(tp):
    for case in golden()["cases"]:
        p = run("-m", STORIES, "-p", case["prompt"], "-n", 48, "--temp", 0, "--ids", "-t", 2,
                "--tensor-parallel", tp)
        assert p.returncode == 0, p.stderr
        ids = [int(x) for x in p.stdout.split()]
        eog = case["first_eog_index"]
        assert ids == case["greedy_tokens"][: eog if eog is not None else 48]
        assert f"tensor-parallel {tp}".encode() in p.stderr


def test_run_refuses_sizes_that_do_not_divide():
    p = run("-m", STORIES, "-p", "Hi", "-n", 4, "--tensor-parallel", 3)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.decode().strip().splitlines()
    assert lines[-1] == (f"forge run: {STORIES}: llama.attention.head_count = 8 is not divisible by the "
                         "tensor-parallel size 3"), lines
    p = run("-m", STORIES, "-p", "Hi", "--tensor-parallel", 9)
    assert p.returncode == 2 and b"--tensor-parallel" in p.stderr


def test_serve_concurrent_matches_unsharded_sequential(start_server):
    items = prompts()[:24]
    ref = start_server("--parallel", "8", "--ctx", "256", "--device", DEVICE, "--threads", "1")
    want = sequential(ref, items)
    ref.close()
    s = start_server("--parallel", "8", "--ctx", "256", "--device", DEVICE, "--threads", "2",
                     "--tensor-parallel", "2")
    got = run_threads(lambda i: stream_one(s, *items[i]), len(items))
    for i, (text, finish, usage, _rid, _n) in enumerate(got):
        assert (text, finish, usage["completion_tokens"]) == want[i], (i, items[i])
    wait_idle(s)
    assert "tensor-parallel" in s.output()


def test_serve_refuses_at_load():
    p = subprocess.run([str(FORGE_BIN), "serve", "-m", str(STORIES), "--port", "0", "--device", DEVICE,
                        "--tensor-parallel", "3"], capture_output=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stderr.decode().strip().splitlines()[-1] == (
        f"forge serve: {STORIES}: llama.attention.head_count = 8 is not divisible by the tensor-parallel size 3")


def test_bench_json():
    p = subprocess.run([str(FORGE_BIN), "bench", "-m", str(STORIES), "-p", "32", "-n", "8", "-r", "1", "--json",
                        "--device", DEVICE, "-t", "2", "--tensor-parallel", "2"], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert j["model"] and j.get("tensor_parallel") == 2
