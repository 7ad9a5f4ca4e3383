"""Byte-level BPE tokenizer, in pure Python (imports no jax).

    from mylm_jax.tokenizer import Tokenizer, train_tokenizer, TokenizerError
    tok = train_tokenizer(texts, vocab_size=8192)          # pattern="gpt4" by default
    ids = tok.encode("Hello")                                # special tokens are plain text...
    ids = tok.encode("a<|endoftext|>b", allowed_special="all")   # ...unless allowed
    tok.decode(ids); tok.save("tok.json"); Tokenizer.load("tok.json"); tok.export_hf("tokenizer.json")
    ids, loss_mask = tok.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])

One idea per module: patterns (pre-split regexes, byte table), ids (how a pair of ids
packs into one int), train (learning merges), encode (applying them, cache, worker
processes), pieces (cutting chunks where no merge can reach across), specials, tokenizer
(the class, files), chat (template), hf_export. The `mylm tokenizer` command is
mylm_jax/cli/tokenizer.py. The math is in docs/tokenizer.md.

Imports go one way (no cycles): errors, ids, patterns, specials, pieces, chat, hf_export
<- encode <- tokenizer <- train <- this package.
"""

from mylm_jax.tokenizer.errors import TokenizerError
from mylm_jax.tokenizer.patterns import PRESET_PATTERNS
from mylm_jax.tokenizer.specials import DEFAULT_SPECIAL_TOKENS
from mylm_jax.tokenizer.tokenizer import Tokenizer
from mylm_jax.tokenizer.train import train_tokenizer

__all__ = ["DEFAULT_SPECIAL_TOKENS", "PRESET_PATTERNS", "Tokenizer", "TokenizerError", "train_tokenizer"]
