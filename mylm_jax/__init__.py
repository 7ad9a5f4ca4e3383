"""MyLM: a language-model training system in JAX / Flax NNX.

Importing `mylm_jax` imports no jax: `mylm_jax.config` (and the tokenizer) serve the
PyTorch twin and the scripts too. Import model code from its modules, e.g.
`from mylm_jax.model.gpt import GPT`.
"""

__version__ = "0.1.0"
