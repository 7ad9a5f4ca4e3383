"""`mylm serve`: an OpenAI-compatible HTTP server with continuous batching, and a chat page.

    protocol.py       request checks, OpenAI-style errors, the response and stream-chunk JSON
    fields.py         which request fields are used, harmlessly ignored, or refused (400)
    text.py           token ids -> releasable text (whole characters, stop strings cut)
    slots.py          SlotDecoder: B sequences in one KV cache, each at its own length (jitted)
    batcher.py        Batcher: the worker thread that admits, steps and delivers
    options.py        ServeOptions: the API key, allowed hosts, every limit and timeout
    admission.py      Admission: a request's token budget, the queue bound (429), the drain (503)
    guard.py          Guard: Host, Origin, API key, JSON only, body size and time (middleware)
    app.py            Engine (model + tokenizer + batcher), the FastAPI routes
    server.py         uvicorn with a header timeout and a bounded drain; BackgroundServer
    static/chat.html  the chat page

Page: docs/serving.md. FastAPI and uvicorn come with the serve extra; guard.py, app.py and
server.py need them (options.py does not: `mylm serve` checks its flags without them).
"""
