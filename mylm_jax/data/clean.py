"""Cleaning: named, composable steps over document texts, with a report of what each dropped.

A step maps a text to a text (a transform) or to None (the document is dropped, counted
under the step's name). Steps are written as a comma-separated spec:

    normalize_newlines,nfc,strip,collapse_whitespace,min_length=20,dedup,downsample=0.5

    normalize_newlines   \\r\\n and lone \\r -> \\n
    nfc                  Unicode NFC: one code point sequence per visible character
                         ("e" + combining acute -> "é"), so equal-looking text tokenizes alike
    strip                remove leading / trailing whitespace
    collapse_whitespace  runs of spaces/tabs -> one space; 3+ newlines -> a blank line
    min_length=N         drop documents shorter than N characters
    max_length=N         drop documents longer than N characters
    dedup                drop exact duplicates (by the sha1 of the text at this point)
    downsample=F         keep a fraction F, chosen by a seeded hash of the text: the same
                         documents are kept whatever the order or the process
    postfix=S            append the string S (escapes \\n, \\t understood)

(An end-of-sequence *token* is appended after tokenization, `mylm data prepare --eos`,
since the text "<|endoftext|>" is not that token.)
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from mylm_jax.data.errors import DataError

DEFAULT_SPEC = "normalize_newlines,nfc,strip,min_length=1"
_SPACES = re.compile(r"[ \t\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


def _hash_fraction(text: str, seed: int) -> float:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little") / 2.0**64


def _make(name: str, arg: str | None, seed: int) -> Callable[[str], str | None]:
    def need(kind):
        if arg is None:
            raise DataError(f"cleaning step '{name}' needs a value: {name}=...")
        try:
            return kind(arg)
        except ValueError:
            raise DataError(f"cleaning step '{name}={arg}': expected {kind.__name__}") from None

    if name == "normalize_newlines":
        return lambda t: t.replace("\r\n", "\n").replace("\r", "\n")
    if name == "nfc":
        return lambda t: unicodedata.normalize("NFC", t)
    if name == "strip":
        return str.strip
    if name == "collapse_whitespace":
        return lambda t: _BLANK_LINES.sub("\n\n", _SPACES.sub(" ", t))
    if name == "min_length":
        n = need(int)
        return lambda t: t if len(t) >= n else None
    if name == "max_length":
        n = need(int)
        return lambda t: t if len(t) <= n else None
    if name == "dedup":
        seen: set[bytes] = set()

        def dedup(t):
            key = hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest()
            if key in seen:
                return None
            seen.add(key)
            return t
        return dedup
    if name == "downsample":
        fraction = need(float)
        if not 0 < fraction <= 1:
            raise DataError(f"cleaning step 'downsample={arg}': expected a fraction in (0, 1]")
        return lambda t: t if _hash_fraction(t, seed) < fraction else None
    if name == "postfix":
        suffix = need(str).replace("\\n", "\n").replace("\\t", "\t")
        return lambda t: t + suffix
    raise DataError(f"unknown cleaning step '{name}'; valid steps: normalize_newlines, nfc, strip, "
                    "collapse_whitespace, min_length=N, max_length=N, dedup, downsample=F, postfix=S")


@dataclass
class Cleaner:
    """Run texts through the steps of a spec; count documents in, kept, dropped per step."""

    spec: str = DEFAULT_SPEC
    seed: int = 0
    documents_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.steps = []
        for item in filter(None, (s.strip() for s in self.spec.split(","))):
            name, _, arg = item.partition("=")
            self.steps.append((item, _make(name, arg if "=" in item else None, self.seed)))

    def clean(self, text: str) -> str | None:
        self.documents_in += 1
        for name, step in self.steps:
            text = step(text)
            if text is None:
                self.dropped[name] += 1
                return None
        self.kept += 1
        return text

    def __call__(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            text = self.clean(text)
            if text is not None:
                yield text

    def report(self) -> dict:
        return {"spec": self.spec, "seed": self.seed, "documents_in": self.documents_in, "kept": self.kept,
                "dropped": dict(self.dropped)}
