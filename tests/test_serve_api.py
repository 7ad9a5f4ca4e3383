"""`mylm serve` through the official `openai` client: models, completions and chat, plain and
streaming; greedy text equals `mylm generate`'s (its Generator), seeded sampling is
reproducible and equals `mylm generate --seed`, stop strings, n choices, usage, the page."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.serve_helpers import MODEL_NAME, greedy_reference, loaded, server, shared_run, visible_text

openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install -e \".[serve]\"")

PROMPTS = ["First Citizen: Before", "All: Speak", "You are all resolved rather", "hear me"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def client(run):
    url, _ = server(run)
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_health_and_the_page(run, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    url, engine = server(run)
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == engine.decoder.n_slots
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # Offline: nothing is fetched from elsewhere (no src/href/url() to another host).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", page.text)
    assert "/v1/chat/completions" in page.text and "getReader" in page.text


def test_greedy_completion_equals_mylm_generate(run, client):
    _, _, tok = loaded(run)
    references = greedy_reference(run, [tok.encode(p) for p in PROMPTS], 24, (tok.eos_id,))
    for prompt, reference in zip(PROMPTS, references):
        ids = tok.encode(prompt)
        reply = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0)
        choice = reply.choices[0]
        assert choice.text == visible_text(tok, reference), prompt
        assert choice.finish_reason == ("stop" if reference[-1] == tok.eos_id else "length")
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(reference))
        assert reply.usage.total_tokens == len(ids) + len(reference)


def test_streaming_completion_gives_the_same_text_in_pieces(run, client):
    plain = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == plain.choices[0].text and len([t for t in texts if t]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens and not chunks[-1].choices


def test_chat_plain_and_streaming_use_the_chat_template(run, client):
    _, _, tok = loaded(run)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Are you resolved?"}]
    ids, _ = tok.render(messages)
    ids = ids + [tok.special_tokens["<|assistant|>"]]
    reference, = greedy_reference(run, [ids], 16, (tok.end_of_turn_id, tok.eos_id))
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == visible_text(tok, reference)
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == len(reference)
    stream = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=16,
                                                 temperature=0, stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == reply.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_seeded_sampling_is_reproducible_and_equals_mylm_generate_with_that_seed(run, client):
    from mylm_jax.generate import Generator, SamplingConfig
    model, _, tok = loaded(run)
    ask = dict(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=20, temperature=0.9, top_p=0.9)
    a = client.completions.create(seed=7, **ask).choices[0].text
    assert client.completions.create(seed=7, **ask).choices[0].text == a
    sampling = SamplingConfig(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=7, stop_tokens=(tok.eos_id,),
                              vocab_limit=tok.vocab_size)
    reference = Generator(model, sampling, on_note=lambda text: None)([tok.encode(PROMPTS[1])])[0]
    assert a == visible_text(tok, reference)
    # n choices: choice i samples with seed + i, so choice 0 is the single request's text.
    three = client.completions.create(seed=7, n=3, **ask)
    assert [c.index for c in three.choices] == [0, 1, 2] and three.choices[0].text == a
    assert len({c.text for c in three.choices}) > 1  # 20 tokens at temperature 0.9: they differ
    alone = [client.completions.create(seed=7 + i, **ask) for i in (1, 2)]
    assert [c.text for c in three.choices[1:]] == [r.choices[0].text for r in alone]
    # usage: the prompt once, the completion tokens of every choice
    assert three.usage.prompt_tokens == len(tok.encode(PROMPTS[1]))
    assert three.usage.completion_tokens == client.completions.create(seed=7, **ask).usage.completion_tokens + \
        sum(r.usage.completion_tokens for r in alone)


def test_stop_strings_cut_the_text_before_them(run, client):
    ask = dict(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=30, temperature=0)
    full = client.completions.create(**ask).choices[0].text
    # A piece from the middle of the greedy text, of whole characters (no U+FFFD).
    stop = next(full[i:i + 3] for i in range(len(full) // 3, len(full) - 3) if "\ufffd" not in full[i:i + 3])
    expected = full[:full.index(stop)]
    cut = client.completions.create(stop=[stop, "never appears"], **ask).choices[0]
    assert (cut.text, cut.finish_reason) == (expected, "stop")
    streamed = client.completions.create(stop=stop, stream=True, **ask)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
