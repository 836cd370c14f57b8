# test_server.py - `forge serve` end to end with real clients (curl, the `openai` package, requests)
# on loopback, model stories260K: completions and chat (JSON and SSE), parameters, logprobs/echo
# against the llama.cpp golden, request ids, status and cancel, disconnects, every bad-input
# status with its OpenAI-style error body, chat templates, loading/overload/shutdown.
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests
import openai
import pytest

from conftest import FORGE_SHARED, STORIES, ForgeServer, gguf_with_kv_string

PROMPT = "Once upon a time, there was a little"
GOLDEN = json.loads((FORGE_SHARED / "golden" / "stories260K.json").read_text())


def client(server, key="none"):
    return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0, timeout=60)


def post(server, path, body, **kw):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    return requests.post(server.url(path), data=body, timeout=60,
                         headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw)


def assert_error(r, status, param=None, code=None, contains=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"], e
    assert isinstance(e["type"], str) and e["type"], e
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    if contains is not None:
        assert contains in e["message"], e
    assert r.headers.get("x-request-id"), r.headers
    return e


def sse_events(resp_lines):
    """data payloads of an SSE stream (the [DONE] marker included as the string)."""
    out = []
    for line in resp_lines:
        if line.startswith("data: "):
            p = line[6:]
            out.append(p if p == "[DONE]" else json.loads(p))
    return out


# ---- basics
def test_health_models_metrics(server):
    r = requests.get(server.url("/health"))
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["x-request-id"].startswith("req-")
    m = client(server).models.list()
    assert [x.id for x in m.data] == ["stories260K"]
    met = server.metrics()
    for k in ("forge_queue_depth", "forge_running_sequences", "forge_kv_pages_used",
              "forge_kv_pages_free", "forge_tokens_out_total", 'forge_requests_total{status="200"}',
              'forge_ttft_seconds_bucket{le="+Inf"}', "forge_ttft_seconds_count",
              "forge_itl_seconds_sum"):
        assert k in met, k


def test_ctx_beyond_training_warns(start_server):
    s = start_server("--ctx", "4096", "--parallel", "1")
    assert ("forge serve: warning: --ctx 4096 is beyond the 2048 tokens the model was trained on"
            in s.output()), s.output()
    assert client(s).completions.create(model="stories260K", prompt="x", max_tokens=1).usage.completion_tokens == 1


def test_metrics_kv_pages_from_start(start_server):
    # the KV pool's gauges are right before the first request (they used to read 0 free)
    s = start_server("--ctx", "256", "--parallel", "2")
    m = s.metrics()
    assert m["forge_kv_pages_free"] == 2 * 256 / 16 and m["forge_kv_pages_used"] == 0, m


def test_completion_curl(server):
    body = json.dumps({"model": "stories260K", "prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    out = subprocess.run(["curl", "-s", "-i", "--max-time", "30", "-H", "Content-Type: application/json",
                          "-d", body, server.url("/v1/completions")],
                         capture_output=True, text=True, check=True).stdout
    head, _, payload = out.partition("\n\n")  # text mode folds \r\n
    assert head.startswith("HTTP/1.1 200"), head
    j = json.loads(payload)
    rid = [l.split(":", 1)[1].strip() for l in head.split("\n") if l.lower().startswith("x-request-id:")]
    assert rid == [j["id"]] and j["id"].startswith("cmpl-")
    assert j["object"] == "text_completion" and j["model"] == "stories260K"
    c = j["choices"][0]
    assert c["index"] == 0 and c["finish_reason"] == "length" and c["logprobs"] is None
    assert c["text"].startswith(" girl named Lily"), c["text"]  # the golden greedy text
    assert j["usage"] == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
                          "prompt_tokens_details": {"cached_tokens": 0}}  # < 1 page: no hit


def test_chat_curl_stream(server):
    body = json.dumps({"model": "stories260K", "messages": [{"role": "user", "content": "Hello"}],
                       "max_tokens": 6, "temperature": 0, "stream": True})
    out = subprocess.run(["curl", "-s", "-N", "--max-time", "30", "-H", "Content-Type: application/json",
                          "-d", body, server.url("/v1/chat/completions")],
                         capture_output=True, text=True, check=True).stdout
    ev = sse_events(out.split("\n"))
    assert ev[-1] == "[DONE]" and ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert ev[-2]["choices"][0]["finish_reason"] == "length" and ev[-2]["choices"][0]["delta"] == {}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-1])
    j = json.loads(subprocess.run(["curl", "-s", "--max-time", "30", "-d", body.replace('"stream": true', '"stream": false'),
                                   server.url("/v1/chat/completions")], capture_output=True, text=True, check=True).stdout)
    assert j["choices"][0]["message"]["content"] == text and j["usage"]["completion_tokens"] == 6


def test_completion_curl_stream(server):
    body = json.dumps({"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True})
    out = subprocess.run(["curl", "-s", "-N", "--max-time", "30", "-d", body, server.url("/v1/completions")],
                         capture_output=True, text=True, check=True).stdout
    ev = sse_events(out.split("\n"))
    assert ev[-1] == "[DONE]"
    chunks = ev[:-1]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text.startswith(" girl named"), text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert len({c["id"] for c in chunks}) == 1


def test_openai_completions_stream_equals_nonstream(server):
    c = client(server)
    r = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=24, temperature=0)
    text = r.choices[0].text
    assert text.startswith(GOLDEN["cases"][0]["greedy_text"][:20])
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == 10
    parts, finish, usage = [], None, None
    for ch in c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=24, temperature=0,
                                   stream=True, stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
            assert ch.choices == []
            continue
        parts.append(ch.choices[0].text)
        finish = ch.choices[0].finish_reason or finish
    assert "".join(parts) == text
    assert finish == "length"
    assert usage.total_tokens == 34


def test_openai_chat_stream_equals_nonstream(server):
    c = client(server)
    msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me about a cat."}]
    r = c.chat.completions.create(model="stories260K", messages=msgs, max_tokens=20, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and msg.content
    assert r.usage.completion_tokens == 20
    roles, parts = [], []
    for ch in c.chat.completions.create(model="stories260K", messages=msgs, max_tokens=20, temperature=0,
                                        stream=True):
        assert ch.object == "chat.completion.chunk"
        d = ch.choices[0].delta
        if d.role:
            roles.append(d.role)
        if d.content:
            parts.append(d.content)
    assert roles == ["assistant"]
    assert "".join(parts) == msg.content
    # max_completion_tokens is the newer name of max_tokens
    r2 = c.chat.completions.create(model="stories260K", messages=msgs, max_completion_tokens=5, temperature=0)
    assert r2.usage.completion_tokens == 5 and msg.content.startswith(r2.choices[0].message.content)


def test_stop_strings(server):
    c = client(server)
    full = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    assert "Lily" in full
    r = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=30, temperature=0, stop="Lily")
    assert r.choices[0].text == full[: full.index("Lily")]
    assert r.choices[0].finish_reason == "stop"
    r = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=30, temperature=0,
                             stop=["zzz", "named"], stream=False)
    assert r.choices[0].text == full[: full.index("named")]
    parts = [ch.choices[0].text for ch in c.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=30, temperature=0, stop=["named"], stream=True)]
    assert "".join(parts) == full[: full.index("named")]


def test_n_seed_and_sampling_params(server):
    c = client(server)
    kw = dict(model="stories260K", prompt="The dog", max_tokens=16, temperature=1.0, top_p=0.9,
              seed=1234, n=3, extra_body={"top_k": 20, "min_p": 0.01, "repeat_penalty": 1.1})
    a = c.completions.create(**kw, presence_penalty=0.5, frequency_penalty=0.2)
    b = c.completions.create(**kw, presence_penalty=0.5, frequency_penalty=0.2)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]  # same seed, same text
    assert len({ch.text for ch in a.choices}) > 1  # choices use different seeds
    assert a.usage.completion_tokens == 48 and a.usage.prompt_tokens == b.usage.prompt_tokens > 1
    g = c.completions.create(model="stories260K", prompt="The dog", max_tokens=10, temperature=0, n=2)
    assert g.choices[0].text == g.choices[1].text
    # streaming n=2: chunks carry their choice index
    texts = {0: "", 1: ""}
    for ch in c.completions.create(model="stories260K", prompt="The dog", max_tokens=10, temperature=0,
                                   n=2, stream=True):
        for x in ch.choices:
            texts[x.index] += x.text
    assert texts[0] == texts[1] == g.choices[0].text


def test_prompt_as_token_ids(server):
    c = client(server)
    case = GOLDEN["cases"][0]
    a = c.completions.create(model="stories260K", prompt=case["prompt_tokens"], max_tokens=10, temperature=0)
    b = c.completions.create(model="stories260K", prompt=[PROMPT], max_tokens=10, temperature=0)
    assert a.choices[0].text == b.choices[0].text
    assert a.usage.prompt_tokens == len(case["prompt_tokens"])


def test_logprobs_completions_shape(server):
    c = client(server)
    r = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    golden_first = GOLDEN["cases"][0]["greedy_top2"][0]
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0.0 and 1 <= len(top) <= 3
        assert top[tok] == pytest.approx(l, abs=1e-5)  # greedy: the chosen token is the top one
        assert max(top.values()) == pytest.approx(l, abs=1e-5)
    assert golden_first[0][0] is not None


def test_echo_logprobs_match_golden(server):
    """lm-evaluation-harness scoring: echo + max_tokens 0 + logprobs -> the prompt's logprobs."""
    case = GOLDEN["cases"][0]
    r = post(server, "/v1/completions", {"prompt": case["prompt_tokens"], "max_tokens": 0, "echo": True,
                                         "logprobs": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    lp = ch["logprobs"]
    n = len(case["prompt_tokens"])
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == n
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, n):
        want = case["positions"][i - 1]["next_token_logprob"]
        assert not (abs(lp["token_logprobs"][i] - want) > 2e-3), (i, lp["token_logprobs"][i], want)
    assert ch["text"].endswith("there was a little")
    assert r.json()["usage"]["completion_tokens"] == 0
    # string prompt + echo without logprobs: the prompt text comes back first
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "echo": True, "temperature": 0})
    assert r.json()["choices"][0]["text"].startswith(PROMPT + " girl")


def test_chat_logprobs_shape(server):
    c = client(server)
    r = c.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": "Hi"}],
                                  max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(x.token for x in content) == r.choices[0].message.content
    for x in content:
        assert len(x.top_logprobs) == 2 and x.logprob <= 0
        assert bytes(x.bytes).decode() == x.token
        assert x.top_logprobs[0].logprob == pytest.approx(x.logprob, abs=1e-5)


def test_special_tokens_in_user_text_stay_text(server):
    # "</s>" typed by a user must not become the EOS control token (id 2)
    r = post(server, "/v1/completions", {"prompt": "</s><s>", "max_tokens": 0, "echo": True, "logprobs": 0})
    assert r.status_code == 200, r.text
    toks = r.json()["choices"][0]["logprobs"]["tokens"]
    assert r.json()["usage"]["prompt_tokens"] > 3, toks  # BOS + several text pieces, not 2 controls
    assert "".join(toks).strip() == "</s><s>"
    t = post(server, "/apply-template", {"messages": [{"role": "user", "content": "a </s> <s> b"}]}).json()
    assert 2 not in t["tokens"] and t["tokens"].count(1) == 1 and t["tokens"][0] == 1
    assert t["format"] == "plain" and t["prompt"] == "User: a </s> <s> b\nAssistant:"


# ---- request ids, status, cancel, disconnect
LONG = 2000  # tokens of a "long" request (context 2048): what the cancellation tests race against


def long_stream(server, max_tokens=LONG, n=1):
    """Starts a long streaming completion; returns (session, response, lines, id) after its
    first chunk."""
    cl = requests.Session()
    resp = cl.post(server.url("/v1/completions"), stream=True, timeout=60,
                   json={"prompt": "Once", "max_tokens": max_tokens, "temperature": 0,
                         "ignore_eos": True, "stream": True, "n": n})
    assert resp.status_code == 200
    lines = resp.iter_lines(decode_unicode=True)
    for line in lines:
        if line.startswith("data: "):
            rid = json.loads(line[6:])["id"]
            break
    assert rid == resp.headers["x-request-id"]
    return cl, resp, lines, rid


def until_cancel_lands(attempt, tries=4):
    """A fast engine may finish a long request before the test cancels it: attempt() returns
    False when that happened (nothing to check), True when the cancellation was checked."""
    for _ in range(tries):
        if attempt():
            return
    pytest.fail(f"every one of {tries} requests finished before it could be cancelled")


def wait_state(server, rid, states, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = requests.get(server.url(f"/v1/requests/{rid}")).json()
        if j["state"] in states:
            return j
        time.sleep(0.02)
    raise AssertionError(f"request {rid} stuck in {j}")


def wait_idle(server, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = server.metrics()
        if m["forge_kv_pages_used"] == 0 and m["forge_running_sequences"] == 0 and m["forge_queue_depth"] == 0:
            return m
        time.sleep(0.02)
    raise AssertionError(f"engine not idle: {m}")


def test_request_status_and_delete(server):
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
    rid = r.json()["id"]
    j = requests.get(server.url(f"/v1/requests/{rid}")).json()
    assert j["id"] == rid and j["state"] == "finished"
    assert j["prompt_tokens"] == 10 and j["completion_tokens"] == 4

    def attempt():
        cl, resp, lines, rid = long_stream(server, n=4)
        try:
            j = requests.get(server.url(f"/v1/requests/{rid}")).json()
            assert j["prompt_tokens"] == 2 and j["n"] == 4
            if j["state"] != "running":
                return False
            d = requests.delete(server.url(f"/v1/requests/{rid}"))
            assert d.status_code == 200 and d.json()["id"] == rid
            if d.json()["state"] == "finished":
                return False
            assert d.json()["state"] == "cancelled"
            ev = sse_events(lines)  # the stream ends with cancelled finishes and [DONE]
            assert ev[-1] == "[DONE]"
            fins = [e["choices"][0]["finish_reason"] for e in ev[:-1] if e["choices"][0]["finish_reason"]]
            assert len(fins) == 4 and "cancelled" in fins, fins
            assert ev[-2]["usage"]["completion_tokens"] < 4 * LONG
            return True
        finally:
            resp.close()
            cl.close()
            wait_idle(server)

    until_cancel_lands(attempt)
    assert_error(requests.get(server.url("/v1/requests/cmpl-999999")), 404, code="request_not_found")


def test_disconnect_mid_stream_cancels(server):
    def attempt():
        cl, resp, lines, rid = long_stream(server, n=4)
        next(lines)
        resp.close()
        cl.close()
        j = wait_state(server, rid, {"cancelled", "finished"})
        wait_idle(server)
        if j["state"] == "finished":
            return False
        assert j["state"] == "cancelled" and j["completion_tokens"] < 4 * LONG
        return True

    until_cancel_lands(attempt)


def test_disconnect_non_streaming_cancels(server):
    def attempt():
        before = server.metrics()['forge_engine_requests_total{result="cancelled"}']
        s = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({"prompt": "Once", "max_tokens": LONG, "ignore_eos": True, "temperature": 0,
                           "n": 4}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 10
        while server.metrics()["forge_running_sequences"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        s.close()
        wait_idle(server)
        cancelled = server.metrics()['forge_engine_requests_total{result="cancelled"}'] - before
        assert 0 <= cancelled <= 4
        return cancelled > 0

    until_cancel_lands(attempt)


# ---- bad input
@pytest.mark.parametrize("body,param,contains", [
    ('{"prompt": "x", "max_tokens": 5', None, "malformed JSON"),
    ('[1, 2]', None, "JSON object"),
    ('{"prompt": "x", "prompt": "y"}', None, "duplicate"),
    ('{"prompt": "x", "temperature": "hot"}', "temperature", "must be a number"),
    ('{"prompt": "x", "temperature": 3}', "temperature", "must be in"),
    ('{"prompt": "x", "max_tokens": -1}', "max_tokens", "must be in"),
    ('{"prompt": "x", "max_tokens": 100000}', "max_tokens", "must be in"),
    ('{"prompt": "x", "max_tokens": "5"}', "max_tokens", "must be an integer"),
    ('{"prompt": "x", "n": 0}', "n", "must be in"),
    ('{"prompt": "x", "n": 17}', "n", "must be in"),
    ('{"prompt": "x", "top_k": -1}', "top_k", "must be in"),
    ('{"prompt": "x", "repeat_penalty": 0}', "repeat_penalty", "must be in"),
    ('{"prompt": "x", "stream_options": 1}', "stream_options", "object"),
    ('{"prompt": "x", "echo": true, "logprobs": 1, "stream": true}', "echo", "streaming"),
    ('{"model": 7, "prompt": "x"}', "model", "string"),
    ('{"prompt": "x", "stop": ["a","b","c","d","e","f","g","h","i"]}', "stop", "at most"),
    ('{"prompt": "x", "stop": 5}', "stop", "string or an array"),
    ('{"prompt": "x", "logprobs": 99}', "logprobs", "must be in"),
    ('{"prompt": "x", "stream": "yes"}', "stream", "boolean"),
    ('{"max_tokens": 5}', "prompt", "required"),
    ('{"prompt": 5}', "prompt", "string or an array"),
    ('{"prompt": []}', "prompt", "must not be empty"),
    ('{"prompt": [1, 99999]}', "prompt", "out of range"),
    ('{"prompt": ["a", "b"]}', "prompt", "one prompt"),
    ('{"prompt": "x", "top_p": null, "seed": 1.5}', "seed", "integer"),
])
def test_bad_completion_input_400(server, body, param, contains):
    assert_error(post(server, "/v1/completions", body), 400, param=param, contains=contains)


@pytest.mark.parametrize("body,param", [
    ('{"messages": "hi"}', "messages"),
    ('{"messages": []}', "messages"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "messages"),
    ('{"messages": [{"role": "user"}]}', "messages"),
    ('{"messages": [{"role": "user", "content": 5}]}', "messages"),
    ('{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', "top_logprobs"),
    ('{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}', "max_completion_tokens"),
])
def test_bad_chat_input_400(server, body, param):
    assert_error(post(server, "/v1/chat/completions", body), 400, param=param)


def test_nesting_depth_and_garbage(server):
    deep = '{"prompt": "x", "extra": ' + "[" * 100 + "]" * 100 + "}"
    assert_error(post(server, "/v1/completions", deep), 400, code="json_too_deep")
    # 60 levels parse (in "metadata", which chat accepts and ignores)
    ok = ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "metadata": {"a": '
          + "[" * 58 + "]" * 58 + "}}")
    assert post(server, "/v1/chat/completions", ok).status_code == 200
    assert_error(post(server, "/v1/completions", b"\xff\xfe\x00garbage"), 400)
    assert_error(post(server, "/v1/completions", b""), 400)
    assert_error(post(server, "/v1/completions", '{"prompt": "a\\u0000b"}'), 400)


# ---- no silently ignored fields
@pytest.mark.parametrize("path,extra,param,code", [
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ("/v1/chat/completions", {"function_call": "auto"}, "function_call", "unsupported_parameter"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format", "unsupported_parameter"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ("/v1/chat/completions", {"parallel_tool_calls": False}, "parallel_tool_calls", "unsupported_parameter"),
    ("/v1/chat/completions", {"store": True}, "store", "unsupported_parameter"),
    ("/v1/chat/completions", {"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
    ("/v1/chat/completions", {"echo": True}, "echo", "unsupported_parameter"),
    ("/v1/chat/completions", {"user": 5}, "user", None),
    ("/v1/chat/completions", {"temprature": 0.5}, "temprature", "unknown_parameter"),
    ("/v1/completions", {"suffix": "and then"}, "suffix", "unsupported_parameter"),
    ("/v1/completions", {"tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
    ("/v1/completions", {"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
    ("/v1/completions", {"metadata": {"a": "b"}}, "metadata", "unknown_parameter"),
    ("/v1/completions", {"extra": 1}, "extra", "unknown_parameter"),
])
def test_unsupported_fields_400(server, path, extra, param, code):
    body = {"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]}
    e = assert_error(post(server, path, {**body, "max_tokens": 1, **extra}), 400, param=param, code=code)
    assert f"'{param}'" in e["message"], e


def test_noop_fields_accepted(server):
    msgs = [{"role": "user", "content": "x"}]
    for extra in ({"user": "alice"}, {"metadata": {"k": "v"}}, {"response_format": {"type": "text"}},
                  {"tool_choice": "none"}, {"tools": []}, {"tools": None, "functions": None},
                  {"store": False}, {"modalities": ["text"]}, {"service_tier": "auto"}):
        r = post(server, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1, **extra})
        assert r.status_code == 200, (extra, r.text)
    for extra in ({"user": "alice"}, {"suffix": ""}, {"suffix": None}):
        r = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 1, **extra})
        assert r.status_code == 200, (extra, r.text)
    # a message field that would be dropped is refused too
    e = assert_error(post(server, "/v1/chat/completions", {"messages": [
        {"role": "user", "content": "x", "name": "bob"}]}), 400, param="messages")
    assert "messages[0].name" in e["message"]


def test_logit_bias(server):
    case = GOLDEN["cases"][0]
    first, runner_up = case["greedy_top2"][0][0][0], case["greedy_top2"][0][1][0]
    assert first == case["greedy_tokens"][0]

    def piece(tok):  # a token's text in the middle of a text (its leading space kept)
        e = post(server, "/v1/completions", {"prompt": [1, 403, tok], "max_tokens": 0, "echo": True,
                                             "logprobs": 0}).json()["choices"][0]["logprobs"]
        return e["tokens"][2]

    base = {"prompt": case["prompt_tokens"], "max_tokens": 4, "temperature": 0}
    plain = post(server, "/v1/completions", base).json()["choices"][0]["text"]
    assert plain.startswith(piece(first))
    # the greedy first token banned: the runner-up comes first
    banned = post(server, "/v1/completions", {**base, "logit_bias": {str(first): -100}}).json()
    assert banned["choices"][0]["text"].startswith(piece(runner_up)), banned
    # +100 on one token: it is chosen at every step, greedy or sampled
    once = piece(403)
    for extra in ({}, {"temperature": 1.0, "seed": 7}):
        forced = post(server, "/v1/completions", {**base, **extra, "logit_bias": {"403": 100}}).json()
        assert forced["choices"][0]["text"] == once * 4, forced
    # a small bias moves nothing that has a clear margin; chat takes it too
    small = post(server, "/v1/completions", {**base, "logit_bias": {str(runner_up): 0.5}}).json()
    assert small["choices"][0]["text"] == plain
    c = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                              "temperature": 0, "logit_bias": {"403": 100}}).json()
    assert c["choices"][0]["message"]["content"].endswith(once * 2), c


@pytest.mark.parametrize("bias,contains", [
    ([1, 2], "must be an object"),
    ({"abc": 1}, "is not a token id"),
    ({"-1": 1}, "is not a token id"),
    ({"01": 1}, "is not a token id"),
    ({"512": 1}, "is not a token id in [0, 511]"),
    ({"5": 101}, "must be in [-100, 100]"),
    ({"5": -100.5}, "must be in [-100, 100]"),
    ({"5": "1"}, "must be a number"),
])
def test_logit_bias_bad_400(server, bias, contains):
    assert_error(post(server, "/v1/completions", {"prompt": "x", "logit_bias": bias}), 400, param="logit_bias",
                 contains=contains)


def test_unknown_model_404(server):
    e = assert_error(post(server, "/v1/completions", {"model": "gpt-4", "prompt": "x"}), 404,
                     param="model", code="model_not_found")
    assert "gpt-4" in e["message"]
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])


def test_body_too_large_413(server):
    big = json.dumps({"prompt": "a" * (1 << 20)})
    assert_error(post(server, "/v1/completions", big), 413, code="request_too_large")
    # chunked upload (no Content-Length) is counted while it arrives
    def gen():
        for _ in range(40):
            yield b"[" + b" " * 32768
    r = requests.post(server.url("/v1/completions"), data=gen(), timeout=30)
    assert_error(r, 413)
    assert requests.get(server.url("/health")).status_code == 200


def test_context_too_long_400(server):
    e = assert_error(post(server, "/v1/completions", {"prompt": [1] + [403] * 2100, "max_tokens": 1}), 400,
                     code="context_length_exceeded")
    assert "2048" in e["message"]
    r = post(server, "/v1/completions", {"prompt": [1] + [403] * 2100, "max_tokens": 2, "truncate": True})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= 2048


def test_routes_404_405(server):
    assert_error(requests.get(server.url("/v2/nothing")), 404, code="not_found")
    r = requests.get(server.url("/v1/completions"))
    assert_error(r, 405, code="method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error(requests.put(server.url("/v1/requests/cmpl-1")), 405)
    assert_error(requests.post(server.url("/health")), 405)


def test_api_key_401(start_server):
    s = start_server("--api-key", "sekret", "--ctx", "256")
    assert_error(post(s, "/v1/completions", {"prompt": "x", "max_tokens": 1}), 401, code="invalid_api_key")
    assert_error(post(s, "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(post(s, "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer sekret2"}), 401)
    with pytest.raises(openai.AuthenticationError):
        client(s, key="nope").models.list()
    r = client(s, key="sekret").completions.create(model="stories260K", prompt="x", max_tokens=2)
    assert r.usage.completion_tokens == 2
    assert requests.get(s.url("/health")).status_code == 200  # health needs no key


def test_empty_api_key_refused_and_env_key(start_server):
    from conftest import FORGE_BIN
    env = {k: v for k, v in os.environ.items() if k != "FORGE_API_KEY"}
    # an empty key (an unset variable: --api-key "$KEY") is not "no key": refuse to start
    for args, extra_env, says in ((["--api-key", ""], {}, "--api-key: API key 1 is empty"),
                                  (["--api-key", "ok", "--api-key", ""], {}, "API key 2 is empty"),
                                  (["--api-key", "has space"], {}, "space"),
                                  ([], {"FORGE_API_KEY": ""}, "FORGE_API_KEY is set but empty"),
                                  ([], {"FORGE_API_KEY": "a,,b"}, "empty key")):
        p = subprocess.run([str(FORGE_BIN), "serve", "-m", str(STORIES), "--port", "0", *args],
                           capture_output=True, text=True, timeout=20, env={**env, **extra_env})
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert says in p.stderr and "listening" not in p.stderr, p.stderr
    # FORGE_API_KEY instead of the flag (comma-separated keys)
    os.environ["FORGE_API_KEY"] = "k-one,k-two"
    try:
        s = start_server("--ctx", "256")
    finally:
        del os.environ["FORGE_API_KEY"]
    assert_error(post(s, "/v1/completions", {"prompt": "x", "max_tokens": 1}), 401)
    for key in ("k-one", "k-two"):
        assert client(s, key=key).completions.create(model="stories260K", prompt="x", max_tokens=1).usage.completion_tokens == 1
    assert_error(post(s, "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer k-one,k-two"}), 401)


def test_queue_full_429_and_overloaded(start_server):
    s = start_server("--parallel", "1", "--queue", "1", "--ctx", "2048")
    count_429 = [0]

    def attempt():
        a = long_stream(s)  # running
        cl = requests.Session()
        b = cl.post(s.url("/v1/completions"), stream=True, timeout=60,
                    json={"prompt": "Once", "max_tokens": LONG, "ignore_eos": True, "stream": True})  # queued
        try:
            deadline = time.monotonic() + 10
            while s.metrics()["forge_queue_depth"] < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            sb = requests.get(s.url(f"/v1/requests/{b.headers['x-request-id']}")).json()["state"]
            r = post(s, "/v1/completions", {"prompt": "x", "max_tokens": 1})
            h = requests.get(s.url("/health"))
            try:
                client(s).completions.create(model="stories260K", prompt="x", max_tokens=1)
                oa = None
            except openai.RateLimitError as e:
                oa = e
            count_429[0] += (r.status_code == 429) + (oa is not None)
            if requests.get(s.url(f"/v1/requests/{a[3]}")).json()["state"] != "running":
                return False  # the running request ended during the checks: they prove nothing
            assert sb == "queued"
            assert_error(r, 429, code="queue_full")
            assert r.headers["retry-after"] == "1"
            assert h.status_code == 503 and h.json() == {"status": "overloaded"}
            assert oa is not None
            return True
        finally:
            a[1].close()
            a[0].close()
            b.close()
            cl.close()
            wait_idle(s)

    until_cancel_lands(attempt)
    assert requests.get(s.url("/health")).json() == {"status": "ok"}
    assert s.metrics()['forge_requests_total{status="429"}'] == count_429[0]


def test_loading_503():
    os.environ["FORGE_SERVE_LOAD_DELAY_S"] = "3"  # the loading state, held for the test
    try:
        s = ForgeServer(wait=False)
    finally:
        del os.environ["FORGE_SERVE_LOAD_DELAY_S"]
    try:
        s.wait_listening()
        h = requests.get(s.url("/health"))
        assert h.status_code == 503 and h.json() == {"status": "loading"}
        assert_error(post(s, "/v1/completions", {"prompt": "x"}), 503, code="model_loading")
        s.wait_ready()
        assert requests.get(s.url("/health")).json() == {"status": "ok"}
    finally:
        assert s.close() == 0


@pytest.mark.parametrize("kind", ["fifo", "dir", "chardev"])
def test_non_regular_model_refused_at_once(tmp_path, kind):
    # a FIFO given as -m used to block the loader until something wrote to it
    from conftest import FORGE_BIN
    p = tmp_path / "model.gguf"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    else:
        p = Path("/dev/null")
    what = {"fifo": "a FIFO", "dir": "a directory", "chardev": "a character device"}[kind]
    for cmd in (["run", "-m", str(p), "-p", "x", "-n", "1"], ["info", str(p)],
                ["tokenize", "-m", str(p), "-p", "x"], ["serve", "-m", str(p), "--port", "0"]):
        r = subprocess.run([str(FORGE_BIN), *cmd], capture_output=True, text=True, timeout=20)
        assert r.returncode == 1, (cmd, r.returncode, r.stderr)
        assert f"{p}: not a regular file ({what})" in r.stderr, (cmd, r.stderr)


# ---- chat templates
MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U <|im_start|>"},
        {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]


@pytest.mark.parametrize("name,want", [
    ("chatml", "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU <|im_start|><|im_end|>\n"
               "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n"),
    ("llama3", "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>"
               "\n\nU <|im_start|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nV<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\n"),
    ("llama2", "[INST] <<SYS>>\nS\n<</SYS>>\n\nU <|im_start|> [/INST] A </s><s>[INST] V [/INST]"),
    ("mistral", "[INST] U <|im_start|>[/INST] A</s>[INST] S\n\nV[/INST]"),
    ("glm4", "[gMASK]<sop><|system|>\nS<|user|>\nU <|im_start|><|assistant|>\nA<|user|>\nV<|assistant|>"),
    ("plain", "S\n\nUser: U <|im_start|>\nAssistant: A\nUser: V\nAssistant:"),
])
def test_chat_template_override(start_server, name, want):
    s = start_server("--chat-template", name, "--ctx", "256")
    t = post(s, "/apply-template", {"messages": MSGS}).json()
    assert t["format"] == name and t["prompt"] == want
    assert t["tokens"][0] == 1  # the tokenizer's BOS (stories260K adds one)
    if name == "llama2":  # </s> and <s> of the template are the vocabulary's control tokens
        assert 2 in t["tokens"] and t["tokens"].count(1) == 2
    else:
        assert 2 not in t["tokens"] or name == "mistral"
    r = client(s).chat.completions.create(model="stories260K", messages=MSGS, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == len(t["tokens"])


@pytest.mark.parametrize("tmpl,fmt", [
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", "chatml"),
    ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
     "{{ m.content | trim }}<|eot_id|>{% endfor %}", "llama3"),
    ("{% for m in messages %}[INST] <<SYS>>{{ m.content }}<</SYS>> [/INST]{% endfor %}", "llama2"),
    ("{{ bos_token }}{% for m in messages %}[INST] {{ m.content }}[/INST]{% endfor %}", "mistral"),
    ("[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}<|user|>", "glm4"),
])
def test_chat_template_detected(start_server, tmp_path, tmpl, fmt):
    m = gguf_with_kv_string(STORIES, tmp_path / "m.gguf", "tokenizer.chat_template", tmpl)
    s = start_server("--ctx", "256", model=m)
    assert post(s, "/apply-template", {"messages": MSGS}).json()["format"] == fmt
    assert client(s).models.list().data[0].id == "m"


def test_chat_template_unknown_is_startup_error(start_server, tmp_path):
    m = gguf_with_kv_string(STORIES, tmp_path / "odd.gguf", "tokenizer.chat_template",
                            "{% for m in messages %}### {{ m.role }}: {{ m.content }}{% endfor %}")
    s = ForgeServer("--ctx", "256", model=m, wait=False)
    try:
        assert s.proc.wait(20) == 1
        assert "--chat-template" in s.output() and "odd.gguf" in s.output()
    finally:
        s.close()
    s = start_server("--ctx", "256", "--chat-template", "chatml", "--alias", "story", model=m)
    assert post(s, "/apply-template", {"messages": MSGS}).json()["format"] == "chatml"
    assert client(s).models.list().data[0].id == "story"
    assert_error(post(s, "/v1/completions", {"model": "odd", "prompt": "x"}), 404)


def test_bad_flags_exit_2():
    from conftest import FORGE_BIN
    for args in (["--port", "99999"], ["--chat-template", "nope"], ["--bogus", "1"], []):
        cmd = [str(FORGE_BIN), "serve"] + (["-m", str(STORIES)] if args else []) + args
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        assert p.returncode in (1, 2), (args, p.returncode, p.stderr)
        assert p.stderr.startswith("forge serve:"), p.stderr
    with socket.socket() as busy:  # a port already taken: exit 1 naming the address
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([str(FORGE_BIN), "serve", "-m", str(STORIES), "--port", str(port)],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 1 and f"127.0.0.1:{port}" in p.stderr, p.stderr


# ---- graceful shutdown
def test_sigterm_graceful(start_server):
    s = start_server("--ctx", "512")
    results = {}

    def run():
        out = []
        with requests.post(s.url("/v1/completions"), timeout=60, stream=True,
                           json={"prompt": "Once", "max_tokens": 200, "temperature": 0, "stream": True}) as r:
            out = sse_events(r.iter_lines(decode_unicode=True))
        results["events"] = out

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 10
    while s.metrics()["forge_running_sequences"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(15) == 0
    t.join(15)
    ev = results["events"]
    assert ev[-1] == "[DONE]"
    assert ev[-2]["choices"][0]["finish_reason"] == "length"  # finished within the grace period
    assert "stopped" in s.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url("/health"), timeout=2)


def test_sigint_cancels_after_grace(start_server):
    s = start_server("--ctx", "2048", "--grace", "0.05")
    cl, resp, lines, rid = long_stream(s, n=4)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGINT)
    ev = sse_events(lines)
    assert ev[-1] == "[DONE]"
    fins = [e["choices"][0]["finish_reason"] for e in ev[:-1] if e["choices"][0]["finish_reason"]]
    assert len(fins) == 4 and "cancelled" in fins, fins
    assert s.proc.wait(15) == 0
    assert time.monotonic() - t0 < 10
    resp.close()
    cl.close()


def test_held_back_stop_prefix_is_flushed(server):
    """Text held back as a possible stop-string start comes out when generation ends."""
    c = client(server)
    toks = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=12, temperature=0,
                                logprobs=0).choices[0].logprobs.tokens
    j = next(i for i, t in enumerate(toks) if "named" in t)
    want = "".join(toks[: j + 1])
    r = c.completions.create(model="stories260K", prompt=PROMPT, max_tokens=j + 1, temperature=0,
                             stop=["named Zed"])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    parts = [ch.choices[0].text for ch in c.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=j + 1, temperature=0, stop=["named Zed"], stream=True)]
    assert "".join(parts) == want


def test_huge_content_length_413_early(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000000\r\n\r\n{\"prompt\":")
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert requests.get(server.url("/health")).status_code == 200


# ---- adversarial QA: each test locks in a fixed bug
def test_invalid_utf8_text_is_replaced_not_dropped(server):
    # token ids 229, 133 are the byte tokens <0xE2> <0x82>: an unfinished UTF-8 character. The
    # echoed prompt used to turn the whole "text" (generated part included) into ""
    body = {"prompt": [1, 229, 133], "echo": True, "max_tokens": 4, "temperature": 0}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert text.startswith("\ufffd") and len(text.lstrip("\ufffd")) > 0, text
    s = requests.post(server.url("/v1/completions"), json={**body, "stream": True}, timeout=60)
    assert s.headers["content-type"] == "text/event-stream; charset=utf-8"  # requests' .text decodes by it
    ev = sse_events(s.text.splitlines())
    assert ev[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in ev[:-1] if e["choices"]) == text
    t = post(server, "/v1/completions", {"prompt": [1, 229, 133], "echo": True, "max_tokens": 0,
                                         "logprobs": 1}).json()["choices"][0]
    # the unfinished character is one U+FFFD, the share of the token that ends the prompt
    assert t["text"] == "\ufffd" and t["logprobs"]["tokens"] == ["", "", "\ufffd"], t
    assert t["logprobs"]["text_offset"] == [0, 0, 0]


def test_max_tokens_beyond_context_and_n_beyond_queue(start_server):
    s = start_server("--ctx", "64", "--queue", "2", "--parallel", "2")
    prompt = [1] + [403] * 59
    e = assert_error(post(s, "/v1/completions", {"prompt": prompt, "max_tokens": 10}), 400,
                     param="max_tokens", code="context_length_exceeded")
    assert "at most 4" in e["message"], e
    assert_error(post(s, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                  "max_tokens": 64}), 400, param="max_tokens")
    # the default max_tokens (16) shrinks to what fits; "truncate" clamps an explicit one
    for extra in ({}, {"max_tokens": 10, "truncate": True}):
        r = post(s, "/v1/completions", {"prompt": prompt, "ignore_eos": True, **extra})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        assert r.json()["choices"][0]["finish_reason"] == "length"
    # a chat prompt that fills the context leaves no room for an answer: 400, not an empty 200
    def n_tok(text):
        return len(post(s, "/apply-template", {"messages": [{"role": "user", "content": text}]}).json()["tokens"])

    text = ""
    while n_tok(text + " a dog") <= 64:
        text += " a dog"
    for tail in (" a", ".", "!"):  # one token each
        if n_tok(text) < 64:
            text += tail
    assert n_tok(text) == 64, text
    msgs = [{"role": "user", "content": text}]
    e = assert_error(post(s, "/v1/chat/completions", {"messages": msgs}), 400, param="messages",
                     code="context_length_exceeded")
    assert "no room" in e["message"], e
    # the same on /v1/completions names the prompt (it used to say "messages")
    e = assert_error(post(s, "/v1/completions", {"prompt": [1] + [403] * 63, "max_tokens": 1}), 400,
                     param="prompt", code="context_length_exceeded")
    assert "no room" in e["message"], e
    # n choices wait in the queue together: more than it holds is a 400, not a 429 forever
    e = assert_error(post(s, "/v1/completions", {"prompt": "x", "n": 3}), 400, param="n")
    assert "[1, 2]" in e["message"]
    r = post(s, "/v1/completions", {"prompt": "x", "n": 2, "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_request_ids_are_unguessable(server):
    ids = [post(server, "/v1/completions", {"prompt": "x", "max_tokens": 1}).json()["id"] for _ in range(4)]
    ids.append(client(server).chat.completions.create(
        model="stories260K", messages=[{"role": "user", "content": "x"}], max_tokens=1).id)
    assert all(re.fullmatch(r"(chat)?cmpl-[0-9a-f]{32}", i) for i in ids), ids  # 128 random bits
    assert len(set(ids)) == len(ids)
    rid = ids[0]
    assert requests.get(server.url(f"/v1/requests/{rid}")).json()["id"] == rid
    # only the full id names a request: no bare numbers, parts, other prefixes or case changes
    hexpart = rid.split("-")[1]
    for bad in (hexpart, rid[:-1], rid + "0", "chat" + rid, rid.upper(), "cmpl-1", "1", "0",
                "%20" + rid, "-" + hexpart, "99999999999999999999"):
        assert_error(requests.get(server.url(f"/v1/requests/{bad}")), 404, code="request_not_found")
        assert_error(requests.delete(server.url(f"/v1/requests/{bad}")), 404)
    assert requests.get(server.url(f"/v1/requests/{rid}")).json()["state"] == "finished"


def test_requests_belong_to_their_api_key(start_server):
    s = start_server("--api-key", "key-alice", "--api-key", "key-bob", "--ctx", "2048")
    alice = {"Authorization": "Bearer key-alice"}
    bob = {"Authorization": "Bearer key-bob"}
    r = post(s, "/v1/completions", {"prompt": "Once", "max_tokens": LONG, "ignore_eos": True,
                                    "stream": True}, headers=alice, stream=True)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    # bob sees nothing and cancels nothing; no key at all is a 401
    e = assert_error(requests.get(s.url(f"/v1/requests/{rid}"), headers=bob), 404, code="request_not_found")
    assert "this API key" in e["message"]
    assert_error(requests.delete(s.url(f"/v1/requests/{rid}"), headers=bob), 404)
    assert_error(requests.get(s.url(f"/v1/requests/{rid}")), 401)
    j = requests.get(s.url(f"/v1/requests/{rid}"), headers=alice).json()
    assert j["id"] == rid and j["state"] in ("queued", "running"), j
    d = requests.delete(s.url(f"/v1/requests/{rid}"), headers=alice).json()
    assert d["state"] in ("cancelled", "finished"), d
    ev = sse_events(r.iter_lines(decode_unicode=True))
    assert ev[-1] == "[DONE]"
    r.close()


def test_non_streaming_disconnect_counts_499(server):
    def attempt():
        before = server.metrics()
        s = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({"prompt": "Once", "max_tokens": LONG, "ignore_eos": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 10
        while server.metrics()["forge_running_sequences"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        s.close()
        wait_idle(server)
        after = server.metrics()
        key = 'forge_engine_requests_total{result="cancelled"}'
        if after[key] == before[key]:
            return False  # it finished (and was answered) before the close
        deadline = time.monotonic() + 10
        while server.metrics()['forge_requests_total{status="499"}'] == before['forge_requests_total{status="499"}']:
            assert time.monotonic() < deadline, "a client that left was not counted as 499"
            time.sleep(0.01)
        return True

    until_cancel_lands(attempt)


def test_queued_stream_gets_keepalive_comments(start_server):
    # a stream that waits (queued behind others) sends ": keep-alive" SSE comments every ~2 s, so
    # libmicrohttpd's idle timeout never drops it; clients skip comment lines
    s = start_server("--parallel", "1", "--ctx", "2048")

    def attempt(n):
        blocker = threading.Thread(target=post, args=(s, "/v1/completions", {
            "prompt": "Once", "max_tokens": LONG, "ignore_eos": True, "n": n}))
        blocker.start()
        deadline = time.monotonic() + 10
        while s.metrics()["forge_running_sequences"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        t0 = time.monotonic()
        r = requests.post(s.url("/v1/completions"), stream=True, timeout=60,
                          json={"prompt": "Once", "max_tokens": 3, "stream": True, "temperature": 0})
        lines, t_first = [], None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and t_first is None:
                t_first = time.monotonic() - t0
            if line:
                lines.append(line)
        blocker.join()
        assert lines[-1] == "data: [DONE]" and all(l.startswith(("data: ", ": keep-alive")) for l in lines)
        assert len(sse_events(lines)) == 5  # 3 tokens, the finish chunk, [DONE]
        if t_first < 3.0:
            return False  # the queue drained too fast to need a keep-alive
        assert lines[0] == ": keep-alive", lines[:3]
        return True

    assert attempt(4) or attempt(8) or attempt(16), "the blocking requests were too fast"


def test_shutdown_cancels_non_streaming_with_503(start_server):
    # a non-streaming request cut short by the shutdown (running past the grace period, or still
    # queued) is a 503 the client can retry, not a 200 whose empty text looks like an answer
    s = start_server("--ctx", "2048", "--parallel", "1", "--grace", "0.05")
    res = {}

    def run(k):
        try:
            res[k] = post(s, "/v1/completions", {"prompt": "Once", "max_tokens": LONG,
                                                "ignore_eos": True, "n": 2})
        except requests.ConnectionError as e:
            res[k] = e

    ts = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 10
    while s.metrics()["forge_queue_depth"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)  # 1 choice running, 3 queued
    s.proc.send_signal(signal.SIGTERM)
    for t in ts:
        t.join(20)
    assert s.proc.wait(15) == 0
    assert sorted(res) == [0, 1], res  # every client got an answer (none a dropped connection)
    for r in res.values():
        assert isinstance(r, requests.Response), r
        if r.status_code == 200:  # only possible if it finished within the grace period
            assert all(c["finish_reason"] == "length" for c in r.json()["choices"]), r.text
            continue
        assert_error(r, 503, code="shutting_down", contains="shutting down")
        assert r.headers["retry-after"] == "1"
    assert any(r.status_code == 503 for r in res.values())


# ---- the connection gate: heads, deadlines, limits
def raw_exchange(port, data, wait=10.0, source=None):
    """Sends raw bytes, reads until the server closes (or `wait` passes); returns the bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait,
                                 source_address=(source, 0) if source else None)
    s.sendall(data)
    out = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            out += c
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def one_response(data):
    """Splits raw bytes into (status, headers, body), asserting they hold exactly one response."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data[:300]
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
    assert int(headers["content-length"]) == len(body), data[:400]  # nothing after the body
    assert not re.search(rb"HTTP/1\.[01] \d{3} ", body), data[:400]  # no second status line
    return status, headers, body


@pytest.mark.parametrize("head,status,contains", [
    (b"Content-Length: abc", 400, "Content-Length"),
    (b"Content-Length: -1", 400, "Content-Length"),
    (b"Content-Length: 1 2", 400, "Content-Length"),
    (b"Content-Length: 0x10", 400, "Content-Length"),
    (b"Content-Length:", 400, "Content-Length"),
    (b"Content-Length: 99999999999999999999999", 413, "too large"),
    (b"Content-Length: 5\r\nContent-Length: 7", 400, "conflicting"),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked", 400, "both"),
    (b"Transfer-Encoding: gzip", 501, "gzip"),
    (b"Bad Header: x", 400, "malformed header"),
])
def test_malformed_head_gets_one_wellformed_error(server, head, status, contains):
    # libmicrohttpd 0.9.75 answers these with its status line and headers written twice and an
    # HTML body; the gate answers first, once, in the API's JSON error shape
    data = raw_exchange(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + head +
                        b"\r\n\r\n" + b'{"prompt": "x"}')
    got, headers, body = one_response(data)
    assert got == status
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert headers["x-request-id"].startswith("req-")
    e = json.loads(body)["error"]
    assert contains in e["message"] and e["type"] == "invalid_request_error", e
    assert requests.get(server.url("/health")).status_code == 200


def test_malformed_request_lines(server):
    for req, status in ((b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
                        (b"GET /health\r\nHost: x\r\n\r\n", 400),
                        (b"GET /health HTTP/1.1\r\n\r\n", 400),  # no Host
                        (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)):
        got, _, body = one_response(raw_exchange(server.port, req))
        assert got == status, (req, body)
    # a head that never ends within the limit
    got, _, body = one_response(raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000))
    assert got == 431 and "larger than" in json.loads(body)["error"]["message"]


def test_request_deadline_covers_the_whole_head_and_body(start_server):
    # one header line every 0.3 s would restart an idle timer forever; the deadline is for the
    # whole request: --request-timeout 1 ends it with a 408 however the bytes trickle
    s = start_server("--ctx", "256", "--request-timeout", "1")
    for first, trickle in ((b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n"),
                           (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", b" ")):
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(first)
        c.settimeout(0.3)
        t0, out = time.monotonic(), b""
        while time.monotonic() - t0 < 20:
            try:
                chunk = c.recv(4096)
                if not chunk:
                    break
                out += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                break
            try:
                c.sendall(trickle)
            except (BrokenPipeError, ConnectionResetError):
                pass
        took = time.monotonic() - t0
        c.close()
        assert took < 5, f"a trickled request stayed open {took:.1f} s with --request-timeout 1"
        assert out.startswith(b"HTTP/1.1 408"), out[:200]
        assert b"request_timeout" in out
    m = s.metrics()
    assert m['forge_http_refused_total{reason="deadline"}'] == 2
    assert requests.get(s.url("/health")).status_code == 200


def http_from(source, port, method, path, body=None):
    """One request from a given loopback source address (http.client)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    return c, c.getresponse()


def test_connection_limits_refuse_cleanly(start_server):
    # 2 connections per address, 3 in all: beyond that (when no connection is still sending its
    # request and could make room) a new one gets a well-formed 503 at once, not a hang or a reset
    s = start_server("--ctx", "2048", "--max-conns", "3", "--max-conns-per-ip", "2")
    long_body = {"prompt": "Once", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    held = [http_from("127.0.0.1", s.port, "POST", "/v1/completions", long_body) for _ in range(2)]
    for _, r in held:
        assert r.status == 200
        r.fp.readline()  # the stream has started
    _, r = http_from("127.0.0.1", s.port, "GET", "/health")
    assert r.status == 503 and r.getheader("retry-after") == "1" and r.getheader("connection") == "close"
    e = json.loads(r.read())["error"]
    assert e["code"] == "too_many_connections" and "127.0.0.1" in e["message"] and "per address" in e["message"]
    # another address still gets in, up to the total
    c3, r3 = http_from("127.0.0.2", s.port, "POST", "/v1/completions", long_body)
    assert r3.status == 200
    r3.fp.readline()
    _, r = http_from("127.0.0.3", s.port, "GET", "/health")
    assert r.status == 503 and "limit 3" in json.loads(r.read())["error"]["message"]
    for c, r in held + [(c3, r3)]:
        c.close()
    deadline = time.monotonic() + 10
    while True:  # the streams are cancelled and their connections closed
        _, r = http_from("127.0.0.1", s.port, "GET", "/health")
        if r.status == 200:
            break
        assert time.monotonic() < deadline, r.read()
        time.sleep(0.05)
    assert s.metrics()['forge_http_refused_total{reason="limit"}'] >= 2
