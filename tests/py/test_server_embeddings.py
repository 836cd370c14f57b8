"""POST /v1/embeddings (issue 14) with the `openai` client and raw requests, on all-MiniLM-L6-v2
(converted at test time) served by `forge serve`: strings, arrays of strings, token arrays and
arrays of token arrays; encoding_format float and base64 (little-endian float32); usage; the
vectors against the numpy reference (cosine >= 0.9999, F32, CPU); requests from several
clients at once batched together (the same vectors as alone); bad inputs refused with a 400
naming the field and the index (empty string, empty array, 10,000 inputs, nested arrays, mixed
types, token ids out of range, too long without "truncate", dimensions, unknown fields); an
embedding model refused for completions and chat, a causal LM (stories260K: no pooling type)
refused for embeddings while it serves completions."""
import base64
import concurrent.futures as cf

import numpy as np
import openai
import pytest
import requests

import bert_ref as R
from conftest import ForgeServer
from test_bert_ref import SENTENCES

MODEL = "all-MiniLM-L6-v2-f32"  # the file stem


@pytest.fixture(scope="module")
def emb_server(minilm_gguf):
    s = ForgeServer("--device", "cpu", model=minilm_gguf("f32"))
    yield s
    rc = s.close()
    assert rc == 0, f"forge serve exit status {rc}"


@pytest.fixture(scope="module")
def client(emb_server):
    return openai.OpenAI(base_url=emb_server.url("/v1"), api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def ref(minilm_dir):
    return R.load_safetensors(minilm_dir)


def vecs(resp):
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float64)


def post(server, body):
    return requests.post(server.url("/v1/embeddings"), json=body, timeout=120)


def test_openai_strings_match_reference(client, minilm_dir, ref):
    texts = [t for t in SENTENCES if t]  # OpenAI refuses "" (so does Forge)
    resp = client.embeddings.create(model=MODEL, input=texts, extra_body={"truncate": True})
    got = vecs(resp)
    ids = R.tokenize_hf(minilm_dir, texts, ref.max_seq)
    want = ref.embed_many(ids)
    cos = [R.cosine(a, b) for a, b in zip(got, want)]
    print(f"/v1/embeddings f32: min cosine {min(cos):.9f} over {len(cos)} sentences")
    assert len(got) == len(texts) and min(cos) >= 0.9999
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == sum(len(i) for i in ids)
    assert resp.model == MODEL and resp.object == "list"
    assert [d.index for d in resp.data] == list(range(len(texts)))


def test_float_and_base64_agree(emb_server, client):
    texts = ["Hello world", "naïve café [SEP] second"]
    f = post(emb_server, {"input": texts, "encoding_format": "float"})
    b = post(emb_server, {"input": texts, "encoding_format": "base64"})
    assert f.status_code == 200 and b.status_code == 200, (f.text, b.text)
    fv = np.array([d["embedding"] for d in f.json()["data"]], dtype=np.float32)
    bv = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b.json()["data"]])
    assert np.array_equal(fv, bv)  # %.9g and the float32 bytes: the same floats
    # the openai client asks for base64 by default and decodes it
    dv = vecs(client.embeddings.create(model=MODEL, input=texts))
    assert np.array_equal(dv.astype(np.float32), fv)


def test_token_arrays(emb_server, client):
    text = client.embeddings.create(model=MODEL, input="Hello world", encoding_format="float")
    one = client.embeddings.create(model=MODEL, input=[101, 7592, 2088, 102], encoding_format="float")
    many = client.embeddings.create(model=MODEL, input=[[101, 7592, 2088, 102], [101, 102]],
                                    encoding_format="float")
    assert np.array_equal(vecs(text)[0], vecs(one)[0])
    assert np.array_equal(vecs(many)[0], vecs(one)[0])
    assert one.usage.prompt_tokens == 4 and many.usage.prompt_tokens == 6
    # token arrays are taken as given: no [CLS] / [SEP] added
    bare = client.embeddings.create(model=MODEL, input=[7592, 2088], encoding_format="float")
    assert bare.usage.prompt_tokens == 2 and not np.array_equal(vecs(bare)[0], vecs(one)[0])


def test_truncation_only_when_asked(emb_server, minilm_dir, ref):
    long_text = " ".join(["word"] * 300)
    r = post(emb_server, {"input": ["short", long_text]})
    assert r.status_code == 400
    e = r.json()["error"]
    assert e["param"] == "input" and e["code"] == "context_length_exceeded"
    assert "input[1] has 302 tokens, the model takes at most 256" in e["message"]
    r = post(emb_server, {"input": ["short", long_text], "truncate": True, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    want = ref.embed_many(R.tokenize_hf(minilm_dir, ["short", long_text], 256))
    assert min(R.cosine(a, b) for a, b in zip(got, want)) >= 0.9999
    assert r.json()["usage"]["prompt_tokens"] == 3 + 256
    too_many_ids = post(emb_server, {"input": [101] + [2088] * 300 + [102]})
    assert too_many_ids.status_code == 400 and "input has 302 tokens" in too_many_ids.json()["error"]["message"]


@pytest.mark.parametrize("body,param,needle", [
    ({"input": ""}, "input", "input is an empty string"),
    ({"input": ["a", ""]}, "input", "input[1] is an empty string"),
    ({"input": []}, "input", "'input' is an empty array"),
    ({"input": [[]]}, "input", "input[0] is an empty token array"),
    ({"input": ["x"] * 10000}, "input", "'input' has 10000 items, at most 2048"),
    ({"input": [[[101, 102]]]}, "input", "input[0][0] must be a token id (an integer), got an array"),
    ({"input": [[101, [102]]]}, "input", "input[0][1] must be a token id (an integer), got an array"),
    ({"input": ["a", [101, 102]]}, "input", "input[1] must be a string like input[0], got an array"),
    ({"input": [[101, 102], "a"]}, "input", "input[1] must be a token array like input[0], got a string"),
    ({"input": [101, "a"]}, "input", "input[1] must be a token id (an integer), got a string"),
    ({"input": [101, 30522]}, "input", "input[1] = 30522 is not a token id of this model (0..30521)"),
    ({"input": [[101, 102], [101, -1]]}, "input", "input[1][1] = -1 is not a token id"),
    ({"input": {"text": "a"}}, "input", "'input' must be a string, an array of strings"),
    ({"input": 5}, "input", "'input' must be a string"),
    ({"input": [True]}, "input", "input[0] must be a string, a token id or a token array, got a boolean"),
    ({}, "input", "'input' is required"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format", "must be \"float\" or \"base64\""),
    ({"input": "a", "dimensions": 128}, "dimensions", "'dimensions' must be 384"),
    ({"input": "a", "truncate": "yes"}, "truncate", "'truncate' must be a boolean"),
    ({"input": "a", "stream": True}, None, "unknown field 'stream'"),
])
def test_bad_inputs(emb_server, body, param, needle):
    r = post(emb_server, body)
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["type"] == "invalid_request_error" and e["param"] == param, e
    assert needle in e["message"], e["message"]


def test_bad_json_and_model(emb_server):
    r = requests.post(emb_server.url("/v1/embeddings"), data=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(emb_server, {"input": "a", "model": "other"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(emb_server, {"input": "a", "model": MODEL, "user": "u1"})
    assert r.status_code == 200


def test_concurrent_clients_batched(emb_server, client):
    """16 clients at once (their inputs share steps): each gets what it gets alone."""
    texts = [f"request {i}: " + " ".join(["alpha", "beta", "gamma"] * (i % 5 + 1)) for i in range(16)]
    alone = [vecs(client.embeddings.create(model=MODEL, input=[t, t.upper()], encoding_format="float"))
             for t in texts]
    before = emb_server.metrics()
    with cf.ThreadPoolExecutor(16) as ex:
        together = list(ex.map(lambda t: vecs(client.embeddings.create(model=MODEL, input=[t, t.upper()],
                                                                       encoding_format="float")), texts))
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() <= 1e-6
    after = emb_server.metrics()
    done = after['forge_embedding_requests_total{result="finished"}'] - \
        before['forge_embedding_requests_total{result="finished"}']
    steps = after["forge_embedding_steps_total"] - before["forge_embedding_steps_total"]
    print(f"16 concurrent requests in {steps:.0f} steps")
    assert done == 16 and 1 <= steps <= 16


def test_embedding_model_refuses_completions(emb_server):
    for path, body in [("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]:
        r = requests.post(emb_server.url(path), json=body, timeout=30)
        assert r.status_code == 400
        e = r.json()["error"]
        assert e["code"] == "model_not_supported" and "is an embedding model (mean pooling)" in e["message"]
    assert requests.get(emb_server.url("/v1/models"), timeout=30).json()["data"][0]["id"] == MODEL
    assert requests.get(emb_server.url("/health"), timeout=30).status_code == 200


def test_causal_lm_refuses_embeddings(server):
    """stories260K (llama, no pooling_type): completions as before, embeddings refused."""
    r = requests.post(server.url("/v1/embeddings"), json={"input": "hello"}, timeout=30)
    assert r.status_code == 400
    e = r.json()["error"]
    assert e["code"] == "model_not_supported" and e["param"] == "model"
    assert "llama.pooling_type is absent or 0" in e["message"]
    r = requests.post(server.url("/v1/completions"), json={"prompt": "Once", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
