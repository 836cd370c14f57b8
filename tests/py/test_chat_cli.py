"""`forge chat` as a person uses it: on a real terminal (tmux: send-keys, capture-pane) a
two-turn conversation whose second turn only appends to the KV cache, multi-line input, Ctrl-C
mid-answer (the chat goes on), Ctrl-C on a half-typed line, /reset, /system, /save and /load,
a context overflow with -c (the oldest turns dropped, a notice, no crash), Ctrl-D leaving with
status 0; and from scripts (stdin not a terminal): one answer per line, the same greedy answers
as the server gives for the same conversation. Model stories260K with --chat-template chatml
(it has no template of its own). tmux is installed by scripts/install-deps.sh --test."""
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid

import pytest
import requests

from conftest import FORGE_BIN, STORIES, gguf_with_kv_string

CHATML = ["--chat-template", "chatml"]
STATS = re.compile(r"\[cache: (\d+) tokens reused, (\d+) evaluated \((appended|re-rendered)\); "
                   r"answer: (\d+) tokens")


def chat(*args, inp, timeout=60):
    return subprocess.run([str(FORGE_BIN), "chat", "-m", str(STORIES), *map(str, args)],
                          input=inp, capture_output=True, text=True, timeout=timeout)


class Term:
    """`forge chat` in a detached tmux session of its own server (socket), 160x50."""

    def __init__(self, tmp_path, *args):
        if not shutil.which("tmux"):
            pytest.fail("tmux is not installed (bash scripts/install-deps.sh --test)", pytrace=False)
        self.sock = f"forge-test-{uuid.uuid4().hex[:8]}"
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g history-limit 100000\n")
        cmd = shlex.join([str(FORGE_BIN), "chat", "-m", str(STORIES), *map(str, args)])
        self.tmux("-f", str(conf), "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50",
                  f"cd {shlex.quote(str(tmp_path))} && {cmd}; echo EXITED rc=$?; sleep 600")
        self.wait_for(lambda s: s.rstrip().endswith(">"), what="the first prompt")

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "chat", *keys)

    def screen(self):
        """Everything the pane showed (scrollback too), wrapped lines joined."""
        return self.tmux("capture-pane", "-p", "-J", "-t", "chat", "-S", "-")

    def wait_for(self, cond, timeout=30.0, what="output"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.screen()
            if cond(s):
                return s
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}; the screen:\n{self.screen()[-3000:]}")

    def send(self, text):
        """Types a message, waits for its answer (the stats line and a new prompt); returns the
        new part of the screen."""
        before = self.screen().rstrip()
        n = len(STATS.findall(before))
        self.keys(text, "Enter")
        s = self.wait_for(lambda s: len(STATS.findall(s)) > n and s.rstrip().endswith(">"),
                          what=f"the answer to {text!r}")
        return s.rstrip()[len(before):]

    def cmd(self, text):
        """Types a /command, waits for its notice and a new prompt; returns the new part."""
        before = self.screen().rstrip()

        def done(s):
            new = s.rstrip()[len(before):]
            return f"{text}\n" in new and new.count("\n") >= 2 and new.endswith(">")

        self.keys(text, "Enter")
        s = self.wait_for(done, what=f"the notice of {text!r}")
        return s.rstrip()[len(before):]

    def close(self):
        try:
            self.tmux("kill-server")
        except subprocess.SubprocessError:
            pass


@pytest.fixture
def term(tmp_path):
    made = []

    def start(*args):
        t = Term(tmp_path, *args)
        made.append(t)
        return t

    yield start
    for t in made:
        t.close()


def stats(text):
    m = STATS.findall(text)
    assert m, text
    reused, evaluated, how, gen = m[-1]
    return int(reused), int(evaluated), how, int(gen)


def test_two_turns_reuse_the_cache_and_ctrl_d_leaves(term):
    t = term(*CHATML, "-n", 24, "--seed", 7, "--verbose", "-c", 1024)
    out1 = t.send("Hello there")
    r1, e1, how1, g1 = stats(out1)
    assert (r1, how1) == (0, "re-rendered") and 0 < g1 <= 24, out1
    out2 = t.send("How are you?")
    r2, e2, how2, g2 = stats(out2)
    # the whole first turn stays in the cache; only the new message and its frame are evaluated
    assert how2 == "appended" and r2 == e1 + g1, out2
    assert 0 < e2 < 80, out2
    # a message on two lines (trailing backslash), then one in a """ block
    t.keys("first line \\", "Enter")
    t.wait_for(lambda s: s.rstrip().endswith("..."), what="the continuation prompt")
    out3 = t.send("second line")
    assert "> first line \\\n... second line\n" in t.screen() and stats(out3)[2] == "appended"
    t.keys('"""', "Enter", "block one", "Enter", "block two", "Enter")
    out4 = t.send('"""')
    assert '> """\n... block one\n... block two\n... """\n' in t.screen() and stats(out4)[3] > 0
    # history: Up recalls the last message (the block), Up again the one before
    t.keys("Up", "Up")
    t.wait_for(lambda s: s.rstrip().endswith("> second line") or s.rstrip().endswith("second line"),
               what="the history recall")
    t.keys("C-c")
    t.wait_for(lambda s: s.rstrip().endswith(">"), what="a fresh prompt")
    t.keys("C-d")
    t.wait_for(lambda s: "EXITED rc=0" in s, what="forge chat to leave on Ctrl-D")


def test_ctrl_c_stops_the_answer_not_the_chat(term, tmp_path):
    # no -n and a large context: the answer would run for tens of seconds
    t = term(*CHATML, "-c", 8192, "-t", 1, "--seed", 3, "--verbose")
    for attempt in range(3):  # (should the model end an answer by itself before Ctrl-C)
        before = t.screen()
        n = len(STATS.findall(before))
        t.keys("Tell me a long story", "Enter")
        t.wait_for(lambda s: len(s) > len(before) + 400, what="the answer to start")
        t.keys("C-c")
        s = t.wait_for(lambda s: len(STATS.findall(s)) > n and s.rstrip().endswith(">"),
                       what="the answer to stop")
        if "[stopped]" in s[len(before.rstrip()):]:
            break
        t.cmd("/reset")
    assert "[stopped]" in s, s
    reused, evaluated, how, gen = stats(s)
    assert 0 < gen < 8192 - evaluated, s
    assert "EXITED" not in s
    # Ctrl-C on a half-typed line forgets it and asks again
    t.keys("never sent")
    t.wait_for(lambda s: s.rstrip().endswith("> never sent"), what="the typed text")
    t.keys("C-c")
    t.wait_for(lambda s: s.rstrip().endswith(">") and s.rstrip().splitlines()[-2].endswith("never sent"),
               what="a fresh prompt after Ctrl-C")
    # the conversation goes on: the stopped answer is in the cache and the history
    out = t.cmd("/save conv.json")
    assert "[saved 2 messages to conv.json]" in out
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert saved[0] == {"role": "user", "content": "Tell me a long story"} and saved[1]["content"]
    before = t.screen()
    t.keys("And then?", "Enter")
    t.wait_for(lambda s: len(s) > len(before) + 200, what="the second answer to start")
    t.keys("C-c")
    s = t.wait_for(lambda s: len(STATS.findall(s)) == 2 and s.rstrip().endswith(">"),
                   what="the second answer to stop")
    assert s.count("[stopped]") == 2, s
    r2, e2, how2, g2 = stats(s)
    assert how2 == "appended" and r2 == evaluated + gen, s
    t.keys("C-d")
    t.wait_for(lambda s: "EXITED rc=0" in s, what="forge chat to leave")


def test_reset_system_save_load(term, tmp_path):
    t = term(*CHATML, "-n", 12, "--seed", 5, "--verbose", "--system", "You tell stories.")
    out = t.send("Hello")
    r1, e1, _, g1 = stats(out)
    out = t.cmd("/system")
    assert "[system message: You tell stories.]" in out
    out = t.cmd("/reset")
    assert "[conversation reset]" in out
    out = t.send("Hi again")
    r2, e2, how2, _ = stats(out)
    # after /reset the history is gone: only the common start (BOS + system message) is reused
    assert how2 == "re-rendered" and 0 < r2 < e1, out
    out = t.cmd("/save conv.json")
    assert "[saved 3 messages to conv.json]" in out
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
    assert saved["messages"][0]["content"] == "You tell stories."
    assert saved["messages"][1]["content"] == "Hi again"
    # a saved conversation loads back (here: one written by hand) and the chat continues from it
    (tmp_path / "other.json").write_text(json.dumps({"messages": [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A story teller."}]}))
    out = t.cmd("/load other.json")
    assert "[loaded 3 messages from other.json]" in out
    out = t.cmd("/system")
    assert "[system message: Be kind.]" in out
    out = t.send("Tell me more")
    assert stats(out)[2] == "re-rendered"
    out = t.cmd("/save after.json")
    roles = [m["role"] for m in json.loads((tmp_path / "after.json").read_text())["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    # bad files and unknown commands: a notice, the chat goes on
    (tmp_path / "bad.json").write_text('{"messages": [{"role": "robot", "content": "x"}]}')
    out = t.cmd("/load bad.json")
    assert "role must be system, user or assistant" in out
    out = t.cmd("/load missing.json")
    assert "cannot open" in out
    out = t.cmd("/frobnicate")
    assert "unknown command '/frobnicate'" in out
    out = t.cmd("/help")
    assert "/save FILE" in out
    assert "EXITED" not in t.screen()


def test_context_overflow_drops_oldest_turns(term, tmp_path):
    t = term(*CHATML, "-c", 160, "-n", 40, "--seed", 11, "--verbose", "--system", "Stories.")
    dropped = 0
    for i, msg in enumerate(["Hello there", "How are you?", "Tell me more", "And then?", "OK"]):
        out = t.send(msg)
        assert stats(out)[3] > 0, out
        dropped += out.count("[context full: dropped")
    assert dropped >= 2, t.screen()
    out = t.cmd("/save conv.json")
    msgs = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert msgs[0] == {"role": "system", "content": "Stories."}  # the system message stays
    assert msgs[-2] == {"role": "user", "content": "OK"} and len(msgs) < 11
    # an answer cut by the full context: a notice, then the next turn drops turns and goes on
    t2 = term(*CHATML, "-c", 96, "--seed", 11, "--verbose")
    out = t2.send("Hello there")
    assert "[context full (96 tokens): the answer was cut" in out
    out = t2.send("Again")
    assert "[context full: dropped the 2 oldest messages" in out and stats(out)[3] > 0
    # a message that cannot fit even alone: refused with a notice, nothing sent
    out = t2.cmd("word " * 199 + "word")
    assert "the context holds 96 (see -c); it was not sent" in out
    t2.keys("C-d")
    t2.wait_for(lambda s: "EXITED rc=0" in s, what="forge chat to leave")


def test_piped_one_answer_per_line_matches_server(start_server):
    p = chat(*CHATML, "-n", 24, "--temp", 0, inp="Hello there\nHow are you?\n")
    assert p.returncode == 0, p.stderr
    assert "[the answer reached 24 tokens (-n)]" in p.stderr and "forge chat:" not in p.stderr
    # the same greedy answers as the server's for the same conversation: the second turn was
    # appended to the cache, the server renders the whole conversation
    s = start_server(*CHATML, "--ctx", "2048")
    url = s.url("/v1/chat/completions")
    msgs = [{"role": "user", "content": "Hello there"}]
    a1 = requests.post(url, json={"messages": msgs, "max_tokens": 24, "temperature": 0},
                       timeout=60).json()["choices"][0]["message"]["content"]
    msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": "How are you?"}]
    a2 = requests.post(url, json={"messages": msgs, "max_tokens": 24, "temperature": 0},
                       timeout=60).json()["choices"][0]["message"]["content"]
    assert p.stdout == a1 + "\n" + a2 + "\n"
    # commands and blank lines print nothing on stdout; notices go to stderr
    p2 = chat(*CHATML, "-n", 24, "--temp", 0, inp="\n/reset\nHello there\n/help\n")
    assert p2.returncode == 0 and p2.stdout == a1 + "\n", (p2.stdout, p2.stderr)
    assert "[conversation reset]" in p2.stderr and "/save FILE" in p2.stderr
    # seeded sampling is reproducible
    a = chat(*CHATML, "-n", 16, "--seed", 42, inp="Hi\nMore\n")
    b = chat(*CHATML, "-n", 16, "--seed", 42, inp="Hi\nMore\n")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.count("\n") >= 2


def test_bad_flags():
    for args, msg in ((["--temp", "x"], "--temp expects a number"),
                      (["--chat-template", "nope"], "unknown template 'nope'"),
                      (["-c", "4"], "-c expects an integer"),
                      (["--bogus"], "unknown option '--bogus'")):
        p = chat(*args, inp="")
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
    p = subprocess.run([str(FORGE_BIN), "chat"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "-m MODEL is required" in p.stderr
    p = subprocess.run([str(FORGE_BIN), "chat", "-m", "/nonexistent.gguf"], capture_output=True,
                       text=True, timeout=20, input="")
    assert p.returncode == 1 and p.stderr.startswith("forge chat: ") and p.stderr.count("\n") == 1
    p = subprocess.run([str(FORGE_BIN), "chat", "--help"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0 and "/help" in p.stdout and "--system" in p.stdout


def test_template_from_the_file(tmp_path):
    qwen = gguf_with_kv_string(STORIES, tmp_path / "q.gguf", "tokenizer.chat_template",
                               "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                               "<|im_end|>\n{% endfor %}")
    p = subprocess.run([str(FORGE_BIN), "chat", "-m", str(qwen), "-n", "24", "--temp", "0"],
                       input="Hello there\n", capture_output=True, text=True, timeout=60)
    want = chat(*CHATML, "-n", 24, "--temp", 0, inp="Hello there\n")
    assert p.returncode == 0 and p.stdout == want.stdout and p.stdout.strip(), (p.stdout, p.stderr)
    odd = gguf_with_kv_string(STORIES, tmp_path / "odd.gguf", "tokenizer.chat_template",
                              "{% for m in messages %}### {{ m.content }}{% endfor %}")
    p = subprocess.run([str(FORGE_BIN), "chat", "-m", str(odd)], input="hi\n", capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "odd.gguf" in p.stderr and "--chat-template" in p.stderr, p.stderr
