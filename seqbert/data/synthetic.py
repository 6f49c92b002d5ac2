"""Synthetic item sequences with planted structure: a detector for leakage and training bugs.

Each item has one preferred successor (a random permutation `succ`); a user's next item is `succ[cur]`
with probability `p_follow`, else a uniformly random item. A model that learns the chain reaches HR@10
near `p_follow` on the last item, while MostPop stays near 10 / num_items: a wide, fast-to-see margin.
A model that leaks the target (or ignores the order) lands elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------------------------------
# TREC run/qrels pairs with every trap an evaluator can fall into (for parity tests against trec_eval)
@dataclass(frozen=True)
class TrecCase:
    run_lines: list[str]  # "qid Q0 docid rank score tag", shuffled across queries
    qrels_lines: list[str]  # "qid 0 docid grade"
    tied_queries: int  # run queries (also in the qrels) with at least two equal scores
    qrels_only: list[str]  # qrels queries with no run line
    run_only: list[str]  # run queries with no judgement


def random_trec_case(
    num_queries: int = 2000, seed: int = 0, max_docs: int = 60, shuffle: bool = True
) -> TrecCase:
    """A random run and qrels with the traps that separate evaluators from trec_eval.

    - ties: ~10 % of queries have scores rounded to integers (many ties), ~2 % a constant score;
    - the rank column is a random permutation, contradicting the scores;
    - lines are shuffled across queries (shuffle=False: each query one block in score order, as systems
      write them, tied lines in random order, queries in random order); doc ids are unpadded numbers
      with mixed prefixes, so string order differs from numeric order ("100" < "99");
    - ~5 % qrels-only and ~5 % run-only queries; ~5 % of judged queries have no relevant document;
    - grades 0-3, judged documents both retrieved and not retrieved.
    Built with numpy over all lines at once (no loop per line), so 10^5 lines take well under a second.
    """
    if num_queries < 1 or max_docs < 2:
        raise ValueError(f"need num_queries >= 1 and max_docs >= 2, got {num_queries}, {max_docs}")
    rng = np.random.default_rng(seed)
    pool = 3 * max_docs  # candidate documents per query
    qids = np.char.add("q", rng.permutation(10 * num_queries)[:num_queries].astype(str))
    role = rng.random(num_queries)
    qrels_only, run_only = role < 0.05, (role >= 0.05) & (role < 0.10)
    n_ret = rng.integers(1, max_docs + 1, size=num_queries)
    n_ret[qrels_only] = 0
    docs = rng.random((num_queries, pool)).argsort(axis=1)  # (Q, pool) a random order of each pool
    prefix = np.array(["", "d", "D", "doc-"])[rng.integers(4, size=(num_queries, pool))]
    names = np.char.add(prefix, (docs * 7 + 3).astype(str))  # (Q, pool) unique per query
    q = np.repeat(np.arange(num_queries), n_ret)  # (N,) query of each line
    pos = np.arange(len(q)) - np.repeat(np.cumsum(n_ret) - n_ret, n_ret)
    score = rng.normal(size=len(q))
    style = rng.random(num_queries)
    tie_int, tie_const = style < 0.10, (style >= 0.10) & (style < 0.12)
    score = np.where(tie_int[q], np.round(score), score)
    score = np.where(tie_const[q], 0.5, score)
    rank = rng.permutation(len(q)) + 1  # contradicts the scores
    run = np.char.add(np.char.add(qids[q], " Q0 "), names[q, pos])
    run = [f"{head} {r} {s!r} sys" for head, r, s in zip(run.tolist(), rank.tolist(), score.tolist())]
    if shuffle:
        order = rng.permutation(len(run))
    else:  # blocks by query (in random query order), score descending, ties in random order
        order = np.lexsort((rng.random(len(q)), -score, rng.permutation(num_queries)[q]))
    run_lines = [run[i] for i in order]
    # ties: equal scores inside one query
    o = np.lexsort((score, q))
    same = (q[o][1:] == q[o][:-1]) & (score[o][1:] == score[o][:-1])
    tied_q = np.unique(q[o][1:][same])
    # qrels: a random window of the pool (overlaps the retrieved prefix in part), grades 0-3
    judged = ~run_only
    n_judged = rng.integers(1, 12, size=num_queries) * judged
    start = rng.integers(0, max_docs, size=num_queries)
    jq = np.repeat(np.arange(num_queries), n_judged)
    jpos = start[jq] + np.arange(len(jq)) - np.repeat(np.cumsum(n_judged) - n_judged, n_judged)
    grades = rng.integers(0, 4, size=len(jq))
    no_rel = rng.random(num_queries) < 0.05
    grades = np.where(no_rel[jq], 0, grades)
    qrels_lines = [
        f"{a} 0 {b} {g}" for a, b, g in zip(qids[jq].tolist(), names[jq, jpos].tolist(), grades.tolist())
    ]
    tied = [i for i in tied_q.tolist() if judged[i]]
    return TrecCase(
        run_lines, qrels_lines, len(tied), sorted(qids[qrels_only].tolist()), sorted(qids[run_only].tolist())
    )


# ---------------------------------------------------------------------------------------------------------
# a Markov chain with repeats, and its twin with random last items (for leakage tests)
@dataclass(frozen=True)
class PlantedMarkov:
    """Sequences from a known next-item distribution, so a test can compute the best possible score.

    Step t >= 1: with probability `p_repeat` the user re-consumes an item drawn uniformly from their own
    steps 0..t-1; otherwise the next item follows `transition[current]` (each item has a few successors).
    So p(next = j | history h) = (1 - p_repeat) * transition[h[-1], j] + p_repeat * count_h(j) / len(h).
    Ids in `sequences` are internal (item index + FIRST_ITEM_ID); `transition` is over item indices.
    """

    sequences: UserSequences
    transition: np.ndarray  # (I, I) row-stochastic
    p_repeat: float

    @property
    def num_items(self) -> int:
        return self.transition.shape[0]

    def next_item_probs(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, I) true distribution of each history's next item (histories in internal ids)."""
        probs = (1 - self.p_repeat) * self.transition[[int(h[-1]) - FIRST_ITEM_ID for h in histories]]
        lengths = np.array([len(h) for h in histories])
        rows = np.repeat(np.arange(len(histories)), lengths)
        cols = np.concatenate(histories).astype(np.int64) - FIRST_ITEM_ID
        np.add.at(probs, (rows, cols), self.p_repeat / lengths[rows])
        return probs


def markov_repeat_sequences(
    num_users: int = 2000,
    num_items: int = 500,
    num_successors: int = 3,
    p_repeat: float = 0.05,
    min_len: int = 5,
    max_len: int = 20,
    seed: int = 0,
) -> PlantedMarkov:
    """A `PlantedMarkov` dataset; the share of last items already in the history grows with p_repeat
    (p_repeat plus the chain's own returns; about 10 % at the defaults). Vectorised over users per step."""
    if (
        num_items <= num_successors
        or num_successors < 1
        or not 0 <= p_repeat <= 1
        or not 2 <= min_len <= max_len
    ):
        raise ValueError(
            f"need num_items > num_successors >= 1, p_repeat in [0, 1], 2 <= min_len <= max_len; got "
            f"{num_items}, {num_successors}, {p_repeat}, {min_len}, {max_len}"
        )
    rng = np.random.default_rng(seed)
    # successors: distinct, never the item itself (a self-loop would be a repeat by construction)
    succ = (
        np.arange(num_items)[:, None]
        + 1
        + rng.random((num_items, num_items - 1)).argsort(axis=1)[:, :num_successors]
    ) % num_items
    weights = rng.dirichlet(np.ones(num_successors), size=num_items)  # (I, S)
    transition = np.zeros((num_items, num_items))
    np.put_along_axis(transition, succ, weights, axis=1)
    lengths = rng.integers(min_len, max_len + 1, size=num_users)
    seq = np.empty((num_users, max_len), dtype=np.int64)
    seq[:, 0] = rng.integers(num_items, size=num_users)
    users = np.arange(num_users)
    cum = np.cumsum(weights, axis=1)
    for t in range(1, max_len):  # one vectorised step for all users
        cur = seq[:, t - 1]
        pick = np.minimum((rng.random(num_users)[:, None] > cum[cur]).sum(axis=1), num_successors - 1)
        follow = succ[cur, pick]
        again = seq[users, rng.integers(0, t, size=num_users)]
        seq[:, t] = np.where(rng.random(num_users) < p_repeat, again, follow)
    vocab = ItemVocab([str(i) for i in range(num_items)])
    items = [seq[u, : lengths[u]] + FIRST_ITEM_ID for u in range(num_users)]
    return PlantedMarkov(
        UserSequences([str(u) for u in range(num_users)], items, None, vocab), transition, p_repeat
    )


def with_random_last(data: UserSequences, seed: int = 0) -> UserSequences:
    """The twin of `data`: same sequences, but each last item replaced by a uniformly random item.

    No model can predict those last items from the history, so a leak-free pipeline scores chance on the
    twin (HR@k = k / num_items under every seen-item protocol); anything above it is a leak.
    """
    rng = np.random.default_rng(seed)
    num_items = len(data.vocab.items)
    items = []
    for seq in data.items:
        twin = seq.copy()
        twin[-1] = rng.integers(num_items) + FIRST_ITEM_ID
        items.append(twin)
    return UserSequences(list(data.users), items, data.timestamps, data.vocab)
