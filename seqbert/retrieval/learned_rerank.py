"""A learned second stage for item recommendation: rerank a first stage's top-K with what it cannot see.

The first stage (any `SeqRecommender`, e.g. SASRec+) proposes K candidates per user. The reranker scores
each (user, candidate) pair from a feature vector built here:

  per scoring model m (the first stage and any others, e.g. BERT4Rec):
    z_m = (s_m - mean_K s_m) / std_K s_m      the model's score, standardised within the list
    log(1 + rank_m)                           its rank within the list
  catalogue statistics, counted on the sequences the first stages trained on:
    log(1 + n_c) / log(1 + max n)             popularity
    log(1 + n_c^recent) / log(1 + max)        popularity among every user's last `recent_pop` items
    log(1 + T[h_last, c])                     how often c directly followed the user's last item
    log(1 + sum_{j <= 5} T5[h_-j, c])         how often c came within 5 steps after the last 5 items
  the history:  log(1 + |h|)
  side features (`seqbert.data.features`), when given:
    per item categorical feature f:  share of the last `recent` history items sharing a value with c
    per item numeric feature x:      x_c  and  x_c - mean over the last `recent` history items of x
    embeddings of c's categorical values (mean over a multi-valued cell) and of the user's
    categorical values, and their elementwise product (a user-trait x item-trait interaction)

    score(u, c) = w . dense(u, c) + MLP([dense, e_item, e_user, e_item * e_user])

initialised so that the first epoch starts from the first stage's own order (w = 1 on z_first, 0 elsewhere;
the MLP's output layer is zero), and fitted listwise: softmax cross-entropy of the held-out item over its
candidate list (lists whose held-out item was not retrieved carry no signal and are left out of fitting).

LEAKAGE RULE. The lists the reranker is fitted on must come from first-stage models that never trained on
the items being predicted. With a leave-one-out split (`SequenceDataset`): every first-stage model is
trained on `train_sequences` only (as `seqbert train` does), the reranker is fitted on the validation
targets with the validation histories (= `train_sequences`), then applied unchanged to the test histories
(train + validation item). Statistics (popularity, co-occurrence) are counted on `train_sequences` too.
A first stage trained on the validation items would score them as memorised positives and teach the
reranker to over-trust it. `tests/retrieval/test_learned_rerank.py` checks the rule on planted data whose
held-out items are random: a rule-abiding pipeline scores chance there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqbert.data.features import PAD, EntityFeatures
from seqbert.data.vocab import FIRST_ITEM_ID


@dataclass(frozen=True)
class LearnedRerankConfig:
    hidden: int = 64  # MLP width
    embed_dim: int = 8  # per categorical feature
    recent: int = 50  # history items that form the user's side-feature profile
    recent_pop: int = 10  # the last items of each training sequence counted as "recent" popularity
    epochs: int = 40
    batch_lists: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    holdout: float = 0.15  # share of the fitting lists kept aside for early stopping (NDCG@10)
    patience: int = 6  # epochs without a better held-out NDCG@10
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.hidden, self.embed_dim, self.recent, self.recent_pop, self.epochs, self.batch_lists) < 1:
            raise ValueError("hidden, embed_dim, recent, recent_pop, epochs and batch_lists must be >= 1")
        if not 0 < self.holdout < 1 or self.lr <= 0 or self.weight_decay < 0 or self.patience < 1:
            raise ValueError("holdout must be in (0, 1), lr > 0, weight_decay >= 0, patience >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, eq=False)
class CandidateBatch:
    """Features of Q candidate lists of depth K (from `Featurizer.build`)."""

    dense: torch.Tensor  # (Q, K, D) float32
    item_cats: dict[str, torch.Tensor]  # name -> (Q, K, M) int64 (padding 0)
    user_cats: dict[str, torch.Tensor]  # name -> (Q, M) int64
    mask: torch.Tensor  # (Q, K) bool: a real candidate (not padding)

    def rows(self, idx: torch.Tensor) -> CandidateBatch:
        return CandidateBatch(
            self.dense[idx],
            {k: v[idx] for k, v in self.item_cats.items()},
            {k: v[idx] for k, v in self.user_cats.items()},
            self.mask[idx],
        )


class Featurizer:
    """Turns (history, user row, candidates, model scores) into a `CandidateBatch`; statistics are counted
    once, here, on `sequences` (the first stages' training sequences: see the leakage rule)."""

    def __init__(
        self,
        sequences: Sequence[np.ndarray],
        vocab_size: int,
        item_features: EntityFeatures | None = None,
        user_features: EntityFeatures | None = None,
        config: LearnedRerankConfig = LearnedRerankConfig(),
    ) -> None:
        self.V, self.cfg = vocab_size, config
        self.items, self.users = item_features, user_features
        if item_features is not None and item_features.num_rows != vocab_size:
            raise ValueError(f"item features have {item_features.num_rows} rows, the vocabulary {vocab_size}")
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
        pop = np.bincount(flat, minlength=vocab_size).astype(np.float64)  # (V,)
        recent = np.concatenate([np.asarray(s[-config.recent_pop :], dtype=np.int64) for s in sequences])
        rpop = np.bincount(recent, minlength=vocab_size).astype(np.float64)  # (V,)
        self.pop = np.log1p(pop) / np.log1p(pop.max())
        self.rpop = np.log1p(rpop) / np.log1p(max(rpop.max(), 1.0))
        self.next1 = self._pairs(sequences, (1,))  # (V, V) sparse: a -> b directly
        self.next5 = self._pairs(sequences, range(1, 6))  # (V, V) sparse: b within 5 steps after a
        # multi-hot of each item categorical feature, once: (V, C) per feature, padding column zeroed
        self.multi_hot = (
            {n: self._multi_hot(t) for n, t in item_features.categorical.items()} if item_features else {}
        )

    def _pairs(self, sequences: Sequence[np.ndarray], gaps) -> sp.csr_matrix:
        rows, cols = [], []
        for g in gaps:
            for s in sequences:
                if len(s) > g:
                    rows.append(s[:-g])
                    cols.append(s[g:])
        r, c = np.concatenate(rows), np.concatenate(cols)
        return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(self.V, self.V))

    @property
    def names(self) -> list[str]:
        """Names of the dense columns after the per-model ones (for reports)."""
        out = ["popularity", "recent_popularity", "next1", "next5", "history_length"]
        if self.items is not None:
            out += [f"share_{f}" for f in self.items.categorical]
            out += [n for f in self.items.numeric_names for n in (f, f"{f}_vs_history")]
        return out

    def build(
        self,
        histories: Sequence[np.ndarray],
        user_rows: np.ndarray,
        candidates: np.ndarray,
        model_scores: Sequence[np.ndarray],
    ) -> CandidateBatch:
        """histories (Q,) of (n_u,), user_rows (Q,) rows of the user features, candidates (Q, K) ids padded
        with -1, model_scores: one (Q, K) array per scoring model (the first stage first)."""
        cand = np.asarray(candidates, dtype=np.int64)  # (Q, K)
        Q, K = cand.shape
        mask = cand >= FIRST_ITEM_ID  # (Q, K)
        c = np.where(mask, cand, 0)  # (Q, K) padding -> row 0, masked out below
        cols = []
        for s in model_scores:
            s = np.where(mask, np.asarray(s, dtype=np.float64), np.nan)  # (Q, K)
            mu, sd = np.nanmean(s, 1, keepdims=True), np.nanstd(s, 1, keepdims=True)
            cols.append(np.nan_to_num((s - mu) / np.where(sd > 0, sd, 1.0)))  # z within the list
            cols.append(np.nan_to_num(s - np.nanmax(s, 1, keepdims=True)))  # <= 0: distance to the best
            rank = np.argsort(np.argsort(-np.nan_to_num(s, nan=-np.inf), axis=1), axis=1)  # (Q, K)
            cols.append(np.log1p(rank))
        last = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.int64)  # (Q,)
        cols += [self.pop[c], self.rpop[c], np.log1p(self._lookup(self.next1, last[:, None], c))]
        near = np.zeros((Q, K))
        for j in range(1, 6):
            prev = np.array([h[-j] if len(h) >= j else 0 for h in histories], dtype=np.int64)
            near += self._lookup(self.next5, prev[:, None], c)
        cols += [np.log1p(near), np.repeat(np.log1p([len(h) for h in histories])[:, None], K, 1)]
        item_cats, user_cats = {}, {}
        if self.items is not None:
            recent = [np.asarray(h[-self.cfg.recent :], dtype=np.int64) for h in histories]
            for name, table in self.items.categorical.items():
                cols.append(self._share(self.multi_hot[name], recent, c))
                item_cats[name] = torch.from_numpy(table[c])  # (Q, K, M)
            for j in range(self.items.numeric.shape[1]):
                x = self.items.numeric[:, j]  # (V,)
                mean_h = np.array([x[r].mean() if len(r) else 0.0 for r in recent])  # (Q,)
                cols += [x[c], x[c] - mean_h[:, None]]
        if self.users is not None:
            rows = np.asarray(user_rows, dtype=np.int64)
            user_cats = {n: torch.from_numpy(t[rows]) for n, t in self.users.categorical.items()}  # (Q, M)
        dense = np.stack(cols, axis=-1).astype(np.float32) * mask[..., None]  # (Q, K, D)
        return CandidateBatch(torch.from_numpy(dense), item_cats, user_cats, torch.from_numpy(mask))

    @staticmethod
    def _lookup(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r = np.broadcast_to(rows, cols.shape)
        return np.asarray(matrix[r.ravel(), cols.ravel()]).reshape(cols.shape)  # (Q, K)

    @staticmethod
    def _multi_hot(table: np.ndarray) -> np.ndarray:
        onehot = np.zeros((len(table), int(table.max()) + 1), dtype=np.float32)  # (V, C)
        np.put_along_axis(onehot, table, 1.0, axis=1)
        onehot[:, PAD] = 0.0
        return onehot

    @staticmethod
    def _share(onehot: np.ndarray, recent: list[np.ndarray], cand: np.ndarray) -> np.ndarray:
        """Share of each user's recent items that share at least one value (multi-hot `onehot`) with the
        candidate."""
        out = np.zeros(cand.shape)
        for q, r in enumerate(recent):
            if len(r):
                hit = (onehot[r] @ onehot[cand[q]].T) > 0  # (n, K)
                out[q] = hit.mean(0)
        return out


class ListwiseReranker(nn.Module):
    def __init__(
        self,
        num_dense: int,
        item_cardinalities: dict[str, int],
        user_cardinalities: dict[str, int],
        config: LearnedRerankConfig = LearnedRerankConfig(),
    ) -> None:
        super().__init__()
        e = config.embed_dim
        self.item_emb = nn.ModuleDict(
            {n: nn.Embedding(k, e, padding_idx=PAD) for n, k in item_cardinalities.items()}
        )
        self.user_emb = nn.ModuleDict(
            {n: nn.Embedding(k, e, padding_idx=PAD) for n, k in user_cardinalities.items()}
        )
        has_item, has_user = bool(item_cardinalities), bool(user_cardinalities)
        width = num_dense + e * (has_item + has_user + (has_item and has_user))  # dense, item, user, product
        self.norm = nn.LayerNorm(num_dense)
        self.linear = nn.Linear(num_dense, 1)
        self.mlp = nn.Sequential(
            nn.Linear(width, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )
        with torch.no_grad():  # start from the first stage's own order: score = z_first
            self.linear.weight.zero_()
            self.linear.weight[0, 0] = 1.0
            self.linear.bias.zero_()
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()

    @staticmethod
    def _pool(embs: nn.ModuleDict, cats: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not embs:
            return None
        out = 0
        for name, emb in embs.items():
            ids = cats[name]  # (..., M)
            n = (ids != PAD).sum(-1, keepdim=True).clamp(min=1)  # (..., 1)
            out = out + emb(ids).sum(-2) / n  # (..., E) mean over the cell's values
        return out

    def forward(self, batch: CandidateBatch) -> torch.Tensor:
        """-> scores (Q, K); padding candidates get -inf."""
        x = batch.dense  # (Q, K, D)
        parts = [self.norm(x)]
        item = self._pool(self.item_emb, batch.item_cats)  # (Q, K, E)
        user = self._pool(self.user_emb, batch.user_cats)  # (Q, E)
        if user is not None:
            user = user[:, None, :].expand(x.shape[0], x.shape[1], -1)  # (Q, K, E)
        parts += [t for t in (item, user) if t is not None]
        if item is not None and user is not None:
            parts.append(item * user)
        h = torch.cat(parts, dim=-1)  # (Q, K, W)
        score = self.linear(x).squeeze(-1) + self.mlp(h).squeeze(-1)  # (Q, K)
        return score.masked_fill(~batch.mask, float("-inf"))


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the held-out item over its list: -mean_q log softmax(scores_q)[label_q],
    scores (Q, K) with -inf padding, labels (Q,) positions in the list."""
    return F.cross_entropy(scores, labels)


def ndcg_at_10(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean NDCG@10 of one held-out item per list (-1: not in the list, counts 0): 1 / log2(rank + 2)."""
    has = labels >= 0
    pos = scores.gather(1, labels.clamp(min=0)[:, None])  # (Q, 1)
    rank = (scores > pos).sum(1)  # (Q,) 0-based; ties resolved in the item's favour
    gain = torch.where(has & (rank < 10), 1.0 / torch.log2(rank.float() + 2.0), torch.zeros(()))
    return float(gain.mean())


def fit_reranker(
    batch: CandidateBatch, labels: np.ndarray, featurizer: Featurizer, config: LearnedRerankConfig
) -> tuple[ListwiseReranker, dict]:
    """Fit on lists with labels (Q,) = the held-out item's position in its list, -1 when not retrieved.
    A seeded `holdout` share of the lists picks the epoch (early stopping on NDCG@10); -> (model, log)."""
    torch.manual_seed(config.seed)
    labels_t = torch.as_tensor(labels, dtype=torch.long)  # (Q,)
    Q = len(labels_t)
    perm = torch.from_numpy(np.random.default_rng(config.seed).permutation(Q))
    n_hold = max(1, int(round(config.holdout * Q)))
    hold, fit = perm[:n_hold], perm[n_hold:]
    fit = fit[labels_t[fit] >= 0]  # a list without the held-out item carries no listwise signal
    if len(fit) == 0:
        raise ValueError("no fitting list contains its held-out item: the candidate depth is too small")
    items = featurizer.items.categorical if featurizer.items else {}
    users = featurizer.users.categorical if featurizer.users else {}
    model = ListwiseReranker(
        batch.dense.shape[-1],
        {n: int(featurizer.items.cardinality(n)) for n in items},
        {n: int(featurizer.users.cardinality(n)) for n in users},
        config,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    held = batch.rows(hold)
    model.eval()
    with torch.no_grad():
        start = ndcg_at_10(model(held), labels_t[hold])
    best, best_state, best_epoch, log = start, copy.deepcopy(model.state_dict()), 0, []
    gen = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = fit[torch.randperm(len(fit), generator=gen)]
        total = 0.0
        for i in range(0, len(order), config.batch_lists):
            idx = order[i : i + config.batch_lists]
            loss = listwise_loss(model(batch.rows(idx)), labels_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.no_grad():
            score = ndcg_at_10(model(held), labels_t[hold])
        log.append({"epoch": epoch, "loss": total / len(order), "holdout_ndcg@10": score})
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    info = {
        "lists": Q,
        "fit_lists": len(fit),
        "holdout_lists": n_hold,
        "holdout_ndcg@10_first_stage": start,
        "holdout_ndcg@10": best,
        "best_epoch": best_epoch,
        "epochs": log,
    }
    return model, info


@torch.no_grad()
def rerank_scores(model: ListwiseReranker, batch: CandidateBatch, chunk: int = 512) -> np.ndarray:
    """(Q, K) scores of the fitted reranker (padding -inf), in chunks of lists."""
    out = [
        model(batch.rows(torch.arange(i, min(i + chunk, len(batch.mask)))))
        for i in range(0, len(batch.mask), chunk)
    ]
    return torch.cat(out).numpy()
