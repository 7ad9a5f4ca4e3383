"""Export to Hugging Face's `tokenizer.json`, so `tokenizers.Tokenizer.from_file` (and
transformers' PreTrainedTokenizerFast) encodes exactly as we do.

The pieces map one to one:
- our split pattern  -> pre_tokenizer `Split(Regex(pattern), behavior="Isolated")`, then
  `ByteLevel(use_regex=False)`, which only maps each byte to its printable character
  (GPT-2's table, patterns.bytes_to_unicode);
- our merges         -> model `BPE`: `vocab` {token in that alphabet: id} and `merges`
  ["left right", ...] in rank order (a byte-level token never contains a space: the space
  byte is written 'Ġ');
- our special tokens -> `added_tokens` with `special: true, normalized: false`.
HF always recognises added tokens in text, i.e. it behaves like our
`encode(text, allowed_special="all")`.
"""

from __future__ import annotations

from mylm_jax.tokenizer.patterns import BYTE_TO_UNICODE


def _printable(token: bytes) -> str:
    return "".join(BYTE_TO_UNICODE[b] for b in token)


def to_hf_json(tokenizer) -> dict:
    """The tokenizer as the dict that HF's `tokenizer.json` holds."""
    names = [_printable(token) for token in tokenizer.token_bytes]
    added_tokens = [{"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for token, token_id in tokenizer.special_tokens.items()]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {name: i for i, name in enumerate(names)},
                  "merges": [f"{names[a]} {names[b]}" for a, b in tokenizer.merges]},
    }


def train_hf_reference(texts, vocab_size: int, pattern: str, special_tokens, min_frequency: int = 1):
    """Train HF's BpeTrainer with the settings that match `train_tokenizer` (the same
    split, byte alphabet and specials): the reference the tests and the benchmark compare
    against. Needs the optional `tokenizers` package (the `dev` / `bench` extras)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    return hf


def hf_merge_list(hf_tokenizer) -> list[str]:
    """An HF BPE tokenizer's merges as ["left right", ...] (newer versions store pairs)."""
    import json

    merges = json.loads(hf_tokenizer.to_str())["model"]["merges"]
    return [" ".join(m) if isinstance(m, list) else m for m in merges]
