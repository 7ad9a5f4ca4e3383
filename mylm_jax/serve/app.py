"""The HTTP server: OpenAI's completions and chat completions over the batcher, and the chat page.

    GET  /                       the chat page (static/chat.html: one file, no external assets)
    GET  /health                 {"status": "ok", "model", "slots", "busy", "waiting", "steps"}
    GET  /v1/models              the one model this server has (the run directory's name)
    POST /v1/completions         {"prompt": "ROMEO:", "max_tokens": 50, "stream": true, ...}
    POST /v1/chat/completions    {"messages": [{"role": "user", "content": "Hi"}], ...}

A request becomes n `Sequence`s (choice i samples with seed + i) handed to the Batcher's
worker thread; their events come back on an asyncio queue, so the event loop only ever
waits on that queue, never on the device. `stream: true` sends each event as a server-sent
event in OpenAI's chunk format and ends with `data: [DONE]`; a client that goes away
mid-stream cancels its sequences, which frees their slots before the next decode step.
The prompt of a chat request is the run tokenizer's chat template (`Tokenizer.render`) +
<|assistant|>; generation stops at <|end|> or <|endoftext|> (neither is sent as text).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from mylm_jax.serve.batcher import Batcher, Sequence
from mylm_jax.serve.protocol import (ApiError, Reply, chat_messages, completion_prompt, fit_context, parse_json,
                                     sampling_fields, sse, usage)
from mylm_jax.serve.slots import SlotDecoder
from mylm_jax.serve.text import TextStream
from mylm_jax.tokenizer.errors import TokenizerError
from mylm_jax.tokenizer.specials import ASSISTANT, BOS


class Engine:
    """The model, its tokenizer and the batcher: a request's prompt in, its sequences out."""

    def __init__(self, model, tokenizer, model_name: str, max_batch: int = 8, warmup: bool = True):
        self.tok, self.name, self.context = tokenizer, model_name, model.cfg.max_seq_len
        self.decoder = SlotDecoder(model, max_batch, tokenizer.vocab_size)
        if warmup:
            self.decoder.warmup()
        self.batcher = Batcher(self.decoder)
        self.hidden = frozenset(tokenizer.special_tokens.values())
        self.created = int(time.time())

    def completion_ids(self, body: dict) -> list[int]:
        prompt = completion_prompt(body)
        if isinstance(prompt, list):
            bad = [i for i in prompt if not 0 <= i < self.tok.vocab_size]
            if bad:
                raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary [0, {self.tok.vocab_size})",
                               "prompt")
            return prompt
        if prompt:
            return self.tok.encode(prompt)
        bos = self.tok.bos_id if BOS in self.tok.special_tokens else self.tok.eos_id
        return [bos]  # an empty prompt starts a document, as `mylm generate` does

    def chat_ids(self, body: dict) -> list[int]:
        if not self.tok.has_chat_tokens:
            raise ApiError(400, "this model's tokenizer has no chat tokens (chat needs an SFT run's tokenizer); "
                                "use /v1/completions")
        try:
            ids, _ = self.tok.render(chat_messages(body))
        except TokenizerError as e:
            raise ApiError(400, str(e), "messages") from None
        return ids + [self.tok.special_tokens[ASSISTANT]]

    def sequences(self, prompt: list[int], fields: dict, chat: bool, emit) -> list[Sequence]:
        new_tokens = fit_context(len(prompt), fields["max_tokens"], self.context, "messages" if chat else "prompt")
        seed = fields["seed"] if fields["seed"] is not None else secrets.randbits(62)
        stop_ids = {self.tok.eos_id} | ({self.tok.end_of_turn_id} if chat else set())
        return [Sequence(prompt, new_tokens, fields["temperature"], fields["top_p"], (seed + i) % 2 ** 63,
                         frozenset(stop_ids), TextStream(self.tok.decode, fields["stop"], self.hidden), emit, choice=i)
                for i in range(fields["n"])]


def create_app(engine: Engine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.batcher.start()
        yield
        engine.batcher.stop()

    app = FastAPI(title="MyLM", lifespan=lifespan)
    page = (resources.files("mylm_jax.serve") / "static" / "chat.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                     kind=kind).body(), status_code=e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, **engine.batcher.stats()}

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
        body = parse_json(await request.body())
        fields = sampling_fields(body, engine.name)
        prompt = engine.chat_ids(body) if chat else engine.completion_ids(body)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        seqs = engine.sequences(prompt, fields, chat, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        reply = Reply(chat, engine.name)
        engine.batcher.submit(seqs)
        if fields["stream"]:
            return StreamingResponse(stream(reply, seqs, events, len(prompt), fields["include_usage"]),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, reasons, generated = [""] * len(seqs), [None] * len(seqs), 0
        try:
            for event in await collect(events, len(seqs)):
                if event[0] == "text":
                    texts[event[1]] += event[2]
                elif event[0] == "end":
                    reasons[event[1]], generated = event[2], generated + event[3]
                else:
                    raise ApiError(500, event[2], kind="server_error")
        finally:
            for seq in seqs:
                seq.cancel()
        return reply.whole(texts, reasons, usage(len(prompt), generated))

    async def collect(events: asyncio.Queue, n: int) -> list[tuple]:
        out, ended = [], 0
        while ended < n:
            out.append(await events.get())
            ended += out[-1][0] != "text"
        return out

    async def stream(reply: Reply, seqs, events: asyncio.Queue, prompt_tokens: int, include_usage: bool):
        try:
            if reply.chat:
                for seq in seqs:
                    yield sse(reply.chunk(seq.choice, None, role=True))
            ended, generated = 0, 0
            while ended < len(seqs):
                event = await events.get()
                if event[0] == "text":
                    yield sse(reply.chunk(event[1], event[2]))
                    continue
                ended += 1
                if event[0] == "end":
                    generated += event[3]
                    yield sse(reply.chunk(event[1], None, event[2]))
                else:
                    yield sse(ApiError(500, event[2], kind="server_error").body())
            if include_usage:
                yield sse(reply.usage_chunk(usage(prompt_tokens, generated)))
            yield sse("[DONE]")
        finally:  # also when the client disconnects: the worker frees the slots
            for seq in seqs:
                seq.cancel()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return app


class BackgroundServer:
    """uvicorn serving `app` from a thread (the tests, scripts/bench_serve.py); port 0: a free port."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="mylm-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.02)
        bound = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
