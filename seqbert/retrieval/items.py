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

from seqbert.data.vocab import FIRST_ITEM_ID, NO_TARGET
from seqbert.retrieval.index import IndexConfig, build_index, search
from seqbert.tasks.bert4rec import candidate_scores, query_states, score_histories


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


# ---------------------------------------------------------------------------------- two-stage building blocks
# Stage functions for `seqbert.pipeline.run_two_stage` over a trained recommender (`SeqRecommender`):
# queries are item histories (internal ids), results are internal item ids; seen items are excluded.


def test_queries(dataset, max_users: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The test users of a prepared split as pipeline queries -> (histories, rel_ids (Q, 1)); with
    `max_users`, a seeded subset (seed 0) in user order."""
    users = np.flatnonzero(dataset.test_targets != NO_TARGET)
    if max_users and max_users < len(users):
        users = np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))
    inputs = dataset.test_inputs()
    return [inputs[u] for u in users], dataset.test_targets[users][:, None]


def model_retriever(model, depth: int, config=None):
    """Inner-product search over the model's folded item vectors [e_i, b_i] with queries [t(h), 1]: the
    model's own top-`depth` (exactly so with a Flat index; IVF / HNSW approximate it)."""
    items = np.arange(FIRST_ITEM_ID, model.config.vocab_size)
    xb, ids = item_vectors(model.head.decoder.weight, model.head.decoder.bias, items)  # (N, H+1)
    index = build_index(xb, config or IndexConfig(), ids=ids)

    @torch.no_grad()
    def retrieve(histories):
        xq = query_vectors(query_states(model, histories))  # (B, H+1)
        return search(index, xq, depth, exclude=histories)[1]  # (B, K)

    return retrieve


def recent_items_retriever(model, depth: int, recent_items: int = 20, decay: float = 0.8):
    """Item-to-item retrieval, no transformer: the query is the recency-weighted mean of the L2-normalised
    item embeddings of the last `recent_items` items (weight decay^age, newest 1), searched in a Flat
    inner-product index over the normalised embeddings of the catalogue."""
    if recent_items < 1 or not 0 < decay <= 1:
        raise ValueError(f"recent_items must be >= 1 and decay in (0, 1], got {recent_items}, {decay}")
    items = np.arange(FIRST_ITEM_ID, model.config.vocab_size)
    E = torch.nn.functional.normalize(model.bert.embeddings.word.weight.detach().float(), dim=-1).numpy()
    index = build_index(E[items], IndexConfig(factory="Flat"), ids=items)
    w = decay ** np.arange(recent_items)[::-1]  # (recent_items,) oldest .. newest

    def retrieve(histories):
        xq = np.stack(
            [(w[-len(h[-recent_items:]) :, None] * E[h[-recent_items:]]).sum(0) for h in histories]
        )  # fmt: skip  (B, H)
        return search(index, xq, depth, exclude=histories)[1]  # (B, K)

    return retrieve


def model_reranker(model):
    """The model scoring only the retrieved candidates (`candidate_scores`)."""

    @torch.no_grad()
    def rerank(histories, candidates):
        return candidate_scores(model, histories, candidates).cpu().numpy()  # (B, K)

    return rerank


def full_ranking(model, depth: int, with_scores: bool = False):
    """The reference: the model's exact top-`depth` over the whole catalogue, seen items excluded; with
    `with_scores`, (ids, scores) so a second stage can reuse the first stage's scores of its candidates."""

    @torch.no_grad()
    def ranked(histories):
        scores = score_histories(model, histories)  # (B, V), specials already -inf
        for row, h in enumerate(histories):
            scores[row, torch.from_numpy(np.asarray(h, dtype=np.int64))] = float("-inf")
        top = scores.topk(depth, dim=1)  # (B, D)
        return (top.indices.numpy(), top.values.numpy()) if with_scores else top.indices.cpu().numpy()

    return ranked
