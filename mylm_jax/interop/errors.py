"""The one exception of the Hugging Face interop: a model, checkpoint or tokenizer with no
exact counterpart on the other side.

`InteropError` is a ConfigError, so `mylm` prints its message as one line
(`mylm: error: ...`) and exits with 2, as for any other user mistake.
"""

from mylm_jax.config import ConfigError


class InteropError(ConfigError):
    """One line naming what has no exact counterpart (a config option, a tensor, a token)."""
