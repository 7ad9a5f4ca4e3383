"""transformers as the reference: an export checked against the MyLM model it came from.

tests/test_hf_interop.py (the proof) and scripts/hf_interop_report.py (docs/interop.md's
table) share these, as the tokenizer's tests and benchmark share `train_hf_reference`.
They need transformers and torch (`pip install -e ".[hf,torch]"`), imported when called.

    CASES                 every model variant of mylm_jax/variants.py (VARIANTS) as the proof
                          runs it, plus "qwen3_moe_mixed", the one mapped architecture no
                          variant reaches
    check_case(name, out) export a random model of a case; transformers (CPU, float32) against
                          MyLM: the max abs logit difference on a 512-token prompt, greedy
                          generation of 32 tokens, the chat template's ids; then import ->
                          export, compared tensor by tensor. A case with no counterpart: its message.
    mylm_greedy, hf_greedy, chat_ids, load, compare, proof_tokenizer   the pieces of check_case
    roundtrip(hf_dir, out)  import a transformers directory (in memory), export it again: bit-exact?
    random_checkpoint(arch, out, vocab_size, seed), write_tokenizer(tok, out)
                          a small transformers model of `arch` with random weights, saved, and
                          the export's tokenizer files beside it
    same_tensors(a, b)    two checkpoint directories hold the same tensors, byte for byte

Sizes: the variants' SMALL size (d_model 32, 2 layers, 4 heads) with a context of 512
positions, all of them used by the prompt (short prompts hide RoPE and position bugs), and a
vocabulary of 320 rows for a tokenizer of 300 ids (a padded vocabulary, as GPT-2's 50304
rows for 50257 ids).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mylm_jax.interop.errors import InteropError
from mylm_jax.interop.export import export_model
from mylm_jax.interop.hf_tokenizer import tokenizer_files
from mylm_jax.interop.importer import read_checkpoint
from mylm_jax.interop.safetensors_files import read_weights
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import build_with_random_params, flat_params
from mylm_jax.tokenizer import Tokenizer, train_tokenizer
from mylm_jax.tokenizer.specials import ASSISTANT
from mylm_jax.variants import VARIANTS, variant

PROMPT_TOKENS, GEN_PROMPT_TOKENS, NEW_TOKENS = 512, 40, 32
# attention_block=256: CPU's blockwise attention in 2 blocks of 256 queries rather than 8 of 64: the
# same function and code path (the first block still reads only its 256 keys), compiled in half the time.
SIZE = dict(vocab_size=320, max_seq_len=512, attention_block=256)
CASES = {**{name: variant(name, **SIZE) for name in VARIANTS},
         "qwen3_moe_mixed": variant("moe_ragged", **SIZE, qk_norm=True, moe_layers=(1,), router_renormalize=False)}
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: "
        "You are all resolved rather to die than to famish? All: Resolved. resolved. ")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak, speak."},
            {"role": "assistant", "content": "All: Resolved."}, {"role": "user", "content": "Before we proceed?"}]

# Small transformers models, one per architecture (random_checkpoint).
_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=64)
HF_CONFIGS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu",
                 tie_word_embeddings=False),
    "llama": dict(_SIZES, attention_bias=True, mlp_bias=True, tie_word_embeddings=True, rope_theta=500.0),
    "qwen3": dict(_SIZES, head_dim=8),
    "stablelm": dict(_SIZES, qk_layernorm=True, partial_rotary_factor=1.0, tie_word_embeddings=True),
    "mixtral": dict(_SIZES, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(_SIZES, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                      mlp_only_layers=[0], norm_topk_prob=True),
}


def transformers_quietly():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def proof_tokenizer() -> Tokenizer:
    return train_tokenizer([TEXT * 5], vocab_size=300, progress=False)


def load(hf_dir: str | Path):
    """(transformers model in float32, eval mode; its tokenizer)."""
    import torch

    transformers = transformers_quietly()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(hf_dir))


def chat_ids(hf_tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding


def hf_greedy(hf_model, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding with the exported generation_config (padded ids suppressed), its stop
    tokens off so that all `new_tokens` are compared."""
    import torch

    config = copy.deepcopy(hf_model.generation_config)
    config.eos_token_id, config.max_new_tokens, config.do_sample = None, new_tokens, False
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                generation_config=config)
    return out[0, len(prompt):].tolist()


def mylm_greedy(forward, prompt: list[int], new_tokens: int, length: int, vocab_limit: int) -> list[int]:
    """Greedy decoding with MyLM's full forward (`forward(tokens [1, length]) -> logits`, compiled
    once): causal, so the zeros after the text change nothing before them. tests/test_generate.py
    proves this equal to the KV-cache Generator for every variant; the end-to-end test compares
    `mylm generate` itself. Ids >= vocab_limit are never chosen (the Generator's vocab_limit)."""
    window = np.zeros((1, length), np.int32)
    window[0, :len(prompt)] = prompt
    for i in range(len(prompt), len(prompt) + new_tokens):
        logits = np.asarray(forward(window))[0, i - 1, :vocab_limit]
        window[0, i] = int(np.argmax(logits))
    return window[0, len(prompt):len(prompt) + new_tokens].tolist()


def compare(model, tok: Tokenizer, hf_dir: str | Path, seed: int = 0) -> dict:
    """transformers' load of `hf_dir` against the MyLM `model` it was exported from."""
    import torch

    hf_model, hf_tok = load(hf_dir)
    prompt = np.random.default_rng(seed).integers(0, tok.vocab_size, PROMPT_TOKENS)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(prompt[None])).logits[0].numpy()
    graphdef, state = nnx.split(model)
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    forward = functools.partial(compiled, state)
    ours = np.asarray(forward(prompt[None]))[0]
    start = prompt[:GEN_PROMPT_TOKENS].tolist()
    assistant = [tok.special_tokens[ASSISTANT]]
    chat_match = all(chat_ids(hf_tok, MESSAGES, gen) == tok.render(MESSAGES)[0] + (assistant if gen else [])
                     for gen in (False, True))
    return {"max_abs": float(np.abs(theirs - ours).max()), "max_logit": float(np.abs(ours).max()),
            "mylm_greedy": mylm_greedy(forward, start, NEW_TOKENS, PROMPT_TOKENS, tok.vocab_size),
            "hf_greedy": hf_greedy(hf_model, start, NEW_TOKENS), "chat_match": chat_match}


def same_tensors(a: str | Path, b: str | Path) -> bool:
    """Both directories hold the same tensor names, dtypes, shapes and bytes."""
    x, y = read_weights(Path(a), str(a), widen=False), read_weights(Path(b), str(b), widen=False)
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                                        and x[k].tobytes() == y[k].tobytes() for k in x)


def roundtrip(hf_dir: str | Path, out: str | Path, dtype: str = "float32") -> bool:
    """Import `hf_dir` (to MyLM's parameters, in memory), export it again to `out`: bit-exact?"""
    _, m, tok, flat = read_checkpoint(hf_dir)
    export_model(m, flat, tok, out, dtype)
    return same_tensors(hf_dir, out)


def check_case(name: str, out: str | Path, seed: int = 0) -> dict:
    """One row of the proof: {"arch", "max_abs", "max_logit", "mylm_greedy", "hf_greedy", "chat_match",
    "roundtrip"}, or {"refused": the one-line message}."""
    cfg, tok, out = CASES[name], proof_tokenizer(), Path(out)
    model = build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed)
    try:
        arch = export_model(cfg, flat_params(model), tok, out / "export")
    except InteropError as e:
        return {"refused": str(e)}
    return {"arch": arch, **compare(model, tok, out / "export", seed),
            "roundtrip": roundtrip(out / "export", out / "again")}


def random_checkpoint(arch: str, out: str | Path, vocab_size: int, seed: int = 0) -> None:
    """A small transformers model of `arch` (HF_CONFIGS) with random weights, saved to `out`:
    matrices N(0, 0.1), norm weights U(0.5, 1.5), biases N(0, 0.1). MyLM cannot hold StableLM's
    LayerNorm biases or per-head QK-norms that differ: those are zero and shared."""
    import torch

    transformers = transformers_quietly()
    config = transformers.AutoConfig.for_model(arch, vocab_size=vocab_size, **HF_CONFIGS[arch])
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    shared: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if arch == "stablelm" and name.endswith("bias") and "norm" in name:
                p.zero_()
            elif p.dim() == 1 and "norm" in name or "ln_" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
                head = name.split(".norms.")[0]
                if ".norms." in name:  # StableLM's per-head QK-norms: one vector for all heads
                    p.copy_(shared.setdefault(head, p.clone()))
            else:
                p.normal_(0.0, 0.1)
    model.save_pretrained(str(out))


def write_tokenizer(tok: Tokenizer, out: str | Path, max_len: int = 64) -> None:
    """The export's tokenizer files, beside a checkpoint made by random_checkpoint."""
    for name, value in tokenizer_files(tok, max_len).items():
        (Path(out) / name).write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
