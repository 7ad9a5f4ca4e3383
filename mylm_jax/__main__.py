"""`python -m mylm_jax ...` runs the `mylm` command as its console script does (launch.py)."""

import sys

from mylm_jax.launch import main

sys.exit(main())
