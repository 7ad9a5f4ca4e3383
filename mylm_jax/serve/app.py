"""The HTTP server: OpenAI's completions and chat completions over the batcher, and the chat page.

    GET  /                       the chat page (static/chat.html: one file, no external assets)
    GET  /health                 {"status": "ok", "model", "slots", "busy", "waiting", "steps"}
    GET  /v1/models              the one model this server has (the run directory's name)
    POST /v1/completions         {"prompt": "ROMEO:", "max_tokens": 50, "stream": true, ...}
    POST /v1/chat/completions    {"messages": [{"role": "user", "content": "Hi"}], ...}

Every request passes guard.py first (Host, Origin, API key, JSON only, the body's size and
time). Then the event loop does no heavy work: `Engine.prepare` (JSON parsing, the field
checks, tokenization) runs in a small thread pool, so one huge prompt cannot stall /health or
the streams; admission.py decides whether the request may wait for a slot (else 429).
A request becomes n `Sequence`s (choice i samples with seed + i) handed to the Batcher's
worker thread; their events come back on an asyncio queue, so the event loop only ever
waits on that queue, never on the device. The response starts with the first event: an
error before any token (a 503 at shutdown, non-finite logits) is a real error status, not a
200 stream. `stream: true` sends each event as a server-sent event in OpenAI's chunk format
and ends with `data: [DONE]`. A client that goes away, streaming or not, cancels its
sequences, which frees their slots before the next decode step.
The prompt of a chat request is the run tokenizer's chat template (`Tokenizer.render`) +
<|assistant|>; generation stops at <|end|> or <|endoftext|> (neither is sent as text).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from mylm_jax.serve.admission import Admission
from mylm_jax.serve.batcher import Batcher, Sequence
from mylm_jax.serve.fields import check_fields
from mylm_jax.serve.guard import Guard, error_response
from mylm_jax.serve.options import ServeOptions
from mylm_jax.serve.protocol import (ApiError, Reply, chat_messages, check_length, completion_prompt, fit_context,
                                     parse_json, sampling_fields, sse, usage)
from mylm_jax.serve.slots import SlotDecoder
from mylm_jax.serve.text import TextStream
from mylm_jax.tokenizer.errors import TokenizerError
from mylm_jax.tokenizer.specials import ASSISTANT, BOS

# Threads for Engine.prepare. Tokenization is Python and holds the GIL, so more threads would
# not run faster; a few let short prompts through while a long one is being split.
PREP_THREADS = 4


@dataclass
class Job:
    """A request, parsed and checked: its prompt ids and settings, and its budget (admission.py)."""

    prompt: list[int]
    fields: dict
    new_tokens: int
    budget: int


class Engine:
    """The model, its tokenizer and the batcher: a request's prompt in, its sequences out."""

    def __init__(self, model, tokenizer, model_name: str, max_batch: int = 8, warmup: bool = True,
                 options: ServeOptions | None = None):
        self.tok, self.name, self.context = tokenizer, model_name, model.cfg.max_seq_len
        self.options = options or ServeOptions()
        self.decoder = SlotDecoder(model, max_batch, tokenizer.vocab_size)
        if warmup:
            self.decoder.warmup()
        self.batcher = Batcher(self.decoder)
        self.admission = Admission(max_batch, self.context, self.options)
        self.pool = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="mylm-prep")
        self.hidden = frozenset(tokenizer.special_tokens.values())
        # The most characters one token can stand for (check_length): its bytes, or a special token's name.
        self.longest_token = max(max(map(len, tokenizer.token_bytes)), max(map(len, tokenizer.special_tokens)))
        self.created = int(time.time())

    def prepare(self, raw: bytes, chat: bool) -> Job:
        """The request body -> a Job, or an ApiError. CPU work (JSON, tokenization): called in
        `pool`, never on the event loop; it reads nothing the loop changes."""
        body = parse_json(raw)
        check_fields(body, "chat" if chat else "completions")
        fields = sampling_fields(body, self.name)
        prompt = self.chat_ids(body) if chat else self.completion_ids(body)
        new_tokens = fit_context(len(prompt), fields["max_tokens"], self.context, "messages" if chat else "prompt")
        return Job(prompt, fields, new_tokens, self.admission.budget(len(prompt), fields["n"], new_tokens))

    def completion_ids(self, body: dict) -> list[int]:
        prompt = completion_prompt(body)
        if isinstance(prompt, list):
            bad = [i for i in prompt if not 0 <= i < self.tok.vocab_size]
            if bad:
                raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary [0, {self.tok.vocab_size})",
                               "prompt")
            return prompt
        if prompt:
            check_length(len(prompt), self.context, self.longest_token, "prompt")
            return self.tok.encode(prompt)
        bos = self.tok.bos_id if BOS in self.tok.special_tokens else self.tok.eos_id
        return [bos]  # an empty prompt starts a document, as `mylm generate` does

    def chat_ids(self, body: dict) -> list[int]:
        if not self.tok.has_chat_tokens:
            raise ApiError(400, "this model's tokenizer has no chat tokens (chat needs an SFT run's tokenizer); "
                                "use /v1/completions")
        messages = chat_messages(body)
        check_length(sum(len(m["content"]) for m in messages), self.context, self.longest_token, "messages")
        try:
            ids, _ = self.tok.render(messages)
        except TokenizerError as e:
            raise ApiError(400, str(e), "messages") from None
        return ids + [self.tok.special_tokens[ASSISTANT]]

    def sequences(self, job: Job, chat: bool, emit) -> list[Sequence]:
        fields = job.fields
        seed = fields["seed"] if fields["seed"] is not None else secrets.randbits(62)
        stop_ids = {self.tok.eos_id} | ({self.tok.end_of_turn_id} if chat else set())
        return [Sequence(job.prompt, job.new_tokens, fields["temperature"], fields["top_p"], (seed + i) % 2 ** 63,
                         frozenset(stop_ids), TextStream(self.tok.decode, fields["stop"], self.hidden), emit, choice=i)
                for i in range(fields["n"])]

    def drain(self) -> None:
        """Shutdown begins: admit nothing new, refuse what waits (503); the running requests go on."""
        self.admission.draining = True
        self.batcher.drain()

    def cut(self) -> None:
        """The drain's time is up: end the running requests too (503)."""
        self.batcher.cut()


class EventStream(StreamingResponse):
    """A server-sent event stream that calls `on_close` when it ends, however it ends (done,
    client gone, cancelled at shutdown), even if its generator never started."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work):
    """`work`'s result, or None when the client disconnects first (then `work` is cancelled).
    The body has been read, so the next ASGI message can only be http.disconnect."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, gone):
            if not t.done():
                t.cancel()
    return task.result() if task.done() and not task.cancelled() else None


def _failed(event: tuple) -> ApiError:
    return ApiError(event[3], event[2], kind="server_error")


def create_app(engine: Engine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.batcher.start()
        yield
        engine.batcher.stop()
        engine.pool.shutdown(wait=False, cancel_futures=True)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN (the schema stays at /openapi.json).
    app = FastAPI(title="MyLM", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.add_middleware(Guard, options=engine.options)
    page = (resources.files("mylm_jax.serve") / "static" / "chat.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind=kind))

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):  # a bug: still OpenAI's JSON (uvicorn logs the traceback)
        return error_response(ApiError(500, f"internal error: {type(e).__name__}", kind="server_error"))

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        return {"status": "draining" if engine.admission.draining else "ok", "model": engine.name,
                **engine.batcher.stats()}

    def model_card():
        return {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "mylm",
                "context_length": engine.context}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != engine.name:
            raise ApiError(404, f"The model `{name}` does not exist (this server has `{engine.name}`)", "model",
                           "model_not_found")
        return model_card()

    async def complete(request: Request, chat: bool):
        loop = asyncio.get_running_loop()
        job = await loop.run_in_executor(engine.pool, engine.prepare, await request.body(), chat)
        events: asyncio.Queue = asyncio.Queue()
        seqs = engine.sequences(job, chat, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        ticket = engine.admission.admit(job.fields["n"], job.budget)  # or 429 / 503

        def finish():  # the request is over, however it ended: its slots and its budget are free
            for seq in seqs:
                seq.cancel()
            ticket.release()

        streaming = False
        try:
            engine.batcher.submit(seqs)
            first = await unless_disconnected(request, events.get())
            if first is None:
                return Response(status_code=204)  # the client is gone: nobody reads this
            if first[0] == "error":
                raise _failed(first)
            reply = Reply(chat, engine.name)
            if job.fields["stream"]:
                streaming = True
                return EventStream(stream(reply, seqs, events, first, len(job.prompt), job.fields["include_usage"]),
                                   on_close=finish)
            collected = await unless_disconnected(request, collect(events, len(seqs), first))
            if collected is None:
                return Response(status_code=204)
            texts, reasons, generated = collected
            return reply.whole(texts, reasons, usage(len(job.prompt), generated))
        finally:
            if not streaming:
                finish()

    async def collect(events: asyncio.Queue, n: int, event: tuple) -> tuple[list, list, int]:
        texts, reasons, generated, ended = [""] * n, [None] * n, 0, 0
        while True:
            if event[0] == "text":
                texts[event[1]] += event[2]
            elif event[0] == "end":
                reasons[event[1]], generated, ended = event[2], generated + event[3], ended + 1
            else:
                raise _failed(event)
            if ended == n:
                return texts, reasons, generated
            event = await events.get()

    async def stream(reply: Reply, seqs, events: asyncio.Queue, event: tuple, prompt_tokens: int,
                     include_usage: bool):
        if reply.chat:
            for seq in seqs:
                yield sse(reply.chunk(seq.choice, None, role=True))
        ended, generated = 0, 0
        while True:
            if event[0] == "text":
                yield sse(reply.chunk(event[1], event[2]))
            else:
                ended += 1
                if event[0] == "end":
                    generated += event[3]
                    yield sse(reply.chunk(event[1], None, event[2]))
                else:
                    yield sse(_failed(event).body())
            if ended == len(seqs):
                break
            event = await events.get()
        if include_usage:
            yield sse(reply.usage_chunk(usage(prompt_tokens, generated)))
        yield sse("[DONE]")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return app
