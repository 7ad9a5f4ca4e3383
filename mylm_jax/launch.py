"""The `mylm` console script: the allocator's restart first, then the command line.

The commands that run compiled steps restart themselves once under a faster allocator
(mylm_jax/allocator.py). Doing it here, before the command groups are imported (numpy,
the parsers: ~0.2 s), keeps the first process, which is thrown away, short. The training
commands then start without the cyclic garbage collector (mylm_jax/startup.py).
`python -m mylm_jax.cli` and `mylm_jax.cli.main()` restart at their own point instead.
"""

from __future__ import annotations

import sys

from mylm_jax import startup


def main() -> int:
    startup.begin(sys.argv[1] if len(sys.argv) > 1 else None)
    from mylm_jax.cli import main as cli_main

    return cli_main()
