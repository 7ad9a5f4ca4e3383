"""The batcher under load: 32 concurrent streaming clients each get their own prompt's greedy
text (as `mylm generate` gives it for that prompt) while sharing decode steps; a client
that disconnects mid-stream frees its slot; the event loop answers while the device works."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.serve_helpers import MODEL_NAME, SLOTS, greedy_reference, loaded, server, shared_run, visible_text

openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install -e \".[serve]\"")

WORDS = "First Citizen Before we proceed any further hear me speak All resolved rather to die than famish".split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


def _prompts(n: int) -> list[str]:
    """n different prompts of 2 to 6 words."""
    return [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(2 + i % 5)) for i in range(n)]


def test_32_concurrent_streaming_clients_get_their_own_greedy_text(run):
    url, engine = server(run)
    _, _, tok = loaded(run)
    prompts = _prompts(32)
    assert len(set(prompts)) == 32
    max_tokens = 12
    expected = [visible_text(tok, ids) for ids in
                greedy_reference(run, [tok.encode(p) for p in prompts], max_tokens, (tok.eos_id,))]
    assert len(set(expected)) > 16  # the texts differ: a mix-up between slots would show
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    seen_busy = []

    async def one(prompt: str) -> tuple[str, int]:
        stream = await client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens,
                                                 temperature=0, stream=True)
        text, pieces = "", 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                text, pieces = text + chunk.choices[0].text, pieces + 1
        return text, pieces

    async def watch(done: asyncio.Event):  # the server's event loop answers while the worker decodes
        async with httpx.AsyncClient() as http:
            while not done.is_set():
                seen_busy.append((await http.get(url + "/health")).json()["busy"])
                await asyncio.sleep(0.01)

    async def everyone():
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        results = await asyncio.gather(*(one(p) for p in prompts))
        done.set()
        await watcher
        return results

    steps_before = engine.batcher.stats()["steps"]
    results = asyncio.run(everyone())
    steps = engine.batcher.stats()["steps"] - steps_before
    assert [text for text, _ in results] == expected
    assert all(pieces >= 1 for _, pieces in results)
    tokens = sum(len(tok.encode(t)) for t in expected)
    # Decoded together: with 8 slots the 32 requests need about 32 * 11 / 8 steps, far fewer
    # than the ~350 one at a time would.
    assert steps < tokens / 3, (steps, tokens)
    assert max(seen_busy) > 1


def test_a_client_that_disconnects_mid_stream_frees_its_slot(run):
    url, engine = server(run)
    body = {"model": MODEL_NAME, "prompt": "First Citizen", "max_tokens": 60, "temperature": 0.8, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", url + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first event: the request holds a slot now
        deadline = time.monotonic() + 20
        while engine.batcher.stats()["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = engine.batcher.stats()
        assert stats["busy"] == 0 and stats["waiting"] == 0
        # ... and the server goes on serving
        again = http.post(url + "/v1/completions", json={**body, "stream": False, "max_tokens": 3}).json()
        assert again["usage"]["completion_tokens"] >= 1


def test_more_requests_than_slots_wait_for_a_free_one(run):
    url, engine = server(run)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    # n = SLOTS + 3 choices from one request: three of them wait for a slot to free.
    reply = client.completions.create(model=MODEL_NAME, prompt="hear me", max_tokens=5, temperature=0,
                                      n=SLOTS + 3)
    assert len(reply.choices) == SLOTS + 3 and len({c.text for c in reply.choices}) == 1  # greedy: all equal


def test_a_seeded_request_samples_the_same_text_whatever_else_is_in_the_batch(run):
    url, _ = server(run)
    ask = dict(model=MODEL_NAME, prompt="All: Speak", max_tokens=16, temperature=1.0, top_p=0.95, seed=11)

    async def alone():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        return (await client.completions.create(**ask)).choices[0].text

    async def in_a_crowd():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        others = [client.completions.create(**{**ask, "prompt": p, "seed": i}) for i, p in enumerate(_prompts(7))]
        replies = await asyncio.gather(client.completions.create(**ask), *others)
        return replies[0].choices[0].text

    assert asyncio.run(alone()) == asyncio.run(in_a_crowd())
