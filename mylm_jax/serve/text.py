"""Token ids -> the text a client may see so far: whole characters, stop strings cut.

    stream = TextStream(tok.decode, stop=["\\n\\n"], hidden={eos_id})
    delta, stopped = stream.push(token_id)       # "" while a character or a possible stop is pending
    rest = stream.finish()                       # whatever was held back, at the end

Each push decodes every id so far (byte-level BPE: a character may span tokens, so ids
cannot be decoded one by one) and releases the text that can no longer change:
  * a trailing U+FFFD (an unfinished UTF-8 sequence) waits for the next token;
  * a tail that is the beginning of a stop string waits until it is, or is not, one;
  * at a stop string, the text before it is released and the stream stops; the stop
    string itself is never sent (OpenAI's `stop`).
Hidden ids (the stop tokens: end of turn, end of text) are not text.
"""

from __future__ import annotations

from typing import Callable, Iterable


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: Iterable[str] = (), hidden: Iterable[int] = ()):
        self.decode, self.stop, self.hidden = decode, [s for s in stop if s], set(hidden)
        self.ids: list[int] = []
        self.sent = ""  # the text released so far

    def push(self, token: int) -> tuple[str, bool]:
        """(newly released text, whether a stop string was reached)."""
        if token not in self.hidden:
            self.ids.append(token)
        text = self.decode(self.ids)
        found = [at for at in (text.find(s, len(self.sent)) for s in self.stop) if at >= 0]
        if found:
            return self._release(text[:min(found)]), True
        safe = len(text)
        while safe and text[safe - 1] == "\ufffd":
            safe -= 1
        hold = 0  # the longest tail that may still grow into a stop string
        for s in self.stop:
            hold = max([hold] + [k for k in range(1, min(len(s), safe + 1)) if text[safe - k:safe] == s[:k]])
        return self._release(text[:safe - hold]), False

    def finish(self) -> str:
        """The held-back text, when the sequence ends without a stop string."""
        return self._release(self.decode(self.ids))

    def _release(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
