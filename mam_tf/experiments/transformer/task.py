"""The task: count the repeats of the first token's symbol (a dependency across tokens).

Each sequence holds ``tokens`` tokens; token t carries a symbol s_t in ``0 .. symbols-1`` as a
noisy one-hot vector, followed by the one-hot of its position t (so a token's features are
``symbols + tokens`` long). The label is how many of tokens 1 .. T-1 carry the symbol of token
0: 0, 1, 2 or 3, each a quarter of the sequences (chance is 25%). The other tokens draw their
symbol among the rest uniformly, so a symbol may also repeat elsewhere: the counts of symbols
alone do not give the label; a model must find token 0's symbol (by position) and compare every
token with it, which is what self-attention followed by the MLP can do.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CLASSES", "repeat_count_task"]

CLASSES = 4


def repeat_count_task(n, tokens=6, symbols=4, noise=0.1, seed=0):
    """(x float32 [n, tokens, symbols + tokens], labels int64 [n]); deterministic in ``seed``."""
    if tokens < CLASSES or symbols < 2 or n < 1:
        raise ValueError(f"repeat_count_task: needs n >= 1, tokens >= {CLASSES} and symbols >= 2, "
                         f"got n={n}, tokens={tokens}, symbols={symbols}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    first = rng.integers(0, symbols, n)
    # the others: uniform over the symbols other than the first one's
    others = (first[:, None] + 1 + rng.integers(0, symbols - 1, (n, tokens - 1))) % symbols
    for i in range(n):
        where = rng.choice(tokens - 1, labels[i], replace=False)
        others[i, where] = first[i]
    seq = np.concatenate([first[:, None], others], axis=1)
    x = np.zeros((n, tokens, symbols + tokens), np.float32)
    x[np.arange(n)[:, None], np.arange(tokens)[None, :], seq] = 1.0
    x[..., :symbols] += noise * rng.standard_normal((n, tokens, symbols)).astype(np.float32)
    x[:, np.arange(tokens), symbols + np.arange(tokens)] = 1.0
    return x, labels.astype(np.int64)
