"""Corpora shipped inside the package, so that a fresh install has real text to train on.

    corpus_path("tinyshakespeare") -> Path     the text, decompressed once into a cache dir
    CORPORA                                    name -> Corpus (file, sha256 of the text, size, what):
                                               tinyshakespeare (the default), tang_poems (Chinese)
    available()                                the names, for `--corpus` help and errors

The compressed files sit beside this module (`tinyshakespeare.txt.gz`, `tang_poems.txt.gz`;
provenance in `README.md` here); pyproject.toml ships them as package data. `corpus_path` decompresses a
corpus into `$MYLM_CACHE/corpora/` (default `~/.cache/mylm/corpora/`), checks the sha256 of
the text against the table, and writes it atomically (`fileio.atomic_write`), so a crash
never leaves a half text that a later run would trust. A later call checks the cached
file's sha256 again (milliseconds) and returns it. No jax here.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mylm_jax.data.errors import DataError
from mylm_jax.fileio import atomic_write, cache_root

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Corpus:
    file: str     # the compressed file beside this module
    sha256: str   # of the uncompressed text
    size: int     # bytes of the uncompressed text
    about: str    # one line for people


CORPORA = {
    "tinyshakespeare": Corpus(
        "tinyshakespeare.txt.gz", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1_115_394,
        "Tiny Shakespeare (char-rnn): 40,000 lines of the plays, 1.1 MB of ASCII, public domain"),
    "tang_poems": Corpus(
        "tang_poems.txt.gz", "08c811e4affab25c70cb339cea6829c2236fcf78a61468a456529ce67aae687e", 1_131_650,
        "5,003 Tang poems (chinese-poetry, traditional characters), 406,386 characters, public domain"),
}
DEFAULT = "tinyshakespeare"


def available() -> list[str]:
    return sorted(CORPORA)


def cache_dir() -> Path:
    """Where decompressed corpora live: $MYLM_CACHE/corpora, else ~/.cache/mylm/corpora."""
    return cache_root() / "corpora"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus_text(name: str = DEFAULT) -> bytes:
    """The corpus's text, decompressed from the package and checked against its sha256."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; the embedded corpora are: {', '.join(available())}")
    corpus = CORPORA[name]
    packed = HERE / corpus.file
    if not packed.is_file():
        raise DataError(f"{packed}: the embedded corpus is missing from the installation (reinstall mylm)")
    text = gzip.decompress(packed.read_bytes())
    if _sha256(text) != corpus.sha256:
        raise DataError(f"{packed}: the text's sha256 is {_sha256(text)}, expected {corpus.sha256} "
                        f"(a damaged installation: reinstall mylm)")
    return text


def corpus_path(name: str = DEFAULT) -> Path:
    """A plain-text file of the named embedded corpus, decompressed once and verified."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; the embedded corpora are: {', '.join(available())}")
    corpus = CORPORA[name]
    path = cache_dir() / Path(corpus.file).with_suffix("").name  # tinyshakespeare.txt
    if path.is_file() and path.stat().st_size == corpus.size and _sha256(path.read_bytes()) == corpus.sha256:
        return path
    atomic_write(path, corpus_text(name))
    return path
