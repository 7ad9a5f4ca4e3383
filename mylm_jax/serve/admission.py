"""How much work the server takes on: a request is admitted, refused for good (400), or told
to come back (429 with Retry-After; 503 once the server is shutting down).

A request of prompt P tokens asking for n choices of up to M new tokens each may cost
P + n * M tokens of decoding: its budget. Three limits (ServeOptions, options.py):

    the request's own budget <= max_request_tokens          else 400 (it would never fit)
    choices waiting for a slot, its own included, <= max_queue          else 429
    the budgets of every request in flight, its own included, <= max_total_tokens   else 429

Without them a client could queue any number of requests (or multiply each by n) and every
later client would wait behind them. The counts are kept on the event loop's thread (admit
and release are called there only), so they need no lock.
"""

from __future__ import annotations

from mylm_jax.serve.options import ServeOptions
from mylm_jax.serve.protocol import ApiError

RETRY_AFTER_S = 1  # what a 429 asks the client to wait: a few decode rounds free slots
SHUTTING_DOWN = "the server is shutting down and takes no new requests"


class Ticket:
    """What one admitted request holds until `release()` (called once it ends, any way)."""

    def __init__(self, admission: "Admission", sequences: int, tokens: int):
        self.admission, self.sequences, self.tokens = admission, sequences, tokens

    def release(self) -> None:
        if self.admission is not None:
            self.admission.sequences -= self.sequences
            self.admission.tokens -= self.tokens
            self.admission = None


class Admission:
    def __init__(self, slots: int, context: int, options: ServeOptions):
        self.slots = slots
        self.max_queue = 4 * slots if options.max_queue is None else options.max_queue
        self.max_request = options.max_request_tokens or 4 * context
        self.max_total = options.max_total_tokens or 4 * slots * context
        self.sequences = self.tokens = 0  # of the requests in flight
        self.draining = False

    def budget(self, prompt_tokens: int, n: int, new_tokens: int) -> int:
        """The request's budget; a 400 when no state of the server could ever admit it."""
        if n > self.slots + self.max_queue:
            raise ApiError(400, f"n is {n}, but this server holds at most {self.slots + self.max_queue} choices at "
                                f"once ({self.slots} slots + {self.max_queue} waiting: --max-batch, --max-queue)",
                           "n")
        tokens = prompt_tokens + n * new_tokens
        if tokens > self.max_request:
            raise ApiError(400, f"this request may cost {tokens} tokens (the prompt's {prompt_tokens} + n={n} x "
                                f"max_tokens={new_tokens}); this server takes at most {self.max_request} per request "
                                "(--max-request-tokens): lower max_tokens or n", "max_tokens", "request_too_large")
        return tokens

    def admit(self, n: int, tokens: int) -> Ticket:
        if self.draining:
            raise ApiError(503, SHUTTING_DOWN, kind="server_error", code="server_shutting_down")
        waiting = max(0, self.sequences + n - self.slots)
        if waiting > self.max_queue:
            self._busy(f"{max(0, self.sequences - self.slots)} choices are waiting for a slot already and this "
                       f"server queues at most {self.max_queue} (--max-queue)")
        if self.tokens + tokens > self.max_total:
            self._busy(f"the requests in flight may cost {self.tokens} tokens and this one {tokens}; this server "
                       f"takes at most {self.max_total} at once (--max-total-tokens)")
        self.sequences += n
        self.tokens += tokens
        return Ticket(self, n, tokens)

    def stats(self) -> dict:
        return {"in_flight": self.sequences, "queue_limit": self.max_queue, "tokens_in_flight": self.tokens}

    @staticmethod
    def _busy(why: str):
        raise ApiError(429, f"the server is busy: {why}; retry in {RETRY_AFTER_S} s", kind="rate_limit_error",
                       code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)})
