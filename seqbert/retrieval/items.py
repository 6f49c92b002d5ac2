"""Item and query vectors that turn a full-catalogue scoring head into inner-product search.

An item-scoring head of the form  s_i = t(h) . e_i + b_i  (t(h) the transformed hidden state (B, H),
E the item embeddings (V, H), b the output bias (V,); BERT4Rec's tied MLM decoder is one) folds the bias
into one more dimension:

    q = [t(h), 1]  (B, H+1),   x_i = [e_i, b_i]  (V, H+1),   q . x_i = t(h) . e_i + b_i = s_i

so a Flat inner-product index over x returns exactly the model's own top-K (up to float32 rounding of
near-ties), and IVF / HNSW over x approximate it. Special ids (PAD, MASK, ...) are simply left out of
`ids`. Shape legend: V catalogue, H hidden, B queries, N indexed items.
"""

from __future__ import annotations

import numpy as np
import torch


def item_vectors(
    embedding_weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[e_i, b_i] for the items `ids` (default: all V rows) -> (vectors (N, H+1) float32, ids (N,) int64).

    Pass the returned ids to `build_index(..., ids=ids)` so search results come back as catalogue ids.
    A head without bias (`bias=None`) gets a zero last column, keeping the query layout the same.
    """
    if embedding_weight.ndim != 2:
        raise ValueError(f"embedding_weight must be (V, H), got shape {tuple(embedding_weight.shape)}")
    V = embedding_weight.shape[0]
    if bias is not None and bias.shape != (V,):
        raise ValueError(f"bias must have shape ({V},) to match embedding_weight, got {tuple(bias.shape)}")
    ids_t = torch.arange(V) if ids is None else torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids_t.numel() and (ids_t.min() < 0 or ids_t.max() >= V):
        raise ValueError(f"ids must lie in [0, {V}), got range [{int(ids_t.min())}, {int(ids_t.max())}]")
    E = embedding_weight.detach().float().cpu()[ids_t]  # (N, H)
    b = bias.detach().float().cpu()[ids_t] if bias is not None else torch.zeros(len(ids_t))  # (N,)
    x = torch.cat([E, b.unsqueeze(1)], dim=1)  # (N, H+1)
    return np.ascontiguousarray(x.numpy()), ids_t.numpy().astype(np.int64)


def query_vectors(transformed_hidden: torch.Tensor) -> np.ndarray:
    """[t(h), 1] (B, H+1) float32: pairs with `item_vectors` so that q . x_i equals the head's score."""
    if transformed_hidden.ndim != 2:
        raise ValueError(f"transformed_hidden must be (B, H), got shape {tuple(transformed_hidden.shape)}")
    t = transformed_hidden.detach().float().cpu()  # (B, H)
    q = torch.cat([t, torch.ones(len(t), 1)], dim=1)  # (B, H+1)
    return np.ascontiguousarray(q.numpy())
