"""The tokenizer both ways: MyLM's byte-level BPE <-> Hugging Face's tokenizer.json.

Export (`tokenizer_files`, `token_ids`, `generation_config`): tokenizer.json is
mylm_jax/tokenizer/hf_export.py's (the same ids for any text, tested there);
tokenizer_config.json names the special tokens and carries the chat template as Jinja
(mylm_jax/tokenizer/chat.py's `jinja_template`); generation_config.json stops where
`mylm generate` / `mylm chat` stop and never emits the padding rows of a vocabulary padded
past the tokenizer's (suppress_tokens, as the Generator's vocab_limit).

Import (`from_hf_json`): a tokenizer.json becomes a MyLM tokenizer when it is byte-level
BPE as MyLM's: no normalizer; a pre-tokenizer that is ByteLevel's own GPT-2 split (MyLM's
`gpt2` pattern) or a regex Split followed by ByteLevel(use_regex=false); a ByteLevel
decoder; no post-processor that adds tokens; every added token special. Anything else is a
one-line InteropError naming it. MyLM numbers its tokens its own way (ids 0-255 the bytes,
then one id per merge result in merge order, then the special tokens in order), so the
import also returns where each HF id went: the embedding rows (and head columns) move with
them. A tokenizer MyLM itself exported maps every id to itself.
"""

from __future__ import annotations

from mylm_jax.interop.errors import InteropError
from mylm_jax.tokenizer import Tokenizer, TokenizerError
from mylm_jax.tokenizer import specials as sp
from mylm_jax.tokenizer.chat import jinja_template
from mylm_jax.tokenizer.hf_export import to_hf_json
from mylm_jax.tokenizer.patterns import BYTE_TO_UNICODE, PRESET_PATTERNS

UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


# --------------------------------------------------------------------------- export


def token_ids(tok: Tokenizer) -> dict:
    """bos / eos / pad ids for config.json and generation_config.json. bos: <|bos|>, else the
    EOS (what `mylm generate` starts an empty prompt with); eos: <|endoftext|>, and <|end|>
    when the tokenizer has chat tokens (where `mylm chat` stops)."""
    specials = tok.special_tokens
    eos = [specials[t] for t in (sp.EOS, sp.END_OF_TURN) if t in specials and (t == sp.EOS or tok.has_chat_tokens)]
    return {"bos_token_id": specials.get(sp.BOS, specials.get(sp.EOS)),
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None), "pad_token_id": specials.get(sp.PAD)}


def generation_config(tok: Tokenizer, model_vocab: int) -> dict:
    out = {**token_ids(tok), "do_sample": False}
    if model_vocab > tok.vocab_size:  # rows no token id stands for: never generated (the Generator's vocab_limit)
        out["suppress_tokens"] = list(range(tok.vocab_size, model_vocab))
    return out


def tokenizer_files(tok: Tokenizer, max_len: int) -> dict[str, dict]:
    """{"tokenizer.json": ..., "tokenizer_config.json": ...} for AutoTokenizer.from_pretrained."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    for key, token in (("bos_token", sp.BOS), ("eos_token", sp.EOS), ("pad_token", sp.PAD)):
        if token in tok.special_tokens:
            config[key] = token
    if tok.has_chat_tokens:
        config["chat_template"] = jinja_template(tok)
    return {"tokenizer.json": to_hf_json(tok), "tokenizer_config.json": config}


# --------------------------------------------------------------------------- import


def from_hf_json(data: dict, where: str) -> tuple[Tokenizer, dict[int, int]]:
    """(MyLM tokenizer, {HF id: MyLM id}) of a tokenizer.json's dict; InteropError when it is
    not byte-level BPE as MyLM encodes it (see the module docstring)."""

    def refuse(text: str):
        raise InteropError(f"{where}: {text}")

    model = data.get("model") or {}
    if model.get("type") != "BPE":
        refuse(f"a {model.get('type')} model; MyLM reads byte-level BPE tokenizers only")
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback",
                "ignore_merges"):
        if model.get(key):
            refuse(f"BPE {key}={model[key]!r}: MyLM's BPE applies the merges by rank and nothing else")
    if data.get("normalizer"):
        refuse(f"normalizer {data['normalizer'].get('type')}: MyLM encodes the text as it is")
    post = data.get("post_processor")
    if post and post.get("type") != "ByteLevel":
        refuse(f"post_processor {post.get('type')} adds tokens to every text; MyLM's encode adds none "
               "(data.bos adds <|bos|> in training)")
    if (data.get("decoder") or {}).get("type") != "ByteLevel":
        refuse(f"decoder {(data.get('decoder') or {}).get('type')}: byte-level BPE decodes with ByteLevel")
    pattern = _pattern(data.get("pre_tokenizer"), refuse)

    def to_bytes(token: str) -> bytes:
        try:
            return bytes(UNICODE_TO_BYTE[c] for c in token)
        except KeyError:
            refuse(f"token {token!r} is not written in the byte-level alphabet")

    specials: dict[int, str] = {}
    for t in data.get("added_tokens") or []:
        if not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str):
            refuse(f"added token {t!r} has no int 'id' and str 'content'")
        if not t.get("special"):
            refuse(f"added token {t.get('content')!r} is not special: MyLM's tokens are bytes, merges and "
                   "special tokens")
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized"):
            refuse(f"special token {t.get('content')!r} matches with lstrip / rstrip / single_word / normalized; "
                   "MyLM matches a special token's exact string")
        specials[t["id"]] = t["content"]

    # The merges, replayed as MyLM's build_vocab does: each makes its bytes a new id unless they are one.
    id_of_bytes = {bytes([b]): b for b in range(256)}
    merges = []
    for rank, merge in enumerate(model.get("merges") or []):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if len(pair) != 2:
            refuse(f"merge {rank} {merge!r} is not a pair of tokens")
        left, right = pair
        a, b = to_bytes(left), to_bytes(right)
        if a not in id_of_bytes or b not in id_of_bytes:
            refuse(f"merge {rank} ({left} {right}) joins a token that no earlier merge makes")
        merges.append((id_of_bytes[a], id_of_bytes[b]))
        id_of_bytes.setdefault(a + b, len(id_of_bytes))
    try:
        tok = Tokenizer(merges, [specials[i] for i in sorted(specials)], pattern)
    except TokenizerError as e:
        refuse(str(e))
    if sp.EOS not in tok.special_tokens:
        refuse(f"no {sp.EOS} special token: MyLM ends every document with it (data prepare, `mylm generate`); "
               f"this tokenizer's special tokens are {', '.join(specials.values()) or 'none'}")

    order = {hf_id: tok.special_tokens[name] for hf_id, name in specials.items()}
    for token, hf_id in (model.get("vocab") or {}).items():
        if hf_id in specials:
            if specials[hf_id] != token:
                refuse(f"id {hf_id} is both {token!r} and the special token {specials[hf_id]!r}")
            continue
        b = to_bytes(token)
        if b not in id_of_bytes:
            refuse(f"token {token!r} (id {hf_id}) is neither a byte nor made by a merge")
        order[int(hf_id)] = id_of_bytes[b]
    missing = sorted(set(range(tok.vocab_size)) - set(order.values()))
    if missing:
        what = (f"the byte 0x{missing[0]:02x}: MyLM's vocabulary holds all 256 bytes" if missing[0] < 256
                else f"the token {tok.id_to_bytes(missing[0])!r} its merges make")
        refuse(f"no token for {what}")
    return tok, order


def _pattern(pre: dict | None, refuse) -> str:
    """The split pattern of a byte-level pre-tokenizer."""
    kind = (pre or {}).get("type")
    if kind == "ByteLevel":  # its own regex is GPT-2's, MyLM's `gpt2` preset
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            refuse("ByteLevel pre_tokenizer with add_prefix_space=true or without its split: MyLM splits "
                   "with a regex and adds no space")
        return PRESET_PATTERNS["gpt2"]
    parts = pre.get("pretokenizers") if kind == "Sequence" else None
    if parts and len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel":
        split, level = parts
        regex = (split.get("pattern") or {}).get("Regex")
        if regex and split.get("behavior") == "Isolated" and not split.get("invert") \
                and not level.get("add_prefix_space") and not level.get("use_regex", True):
            return regex
    refuse(f"pre_tokenizer {kind}: MyLM reads a regex Split + ByteLevel (as it exports), or ByteLevel alone")
