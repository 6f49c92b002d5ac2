"""Item vectors [e_i, b_i] and query vectors [t(h), 1]: Flat-IP top-K == the head's own full-catalogue top-K."""

import numpy as np
import pytest
import torch

from seqbert.retrieval.index import IndexConfig, build_index, search
from seqbert.retrieval.items import item_vectors, query_vectors

NUM_SPECIAL = 4  # e.g. PAD, UNK, MASK, CLS: never recommended


def head(V: int = 503, H: int = 24, B: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(V, H, generator=g)  # (V, H)
    b = torch.randn(V, generator=g) * 2  # (V,) a large bias so that folding it in matters
    t = torch.randn(B, H, generator=g)  # (B, H)
    return E, b, t


def test_flat_ip_top_k_equals_torch_top_k_of_full_scores_without_special_ids():
    E, b, t = head()
    scores = t @ E.T + b  # (B, V): the head's full-catalogue scores
    scores[:, :NUM_SPECIAL] = -torch.inf
    top = torch.topk(scores, 20, dim=1)
    xb, ids = item_vectors(E, b, torch.arange(NUM_SPECIAL, E.shape[0]))
    D, found = search(build_index(xb, IndexConfig("Flat", "ip"), ids=ids), query_vectors(t), 20)
    np.testing.assert_array_equal(found, top.indices.numpy())
    np.testing.assert_allclose(D, top.values.numpy(), rtol=1e-5, atol=1e-4)


def test_bias_matters_and_exclusion_of_seen_items():
    E, b, t = head(seed=1)
    xb, ids = item_vectors(E, b, torch.arange(NUM_SPECIAL, E.shape[0]))
    index = build_index(xb, IndexConfig("Flat"), ids=ids)
    seen = [set(range(NUM_SPECIAL + q, NUM_SPECIAL + q + 40)) for q in range(13)]
    _, found = search(index, query_vectors(t), 10, exclude=seen)
    scores = t @ E.T + b  # (B, V)
    scores[:, :NUM_SPECIAL] = -torch.inf
    for q in range(13):
        scores[q, sorted(seen[q])] = -torch.inf
    np.testing.assert_array_equal(found, torch.topk(scores, 10, dim=1).indices.numpy())
    no_bias = torch.topk(t @ E.T, 10, dim=1).indices.numpy()
    assert (no_bias != found).any()  # without the bias column the ranking would differ


def test_no_bias_head_and_input_checks():
    E, _, t = head(V=50, H=6, B=3)
    xb, ids = item_vectors(E, None)
    assert xb.shape == (50, 7) and (xb[:, -1] == 0).all() and (ids == np.arange(50)).all()
    assert query_vectors(t).shape == (3, 7) and (query_vectors(t)[:, -1] == 1).all()
    with pytest.raises(ValueError, match="bias must have shape"):
        item_vectors(E, torch.zeros(49))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 50\)"):
        item_vectors(E, None, [3, 50])
    with pytest.raises(ValueError, match="transformed_hidden"):
        query_vectors(torch.zeros(3, 2, 6))
