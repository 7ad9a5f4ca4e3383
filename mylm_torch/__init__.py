"""The PyTorch twin of the JAX model: same config schema, same math, idiomatic torch.

    model.py    GPT(cfg): the model family in plain nn.Modules
    convert.py  jax_to_torch / torch_to_jax: weight layouts between the two frameworks

It imports nothing from `mylm_jax` but the config schema (which imports no jax), and
the parity tests in `parity_tests/` check it against the JAX model number by number.
"""
