"""The scheduler: requests in, tokens out, every slot decoded together (continuous batching).

One worker thread owns the SlotDecoder (mylm_jax/serve/slots.py) and loops:

    1. admit     while a slot is free and a sequence waits: prefill it into that slot
                 (its first token comes out of the prefill)
    2. step      one jitted call feeds every slot its last token and samples the next
    3. deliver   each busy slot's token goes to its sequence: a stop token, a stop string
                 or max_tokens ends it and frees the slot for step 1 of the next round

So a request that arrives while others are mid-answer waits at most one step (plus the
prefills ahead of it) before it joins the batch, and one step serves all B slots. Per
token, a step costs about as much for B busy slots as for one while the matmuls are
small (decoding is memory-bound: the weights are read once per step whatever B is), which
is where the throughput gain with concurrency comes from (docs/serving.md).

The HTTP side never waits on the device: `submit` puts sequences on a thread-safe queue
and each sequence reports through its `emit(event)` callback, which the server points at
an asyncio queue (loop.call_soon_threadsafe). Events:
    ("text", choice, delta)                      text that can no longer change
    ("end", choice, finish_reason, n_tokens)     "stop" or "length"; n_tokens generated
    ("error", choice, message, status)           500: the device call failed, or the model's logits
                                                 were not finite (a NaN checkpoint); 503: the server
                                                 is shutting down and the sequence had no slot yet.
                                                 The sequence is over; the server goes on.
A sequence whose client has gone (`cancel()`) is dropped before its next step, freeing its slot.
`drain()` (at shutdown) refuses every sequence still waiting; those in slots go on until they
end or `cut()` (the drain's deadline) ends them with a 503 error event.
"""

from __future__ import annotations

import collections
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mylm_jax.generate import NonFiniteLogits
from mylm_jax.serve.slots import SlotDecoder
from mylm_jax.serve.text import TextStream

NOT_STARTED = "the server is shutting down; this request had not started (send it again elsewhere or later)"
CUT = "the server shut down before this answer was finished (it was cut after {} tokens)"


@dataclass(eq=False)
class Sequence:
    """One choice to generate: the prompt's ids, its settings, where its events go."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_ids: frozenset
    text: TextStream
    emit: Callable[[tuple], None]
    choice: int = 0
    generated: int = 0
    cancelled: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        """The client is gone: the worker frees the slot before the next step (thread-safe flag)."""
        self.cancelled = True


class Batcher:
    def __init__(self, decoder: SlotDecoder):
        self.decoder = decoder
        B = decoder.n_slots
        self.pending: queue.Queue = queue.Queue()  # submitted, not yet seen by the worker
        self.waiting: collections.deque = collections.deque()  # seen, waiting for a slot
        self.slots: list[Sequence | None] = [None] * B
        self.last_B = np.zeros(B, np.int32)       # each slot's last token (fed to the next step)
        self.position_B = np.zeros(B, np.int32)   # ... and its position
        self.steps = 0
        self._stop, self._draining, self._cutting = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="mylm-batcher", daemon=True)

    # --- the HTTP side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.pending.put(None)  # wake the worker if it is idle
        self._thread.join(timeout=30)

    def drain(self) -> None:
        """Refuse (503) every sequence that has no slot yet; the running ones go on (shutdown)."""
        self._draining.set()
        self.pending.put(None)  # wake the worker if it is idle

    def cut(self) -> None:
        """End every running sequence now with a 503 error event (the drain's deadline)."""
        self._draining.set()
        self._cutting.set()
        self.pending.put(None)

    def submit(self, sequences: list[Sequence]) -> None:
        for seq in sequences:
            self.pending.put(seq)

    def stats(self) -> dict:
        return {"slots": len(self.slots), "busy": sum(s is not None for s in self.slots),
                "waiting": len(self.waiting) + self.pending.qsize(), "steps": self.steps}

    # --- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = any(s is not None for s in self.slots)
            self._take_pending(block=not busy and not self.waiting)
            try:
                self._drop_cancelled()
                if self._draining.is_set():
                    self._refuse_waiting()
                if self._cutting.is_set():
                    self._cut_running()
                self._admit()
                if any(s is not None for s in self.slots):
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failed device call ends its sequences, not the server
                traceback.print_exc()
                for slot, seq in enumerate(self.slots):
                    if seq is not None:
                        seq.emit(("error", seq.choice, f"generation failed: {type(e).__name__}: {e}", 500))
                        self.slots[slot] = None

    def _take_pending(self, block: bool) -> None:
        try:
            item = self.pending.get(timeout=0.5) if block else self.pending.get_nowait()
            while True:
                if item is not None:
                    self.waiting.append(item)
                item = self.pending.get_nowait()
        except queue.Empty:
            pass

    def _drop_cancelled(self) -> None:
        self.waiting = collections.deque(s for s in self.waiting if not s.cancelled)
        for slot, seq in enumerate(self.slots):
            if seq is not None and seq.cancelled:
                self.slots[slot] = None

    def _refuse_waiting(self) -> None:
        self._take_pending(block=False)
        while self.waiting:
            seq = self.waiting.popleft()
            seq.emit(("error", seq.choice, NOT_STARTED, 503))

    def _cut_running(self) -> None:
        for slot, seq in enumerate(self.slots):
            if seq is not None:
                seq.emit(("error", seq.choice, CUT.format(seq.generated), 503))
                self.slots[slot] = None

    def _admit(self) -> None:
        for slot in range(len(self.slots)):
            if self.slots[slot] is None and self.waiting:
                seq = self.waiting.popleft()
                self.slots[slot] = seq
                token, ok = self.decoder.prefill(slot, seq.prompt, seq.seed, seq.temperature, seq.top_p)
                self.position_B[slot] = len(seq.prompt)
                self._deliver(slot, token, ok)

    def _step(self) -> None:
        used = 1 + max(slot for slot, seq in enumerate(self.slots) if seq is not None)
        tokens_B, ok_B = self.decoder.step(self.last_B, self.position_B, used)
        self.steps += 1
        for slot, seq in enumerate(self.slots):
            if seq is not None:
                self.position_B[slot] += 1
                self._deliver(slot, int(tokens_B[slot]), bool(ok_B[slot]))

    def _deliver(self, slot: int, token: int, ok: bool) -> None:
        """One new token of the sequence in `slot`: send its text, end it if it is done (or
        fail it if its logits were not finite: the token would be noise)."""
        seq = self.slots[slot]
        if not ok:
            seq.emit(("error", seq.choice, str(NonFiniteLogits(f" at new token {seq.generated + 1}")), 500))
            self.slots[slot] = None
            return
        seq.generated += 1
        self.last_B[slot] = token
        stopped = token in seq.stop_ids
        delta, hit_stop_string = ("", False) if stopped else seq.text.push(token)
        if delta:
            seq.emit(("text", seq.choice, delta))
        if stopped or hit_stop_string or seq.generated >= seq.max_new_tokens:
            if not hit_stop_string:
                rest = seq.text.finish()  # the tail held back in case it began a stop string
                if rest:
                    seq.emit(("text", seq.choice, rest))
            reason = "stop" if stopped or hit_stop_string else "length"
            seq.emit(("end", seq.choice, reason, seq.generated))
            self.slots[slot] = None
