"""Token ids as plain ints: how many bits an id may use, and how a pair of ids packs into one int.

Both training (train.py) and encoding (encode.py) key dicts and heaps by a *pair* of token
ids (a, b). A tuple would do, but the int `a << ID_BITS | b` hashes and compares faster,
and in pure Python that is most of the cost. Recover the pair with
`a, b = key >> ID_BITS, key & ID_MASK`.

This module sits below both users so that neither has to import the other for a constant.
"""

ID_BITS = 20                 # every token id is < 2**20
MAX_VOCAB = 1 << ID_BITS     # so at most 1,048,576 tokens, special tokens included
ID_MASK = MAX_VOCAB - 1      # the low ID_BITS bits: the right id of a packed pair
