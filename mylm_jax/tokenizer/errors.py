"""The one exception the tokenizer raises for anything a user can get wrong.

`TokenizerError` is a `ValueError` whose message is a single line meant for the user
(the CLI prints it as `mylm: error: <message>` and exits with status 2).
"""


class TokenizerError(ValueError):
    """A user-facing, one-line tokenizer error (bad input, bad file, bad argument)."""
