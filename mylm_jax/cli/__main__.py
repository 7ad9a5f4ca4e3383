"""`python -m mylm_jax.cli ...` runs the `mylm` command."""

import sys

from mylm_jax.cli import main

sys.exit(main())
