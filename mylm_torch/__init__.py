"""The PyTorch twin of the JAX model: same config schema, same math, idiomatic torch.

    model.py      GPT(cfg): the model family in plain nn.Modules
    convert.py    jax_to_torch / torch_to_jax: weight layouts between the two frameworks
    loss.py       the training objective (cross-entropy + the model's weighted extra terms)
    grouping.py   which optimizer, decay and lr ratio each parameter gets, decided from the
                  twin's own names and layouts (parity_tests/test_grouping.py: = JAX's)
    muon.py       Muon (float32 or bfloat16 Newton-Schulz; bf16 = torch.optim.Muon)
    optim.py      TwinOptimizer: clipping, AdamW + Muon on their groups, schedules, momentum warmup
    schedules.py  the learning-rate schedules as LambdaLR factors

It imports nothing from `mylm_jax` but the config schema (which imports no jax), and
the parity tests in `parity_tests/` check it against the JAX model number by number.
"""
