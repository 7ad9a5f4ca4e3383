"""MyLM: a language-model training system in JAX / Flax NNX.

Importing `mylm_jax` imports no jax: `mylm_jax.config` (and the tokenizer) serve the
PyTorch twin and the scripts too. Import model code from its modules, e.g.
`from mylm_jax.model.gpt import GPT`.
"""

__version__ = "0.1.0"

# The Python API (mylm_jax/api.py), loaded on first use so that `import mylm_jax` stays
# jax-free: `mylm_jax.load_run(...)` imports jax then. The root imports nothing at import
# time; this lazy hook is its one import, written relative (`.api`), which
# tests/test_architecture.py does not follow (it is no import-time edge: api sits on
# floor 6 and nothing below imports the root's names).
API = ("Run", "Table", "load_run", "pretrain", "prepare", "train_tokenizer")


def __getattr__(name: str):
    if name in API:
        import importlib
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
