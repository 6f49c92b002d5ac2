"""Item-embedding warm start from co-occurrence: a few seconds of sparse linear algebra before training.

A fresh BERT4Rec / SASRec+ starts with random item embeddings E (V, H) and first learns the popularity
solution (the decoder bias b); the item-to-item structure comes much later. This module computes E from
the training sequences instead, so the tied decoder's scores

    score(i | h) = t(h) . E_i + b_i

can express "what tends to follow the items in h" as soon as t(.) has learned a linear map.

Recipe (Levy & Goldberg 2014's word-vector SVD, with a direction):
  1. directional co-occurrence within a window: C[a, b] = sum over users and positions t of
     1/d  for every pair (s[t] = a, s[t+d] = b), 1 <= d <= window  (closer successors weigh more);
  2. positive PMI with context smoothing (Levy, Goldberg & Dagan 2015), which tempers popular successors:
     PPMI[a, b] = max(0, log(P(a, b) / (P(a) P_alpha(b)))),  P(a, b) = C[a, b] / sum C,
     P(a) = sum_b C[a, b] / sum C,  P_alpha(b) = c_b^alpha / sum_b' c_b'^alpha,  c_b = sum_a C[a, b], alpha 0.75;
  3. truncated SVD PPMI ~ U S V^T with k = H/2 components;
  4. E_i = [U_i sqrt(S) | V_i sqrt(S)]: the first half is item i as a history item (predecessor), the
     second as a candidate (successor), so a linear map swapping the halves gives t(E_a) . E_b ~ PPMI[a, b]
     (the next-item score), while plain E_a . E_b is a symmetric item-item similarity;
  5. scaled so the item rows have the model's init std (BertConfig.initializer_range), so LayerNorm and the
     optimizer see the scale they were tuned for.
Special ids (< FIRST_ITEM_ID) stay zero here and are never copied into a model (`warm_start_items`); items
that never co-occur with anything get N(0, std) rows from the same seeded generator.

Everything is numpy / scipy.sparse with its own seeded generators: it never draws from torch's global RNG,
so a run's random stream (and its exact resume) is the same with or without the warm start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.extmath import randomized_svd
from torch import nn

from seqbert.data.vocab import FIRST_ITEM_ID

SMOOTHING = 0.75  # context-distribution smoothing exponent (Levy, Goldberg & Dagan 2015)


def cooccurrence_matrix(sequences: Sequence[np.ndarray], vocab_size: int, window: int = 5) -> sp.csr_matrix:
    """C (V, V): C[a, b] = sum of 1/d over pairs a at t, b at t + d (1 <= d <= window) in one sequence."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) > 1]
    if not seqs:
        return sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    flat = np.concatenate(seqs)  # (N,)
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise ValueError(f"item ids must be in [0, {vocab_size}), got [{flat.min()}, {flat.max()}]")
    owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])  # (N,) sequence of each position
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        same = owner[:-d] == owner[d:]  # (N - d,) pairs that stay inside one sequence
        rows.append(flat[:-d][same])
        cols.append(flat[d:][same])
        vals.append(np.full(int(same.sum()), 1.0 / d))
    c = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(vocab_size, vocab_size)
    )
    return c.tocsr()  # duplicates summed


def ppmi(c: sp.csr_matrix, alpha: float = SMOOTHING) -> sp.csr_matrix:
    """max(0, log(P(a, b) / (P(a) P_alpha(b)))) on the nonzeros of C (zeros stay zero: sparse)."""
    c = c.tocoo()
    total = c.sum()
    row = np.asarray(c.sum(axis=1)).ravel() / total  # (V,) P(a)
    col = np.asarray(c.sum(axis=0)).ravel() ** alpha  # (V,)
    col = col / col.sum()  # P_alpha(b)
    pmi = np.log(c.data / total) - np.log(row[c.row]) - np.log(col[c.col])
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=c.shape)


def cooccurrence_embeddings(
    sequences: Sequence[np.ndarray],
    vocab_size: int,
    dim: int,
    window: int = 5,
    seed: int = 0,
    std: float = 0.02,
) -> torch.Tensor:
    """Item embeddings (vocab_size, dim) from the directional PPMI of `sequences` (internal ids); the
    module docstring gives the recipe. Rows < FIRST_ITEM_ID are zero."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    if vocab_size <= FIRST_ITEM_ID:
        raise ValueError(f"vocab_size must be > {FIRST_ITEM_ID} (the special ids), got {vocab_size}")
    m = ppmi(cooccurrence_matrix(sequences, vocab_size, window))  # (V, V)
    # specials never co-occur in real data, but keep them out of the factors whatever the input
    is_item = sp.diags((np.arange(vocab_size) >= FIRST_ITEM_ID).astype(np.float64))  # (V, V)
    m = (is_item @ m @ is_item).tocsr()
    m.eliminate_zeros()
    k_left = (dim + 1) // 2
    k = min(k_left, vocab_size - FIRST_ITEM_ID - 1)  # randomized_svd needs k < the matrix rank bound
    emb = np.zeros((vocab_size, dim), dtype=np.float64)
    if m.nnz and k >= 1:
        u, s, vt = randomized_svd(m, n_components=k, n_iter=3, random_state=seed)  # (V, k), (k,), (k, V)
        root = np.sqrt(s)
        emb[:, :k] = u * root  # history side: row a of PPMI
        right = min(k, dim - k_left)
        emb[:, k_left : k_left + right] = vt[:right].T * root[:right]  # candidate side: column b
    emb[:FIRST_ITEM_ID] = 0
    items = emb[FIRST_ITEM_ID:]
    known = np.abs(items).sum(1) > 0  # items with at least one kept co-occurrence
    scale = items[known].std() if known.any() else 0.0
    if scale > 0:
        items *= std / scale
    rng = np.random.default_rng(seed)
    items[~known] = rng.normal(0.0, std, size=(int((~known).sum()), dim))
    return torch.from_numpy(emb.astype(np.float32))


def warm_start_items(
    embedding: nn.Embedding,
    sequences: Sequence[np.ndarray],
    window: int = 5,
    seed: int = 0,
    std: float = 0.02,
) -> None:
    """Overwrite the item rows (>= FIRST_ITEM_ID) of `embedding` with `cooccurrence_embeddings`, in place;
    the special rows ([PAD], [MASK]) keep their init. Draws nothing from torch's RNG."""
    vocab_size, dim = embedding.weight.shape
    emb = cooccurrence_embeddings(sequences, vocab_size, dim, window=window, seed=seed, std=std)
    with torch.no_grad():
        embedding.weight[FIRST_ITEM_ID:] = emb[FIRST_ITEM_ID:].to(embedding.weight)
