"""`mylm serve`: an OpenAI-compatible HTTP server with continuous batching, and a chat page.

    protocol.py       request checks, OpenAI-style errors, the response and stream-chunk JSON
    text.py           token ids -> releasable text (whole characters, stop strings cut)
    slots.py          SlotDecoder: B sequences in one KV cache, each at its own length (jitted)
    batcher.py        Batcher: the worker thread that admits, steps and delivers
    app.py            Engine (model + tokenizer + batcher), the FastAPI routes, BackgroundServer
    static/chat.html  the chat page

Page: docs/serving.md. FastAPI and uvicorn come with the serve extra; only app.py needs them.
"""
