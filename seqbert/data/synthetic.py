"""Synthetic item sequences with planted structure: a detector for leakage and training bugs.

Each item has one preferred successor (a random permutation `succ`); a user's next item is `succ[cur]`
with probability `p_follow`, else a uniformly random item. A model that learns the chain reaches HR@10
near `p_follow` on the last item, while MostPop stays near 10 / num_items: a wide, fast-to-see margin.
A model that leaks the target (or ignores the order) lands elsewhere.
"""

from __future__ import annotations

import numpy as np

from seqbert.data.interactions import UserSequences
from seqbert.data.vocab import FIRST_ITEM_ID, ItemVocab


def markov_sequences(
    num_users: int = 600,
    num_items: int = 50,
    min_len: int = 8,
    max_len: int = 30,
    p_follow: float = 0.9,
    seed: int = 0,
) -> UserSequences:
    """Users' chronological sequences (internal ids) drawn from a first-order Markov chain over items."""
    if num_items < 2 or num_users < 1 or not 3 <= min_len <= max_len or not 0 <= p_follow <= 1:
        raise ValueError(
            f"need num_items >= 2, num_users >= 1, 3 <= min_len <= max_len, p_follow in [0, 1]; got "
            f"{num_items}, {num_users}, {min_len}, {max_len}, {p_follow}"
        )
    rng = np.random.default_rng(seed)
    vocab = ItemVocab([str(i) for i in range(num_items)])
    succ = rng.permutation(num_items)  # the planted next item of each item
    items = []
    for _ in range(num_users):
        n = int(rng.integers(min_len, max_len + 1))
        seq = np.empty(n, dtype=np.int64)
        seq[0] = rng.integers(num_items)
        follow = rng.random(n) < p_follow
        jumps = rng.integers(num_items, size=n)
        for t in range(1, n):
            seq[t] = succ[seq[t - 1]] if follow[t] else jumps[t]
        items.append(seq + FIRST_ITEM_ID)
    users = [str(u) for u in range(num_users)]
    return UserSequences(users, items, None, vocab)
